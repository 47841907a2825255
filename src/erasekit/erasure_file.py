"""The erasure file: the changed parameters plus erasekit's metadata, in safetensors.

The file is keyed by the denoiser's own parameter names, so plain diffusers applies it:
`pipe.unet.load_state_dict(safetensors.torch.load_file(path), strict=False)`. An erasure that
trained the text encoders also holds theirs under the component's name ("text_encoder.encoder.
layers.0.mlp.fc1.weight"), which `pipe.text_encoder.load_state_dict` takes with the prefix removed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import ErasekitError
from .io import atomic_path
from .model import same_base, unet_fingerprint
from .precision import dtype_name
from .presets import pipeline_parameters
from .families import denoiser_of


def save_erasure(path: Path | str, tensors: dict[str, torch.Tensor], metadata: dict, dtype: torch.dtype) -> None:
    """Write `tensors` (the changed parameters) in `dtype` and `metadata` (JSON-able values) to a safetensors file, atomically."""
    tensors = {name: t.detach().to("cpu", dtype).contiguous() for name, t in tensors.items()}
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ErasekitError(f"{name} holds values too large for {dtype_name(dtype)}: save the erasure in fp32 (--save-dtype fp32)")
    header = {f"erasekit.{k}": json.dumps(v) for k, v in metadata.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def read_metadata(path: Path | str) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:
        raise ErasekitError(f"{path} is not a readable safetensors erasure file ({type(e).__name__})") from None
    try:
        return {k.removeprefix("erasekit."): json.loads(v) for k, v in raw.items() if k.startswith("erasekit.")}
    except json.JSONDecodeError:
        raise ErasekitError(f"{path}: its erasekit metadata is not valid JSON") from None


STORED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
METADATA_TYPES = {  # what load_erasure reads, and the JSON type each must have
    "base_unet_sha256": (str,),
    "base_unet_hash_rounding": (str,),
    "base_unet_norms": (list, type(None)),
    "base_text_encoders": (dict, type(None)),  # component -> [hash, norms], where the erasure changes the text encoders
}


def check_metadata(metadata: dict, name: str) -> None:
    """Refuse, in one line, metadata that load_erasure cannot read: a missing base-model hash, fields of the wrong type."""
    if "base_unet_sha256" not in metadata:
        raise ErasekitError(f"{name} has no erasekit metadata (base model hash); was it written by erasekit?")
    for key, types in METADATA_TYPES.items():
        if key in metadata and not isinstance(metadata[key], types):
            raise ErasekitError(f"{name}: its metadata field {key} is {type(metadata[key]).__name__}, not {' or '.join(t.__name__ for t in types if t is not type(None))}: the file is damaged")
    rounding = metadata.get("base_unet_hash_rounding", "fp16")
    if rounding not in ("fp16", "bf16"):
        raise ErasekitError(f"{name}: its metadata field base_unet_hash_rounding is '{rounding}', not fp16 or bf16: the file is damaged")
    for component, entry in (metadata.get("base_text_encoders") or {}).items():
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], list)):
            raise ErasekitError(f"{name}: its metadata field base_text_encoders holds no [hash, norms] for {component}: the file is damaged")
    norms = metadata.get("base_unet_norms")
    if norms is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in norms):
        raise ErasekitError(f"{name}: its metadata field base_unet_norms holds non-numbers: the file is damaged")


def check_erasure(params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], name: str) -> None:
    """Refuse, in one line, tensors that do not fit the model's `params` (presets.pipeline_parameters):
    unknown keys, other shapes, a type that is not fp32, fp16, bf16 (or fp64), and values that are
    not finite once cast to the parameter's dtype, which is what the model will compute with (1e6 is
    finite in float32 and infinite in float16)."""
    if not state:
        raise ErasekitError(f"{name} holds no tensors")
    unknown = sorted(set(state) - set(params))
    if unknown:
        lacking = "model's text encoders lack" if unknown[0].startswith("text_encoder") else "UNet lacks"
        raise ErasekitError(f"{name} holds {len(unknown)} parameter(s) this {lacking}, e.g. {unknown[0]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(params[key].shape):
            raise ErasekitError(f"{name}: {key} has shape {tuple(tensor.shape)}, this model's has {tuple(params[key].shape)}")
        if tensor.dtype not in STORED_DTYPES:
            raise ErasekitError(f"{name}: {key} is {str(tensor.dtype).removeprefix('torch.')}, not a tensor of fp32, fp16 or bf16")
        dtype = params[key].dtype
        if torch.isfinite(tensor.to(dtype)).all():
            continue
        if not torch.isfinite(tensor).all():
            raise ErasekitError(f"{name}: {key} holds NaN or infinite values")
        largest = tensor.abs().max().item()
        raise ErasekitError(f"{name}: {key} holds values too large for {dtype_name(dtype)} (up to {largest:.3g}; "
                            f"{dtype_name(dtype)} holds at most {torch.finfo(dtype).max:.3g}): load it with --dtype fp32")


def load_erasure(pipe, path: Path | str) -> dict:
    """Apply an erasure file to `pipe` in place (its denoiser, and its text encoders where the erasure
    trained them), cast to the model's dtype (an erasure made in one precision loads into a pipeline of any).

    Every check comes before the UNet is touched, so a refused file changes nothing: the metadata
    (erasekit's, with the base model's hash), the tensors (check_erasure), and the base model.
    Returns the erasure's metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ErasekitError(f"erasure file not found: {path}")
    metadata = read_metadata(path)
    check_metadata(metadata, path.name)
    expected = metadata["base_unet_sha256"]
    denoiser = denoiser_of(pipe)
    state = load_file(str(path), device=str(denoiser.device))
    params = pipeline_parameters(pipe)
    check_erasure(params, state, path.name)
    rounding = metadata.get("base_unet_hash_rounding", "fp16")  # files from before bf16 support hashed in fp16
    if not same_base(denoiser, expected, rounding, metadata.get("base_unet_norms")):
        raise ErasekitError(
            f"{path.name} was made for base model '{metadata.get('base_model')}' (UNet {expected}), "
            f"not for this one (UNet {unet_fingerprint(denoiser)}): load the model it was made for"
        )
    for component, (fingerprint, norms) in (metadata.get("base_text_encoders") or {}).items():
        encoder = getattr(pipe, component, None)
        if encoder is None or not same_base(encoder, fingerprint, rounding, norms):
            raise ErasekitError(f"{path.name} changes the text encoders of base model '{metadata.get('base_model')}', and this model's "
                                f"{component} is not the one it was made from: load the model it was made for")
    with torch.no_grad():
        for key, tensor in state.items():
            params[key].copy_(tensor.to(params[key].device, params[key].dtype))
    return metadata
