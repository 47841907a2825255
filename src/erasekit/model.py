"""Load a text-to-image diffusion pipeline from anywhere a user keeps one, with errors that say what to do.

One code path serves the built-in shapes world, Stable Diffusion 1.x/2.x, SDXL, SD3 and FLUX (families/): a
diffusers folder, a single-file `.safetensors` checkpoint, or a hub id (local cache first). Weights
load from safetensors only; pickled checkpoints are refused, never opened.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .assets import builtin_pipeline_dir
from .errors import ErasekitError
from .families import Family, family_named, family_of_checkpoint, supported
from .precision import resolve_device, resolve_dtype

PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(ErasekitError):
    """The model could not be found or opened; the message names what is missing."""


def load_pipeline(source: str | os.PathLike = "builtin", device=None, dtype=None, config: str | None = None):
    """Load a diffusers pipeline of a supported family (SD 1.x/2.x, SDXL, SD3, FLUX) on `device` in `dtype`.

    source: "builtin" (the shapes world shipped with erasekit), a local diffusers folder, a
    single-file `.safetensors` checkpoint (`config`: a local diffusers folder giving its
    configuration and family, needed offline), or a hub id such as "CompVis/stable-diffusion-v1-4".
    device: "auto" (default: CUDA if present), "cpu", "cuda", "cuda:N" or a torch.device.
    dtype: "auto" (default: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on the CPU),
    "fp32", "fp16", "bf16" or a torch.dtype. Bad values are refused before anything loads.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    name = str(source)
    path = source_path(source)

    if path.is_dir():
        pipe = _load_folder(path, dtype)
    elif path.is_file():
        pipe = _load_single_file(path, dtype, config)
    elif HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        pipe = _load_hub(name, dtype)
    else:
        raise ModelLoadError(f"model not found: '{name}' is neither 'builtin', an existing folder or file, nor a hub id (owner/name)")
    pipe.set_progress_bar_config(disable=True)
    # diffusers warns that float16 "cannot run" on the CPU: it runs (slowly), and the tests run it.
    return pipe.to(device, silence_dtype_warnings=True)


def source_path(source: str | os.PathLike) -> Path:
    """Where a model source would be on disk: the built-in model's folder for "builtin", else the path as given."""
    return builtin_pipeline_dir() if str(source) == "builtin" else Path(source).expanduser()


def _absent(family: type[Family], index: dict) -> dict:
    """None for each optional component the folder's model_index.json leaves out (SD3 without T5), as from_pretrained wants it said."""
    return {c: None for c in family.optional if not isinstance(index.get(c), list) or index[c][0] is None}


def _check_folder(path: Path) -> tuple[type[Family], dict]:
    """The folder's family and its model_index.json, once every component it needs is there (one line otherwise)."""
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{path} is not a diffusers pipeline folder: model_index.json is missing")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{index_file} is not valid JSON ({e})") from None
    family = family_named(index.get("_class_name"))
    if family is None:
        raise ModelLoadError(f"{path} holds a {index.get('_class_name')}; erasekit supports {supported()}")
    for component in family.components:
        sub = path / component
        if not isinstance(index.get(component), list) or index[component][0] is None:
            raise ModelLoadError(f"{path}: model_index.json lists no '{component}' component")
        if not sub.is_dir():
            raise ModelLoadError(f"{path}: component folder '{component}/' is missing")
        if component in family.weighted:
            if not any(sub.glob("*.safetensors")):
                pickles = [p.name for p in sub.iterdir() if p.suffix in PICKLE_SUFFIXES]
                detail = f" (found only pickled weights {pickles}: erasekit loads safetensors only; convert them first)" if pickles else ""
                raise ModelLoadError(f"{path}: no .safetensors weights in '{component}/'{detail}")
    return family, index


def _load_folder(path: Path, dtype):
    family, index = _check_folder(path)
    try:
        return family.pipeline_type().from_pretrained(path, dtype=dtype, use_safetensors=True, local_files_only=True,
                                                      **family.pipeline_kwargs(), **_absent(family, index))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"could not load the pipeline in {path}: {_first_line(e)}") from None


def _single_file_family(path: Path, config: str | None) -> tuple[type[Family], dict]:
    """A single file's family: its --config folder's (with its model_index.json), else the one its key names show (and {})."""
    if config and Path(config).is_dir():
        return _check_folder(Path(config))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return family_of_checkpoint(list(f.keys())), {}


def _load_single_file(path: Path, dtype, config: str | None):
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path.name} is a pickle checkpoint: erasekit never unpickles weights (it can run code). "
            "Convert it to .safetensors on a trusted machine, or pass a diffusers folder"
        )
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"{path} is not a model: pass a diffusers folder, a .safetensors checkpoint or a hub id")
    try:
        family, index = _single_file_family(path, config)
        return family.from_single_file(str(path), config, dtype=dtype, **(_absent(family, index) if index else {}))
    except ModelLoadError:
        raise
    except Exception as e:  # diffusers raises many types here; all mean "cannot open this file"
        hint = "" if config else " (offline, a single-file checkpoint needs --config: a local diffusers folder of the same architecture)"
        raise ModelLoadError(f"could not load single-file checkpoint {path.name}: {_first_line(e)}{hint}") from None


