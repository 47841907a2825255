"""Load a Stable Diffusion pipeline from anywhere a user keeps one, with errors that say what to do.

One code path serves the built-in shapes world and Stable Diffusion 1.x/2.x: a diffusers folder,
a single-file `.safetensors` checkpoint, or a hub id (local cache first). Weights load from
safetensors only; pickled checkpoints are refused, never opened.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .assets import builtin_pipeline_dir
from .errors import ErasekitError

PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SUPPORTED_PIPELINES = {"StableDiffusionPipeline"}


class ModelLoadError(ErasekitError):
    """The model could not be found or opened; the message names what is missing."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def load_pipeline(source: str | os.PathLike = "builtin", device=None, dtype=None, config: str | None = None):
    """Load a `StableDiffusionPipeline` on `device` (default: CUDA if present) in `dtype`.

    source: "builtin" (the shapes world shipped with erasekit), a local diffusers folder, a
    single-file `.safetensors` checkpoint (`config`: a local diffusers folder giving its
    configuration, needed offline), or a hub id such as "CompVis/stable-diffusion-v1-4".
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    name = str(source)
    path = builtin_pipeline_dir() if name == "builtin" else Path(name).expanduser()

    if path.is_dir():
        pipe = _load_folder(path, dtype)
    elif path.is_file():
        pipe = _load_single_file(path, dtype, config)
    elif HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        pipe = _load_hub(name, dtype)
    else:
        raise ModelLoadError(f"model not found: '{name}' is neither 'builtin', an existing folder or file, nor a hub id (owner/name)")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _check_folder(path: Path) -> dict:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{path} is not a diffusers pipeline folder: model_index.json is missing")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{index_file} is not valid JSON ({e})") from None
    if index.get("_class_name") not in SUPPORTED_PIPELINES:
        raise ModelLoadError(f"{path} holds a {index.get('_class_name')}; erasekit supports {', '.join(sorted(SUPPORTED_PIPELINES))} (SD 1.x/2.x)")
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        sub = path / component
        if not isinstance(index.get(component), list) or index[component][0] is None:
            raise ModelLoadError(f"{path}: model_index.json lists no '{component}' component")
        if not sub.is_dir():
            raise ModelLoadError(f"{path}: component folder '{component}/' is missing")
        if component in ("unet", "vae", "text_encoder"):
            if not any(sub.glob("*.safetensors")):
                pickles = [p.name for p in sub.iterdir() if p.suffix in PICKLE_SUFFIXES]
                detail = f" (found only pickled weights {pickles}: erasekit loads safetensors only; convert them first)" if pickles else ""
                raise ModelLoadError(f"{path}: no .safetensors weights in '{component}/'{detail}")
    return index


def _load_folder(path: Path, dtype):
    from diffusers import StableDiffusionPipeline

    _check_folder(path)
    try:
        return StableDiffusionPipeline.from_pretrained(
            path, dtype=dtype, use_safetensors=True, local_files_only=True,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"could not load the pipeline in {path}: {_first_line(e)}") from None


def _load_single_file(path: Path, dtype, config: str | None):
    from diffusers import StableDiffusionPipeline

    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path.name} is a pickle checkpoint: erasekit never unpickles weights (it can run code). "
            "Convert it to .safetensors on a trusted machine, or pass a diffusers folder"
        )
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"{path} is not a model: pass a diffusers folder, a .safetensors checkpoint or a hub id")
    try:
        return StableDiffusionPipeline.from_single_file(
            str(path), dtype=dtype, config=config, local_files_only=True,
            safety_checker=None, requires_safety_checker=False,
        )
    except Exception as e:  # diffusers raises many types here; all mean "cannot open this file"
        hint = "" if config else " (offline, a single-file checkpoint needs --config: a local diffusers folder of the same architecture)"
        raise ModelLoadError(f"could not load single-file checkpoint {path.name}: {_first_line(e)}{hint}") from None


def _load_hub(repo_id: str, dtype):
    from diffusers import StableDiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    kwargs = dict(dtype=dtype, use_safetensors=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        return StableDiffusionPipeline.from_pretrained(repo_id, local_files_only=True, **kwargs)
    except Exception:
        if offline:
            raise ModelLoadError(
                f"hub model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"download it where the hub is reachable (`hf download {repo_id}`) or pass a local folder"
            ) from None
    try:
        return StableDiffusionPipeline.from_pretrained(repo_id, **kwargs)
    except Exception as e:
        raise ModelLoadError(
            f"hub model '{repo_id}' is not in the local Hugging Face cache and could not be downloaded ({type(e).__name__}): "
            f"download it where the hub is reachable (`hf download {repo_id}`) or pass a local folder"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def unet_fingerprint(unet) -> str:
    """A short SHA-256 of the UNet's weights, so an erasure can refuse a base model it was not made for.

    Weights are hashed as fp16, so the same checkpoint loaded in fp16 or fp32 has one fingerprint.
    """
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]
