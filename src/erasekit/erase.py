"""erase(): train a method on a pipeline and return the erasure (changed parameters + metadata)."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .errors import ErasekitError
from .images import ensure_writable_dir
from .methods.base import get_method
from .model import hash_rounding, load_pipeline, unet_fingerprint, unet_norms
from .params import load_erasure, save_erasure, select_parameters
from .precision import DTYPES, cast_parameters, dtype_name, hold_in_float32, resolve_device, resolve_dtype
from .train import train

__all__ = ["Erasure", "erase", "load_erasure", "check_concepts"]


@dataclass
class Erasure:
    """The result of an erasure: which parameters changed, their new values, and how they were made."""

    metadata: dict
    names: list[str]
    tensors: dict[str, torch.Tensor]  # the changed parameters as trained: float32 masters, on the CPU
    unet: torch.nn.Module  # the erased UNet (the pipeline's own, changed in place, in its own dtype)
    history: list[dict[str, float]]

    def save(self, path: Path | str, dtype: str | torch.dtype | None = None) -> Path:
        """Write the changed parameters and the metadata to a safetensors file, atomically.

        dtype: what the tensors are stored in; default the base model's ("fp32" keeps the masters exact).
        """
        if dtype is None:
            dtype = self.metadata["base_dtype"]
        dtype = DTYPES[dtype] if isinstance(dtype, str) and dtype in DTYPES else dtype
        if dtype not in DTYPES.values():
            raise ErasekitError(f"an erasure is saved in fp32, fp16 or bf16, not {dtype}")
        save_erasure(path, self.tensors, self.metadata | {"saved_dtype": dtype_name(dtype)}, dtype)
        return Path(path)


def check_concepts(tokenizer, concepts: list[str]) -> list[str]:
    """Strip concepts and refuse empty ones or ones that the tokenizer turns into no token."""
    cleaned = [c.strip() for c in concepts]
    if not cleaned or any(not c for c in cleaned):
        raise ErasekitError("empty concept: name the concept to erase, e.g. --concept circle")
    for c in cleaned:
        if not tokenizer(c, add_special_tokens=False).input_ids:
            raise ErasekitError(f"concept '{c}' tokenises to nothing: the model cannot be conditioned on it")
    return cleaned


@contextmanager
def _training_memory(pipe, gradient_checkpointing: bool):
    """While the UNet trains: on an accelerator the text encoder and VAE wait on the host (every
    method embeds its prompts before training), and the student may recompute its activations."""
    offload = pipe.unet.device.type != "cpu"
    if offload:
        pipe.text_encoder.to("cpu")
        pipe.vae.to("cpu")
    if gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if gradient_checkpointing:
            pipe.unet.disable_gradient_checkpointing()
        if offload:
            pipe.text_encoder.to(pipe.unet.device)
            pipe.vae.to(pipe.unet.device)


def erase(
    model="builtin",
    method: str = "abo",
    concepts: list[str] | str = "circle",
    replacement: str | None = None,
    preset: str | None = None,
    seed: int = 0,
    out: Path | str | None = None,
    checkpoint_dir: Path | str | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    **settings,
) -> Erasure:
    """Erase `concepts` from `model` (a source for load_pipeline, or a loaded pipeline, changed in place).

    settings: any field of the method's config (steps, lr, gamma1, lam, ...); None keeps the default.
    device, dtype: where and in what precision to load `model` ("auto" by default: see
    load_pipeline); a loaded pipeline is used as it is. The trained parameters are float32 masters
    whatever the dtype (precision.py); the erasure file stores them in the base model's dtype.
    gradient_checkpointing: recompute the student's activations in the backward pass (less
    memory on a real model, about a third more time; the same weights up to float rounding).
    With `out`, the erasure is also written there. With `checkpoint_dir`, training checkpoints every
    `checkpoint_every` steps, and `resume=True` continues from the last one.
    """
    method_cls = get_method(method)
    config = method_cls.make_config(preset, **settings)
    if isinstance(model, (str, Path)):
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
    elif device is not None or dtype is not None:
        raise ErasekitError("device and dtype choose how a model is loaded: pass them to load_pipeline, not with a loaded pipeline")
    if out is not None:
        ensure_writable_dir(Path(out).parent)
    pipe = load_pipeline(model, device, dtype) if isinstance(model, (str, Path)) else model
    concepts = check_concepts(pipe.tokenizer, [concepts] if isinstance(concepts, str) else list(concepts))
    if replacement is not None:
        replacement = check_concepts(pipe.tokenizer, [replacement])[0]
    names = select_parameters(pipe.unet, config.parameters)
    base_dtype, rounding = pipe.unet.dtype, hash_rounding(pipe.unet)
    base_hash, base_norms = unet_fingerprint(pipe.unet, rounding), unet_norms(pipe.unet)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    instance = method_cls(pipe, concepts, config, replacement)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    masters = hold_in_float32(pipe.unet, names)
    try:
        if instance.closed_form:
            history = instance.edit(names, progress)
        else:
            with _training_memory(pipe, gradient_checkpointing):
                history = train(instance, names, generator, ckpt, checkpoint_every, resume, progress,
                                identity={"seed": seed, "base_unet_sha256": base_hash})
        tensors = {name: p.detach().to("cpu", copy=True) for name, p in masters.items()}
    finally:
        cast_parameters(pipe.unet, names, base_dtype)

    metadata = {
        "method": method,
        "concepts": concepts,
        "replacement": replacement,
        "preset": preset,
        "seed": seed,
        "hyperparameters": dataclasses.asdict(config),
        # bank_trajectories may be null (a rule of steps x batch), and image banks have their own count
        "teacher_bank_trajectories": instance.bank.trajectories if instance.bank is not None else None,
        "base_model": str(model if isinstance(model, (str, Path)) else getattr(pipe, "name_or_path", "pipeline")),
        "base_unet_sha256": base_hash,
        "base_unet_hash_rounding": rounding,
        "base_unet_norms": base_norms,
        "base_dtype": dtype_name(base_dtype),
        "device": str(instance.device),
        "erasekit_version": __version__,
        "final_loss": history[-1] if history else None,
    }
    erasure = Erasure(metadata=metadata, names=names, tensors=tensors, unet=pipe.unet, history=history)
    if out is not None:
        erasure.save(out)
    return erasure