def _load_hub(repo_id: str, dtype):

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return _from_hub(repo_id, dtype, local_files_only=True)
    except ModelLoadError:
        raise
    except Exception:
        if offline:
            raise ModelLoadError(
                f"hub model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"download it where the hub is reachable (`hf download {repo_id}`) or pass a local folder"
            ) from None
    try:
        return _from_hub(repo_id, dtype, local_files_only=False)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"hub model '{repo_id}' is not in the local Hugging Face cache and could not be downloaded ({type(e).__name__}): "
            f"download it where the hub is reachable (`hf download {repo_id}`) or pass a local folder"
        ) from None


def _from_hub(repo_id: str, dtype, local_files_only: bool):
    """The hub model's family from its model_index.json, then the pipeline."""
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(repo_id, local_files_only=local_files_only)
    family = family_named(index.get("_class_name"))
    if family is None:
        raise ModelLoadError(f"hub model '{repo_id}' is a {index.get('_class_name')}; erasekit supports {supported()}")
    return family.pipeline_type().from_pretrained(repo_id, dtype=dtype, use_safetensors=True, local_files_only=local_files_only,
                                                  **family.pipeline_kwargs(), **_absent(family, index))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def hash_rounding(unet) -> str:
    """The precision a fingerprint of this UNet is hashed in: "bf16" for a bfloat16 UNet, else "fp16".

    float32 and float16 weights of one checkpoint agree once rounded to float16, and float32 and
    bfloat16 ones once rounded to bfloat16; float16 and bfloat16 weights agree in neither.
    """
    return "bf16" if any(p.dtype == torch.bfloat16 for p in unet.parameters()) else "fp16"


def unet_fingerprint(unet, rounding: str | None = None) -> str:
    """A short SHA-256 of the UNet's weights rounded to `rounding` (default: `hash_rounding`), so an
    erasure can refuse a base model it was not made for."""
    import hashlib

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[rounding or hash_rounding(unet)]
    h = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", dtype).view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def unet_norms(unet) -> list[float]:
    """Each UNet tensor's norm (sorted by name), 6 significant digits: a signature that survives any
    rounding to half precision, for the float16 <-> bfloat16 pairs that no hash matches."""
    return [float(f"{tensor.detach().double().norm().item():.6g}") for _, tensor in sorted(unet.state_dict().items())]


def same_base(unet, fingerprint: str, rounding: str, norms: list[float] | None) -> bool:
    """Whether `unet` is the base model an erasure's metadata describes.

    Exact (the hash) wherever this UNet can be rounded as the hash was: float32 to either, float16
    to "fp16", bfloat16 to "bf16". Otherwise every tensor's norm must agree to 2^-6 (relative):
    rounding to half precision moves a norm by under 2^-9, a different model by far more.
    """
    if hash_rounding(unet) == rounding or all(p.dtype == torch.float32 for p in unet.parameters()):
        return unet_fingerprint(unet, rounding) == fingerprint
    if norms is None:
        return False
    mine = unet_norms(unet)
    return len(mine) == len(norms) and all(abs(a - b) <= 2**-6 * max(abs(b), 1e-12) for a, b in zip(mine, norms))


def _config_folder(source: str | os.PathLike, config: str | None) -> Path | None:
    """The local diffusers folder that describes `source` without loading it: the built-in model's,
    a folder given as the model, or a single file's --config; None for a hub id."""
    path = source_path(source)
    if path.is_dir():
        return path
    return Path(config) if config and Path(config).is_dir() else None


def peek_tokenizer(source: str | os.PathLike, config: str | None = None):
    """The model's (first) tokenizer alone, so prompts and concepts are checked before its weights
    load; None where it cannot be read without loading (a hub id not cached, a damaged folder)."""
    from transformers import CLIPTokenizer

    folder = _config_folder(source, config)
    if folder is None and not HUB_ID.match(str(source)):
        return None
    try:
        return CLIPTokenizer.from_pretrained(folder or str(source), subfolder="tokenizer", local_files_only=True)
    except Exception:  # any failure here is reported, better worded, when the pipeline itself loads
        return None


def peek_family(source: str | os.PathLike, config: str | None = None) -> type[Family] | None:
    """The model's family from its model_index.json alone; None where that cannot be read without loading."""
    folder = _config_folder(source, config)
    try:
        return family_named(json.loads((folder / "model_index.json").read_text()).get("_class_name")) if folder else None
    except (OSError, ValueError):
        return None


def peek_sizes(source: str | os.PathLike, config: str | None = None) -> dict:
    """What the configuration files say without loading weights: `image_size` (pixels per side) and
    `train_timesteps` (the scheduler's length, the most sampling steps it takes); {} where unknown."""
    folder, family = _config_folder(source, config), peek_family(source, config)
    if folder is None or family is None:
        return {}
    try:
        denoiser = json.loads((folder / family.denoiser / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        return {"image_size": int(family.latent_shape(denoiser, vae)[1]) * factor, "train_timesteps": int(scheduler.get("num_train_timesteps", 1000))}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def sizes_of(pipe) -> dict:
    """peek_sizes of a loaded pipeline."""
    from .sampling import latent_shape

    return {"image_size": latent_shape(pipe)[1] * pipe.vae_scale_factor, "train_timesteps": pipe.scheduler.config.num_train_timesteps}
