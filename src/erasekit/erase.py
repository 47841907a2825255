"""erase(): train a method on a pipeline and return the erasure (changed parameters + metadata)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .errors import ErasekitError
from .images import ensure_writable_dir
from .methods.base import get_method
from .model import load_pipeline, unet_fingerprint
from .params import load_erasure, save_erasure, select_parameters
from .train import train

__all__ = ["Erasure", "erase", "load_erasure", "check_concepts"]


@dataclass
class Erasure:
    """The result of an erasure: which parameters changed, their new values, and how they were made."""

    metadata: dict
    names: list[str]
    unet: torch.nn.Module  # the erased UNet (the pipeline's own, changed in place)
    history: list[dict[str, float]]

    def save(self, path: Path | str) -> Path:
        """Write the changed parameters and the metadata to a safetensors file, atomically."""
        save_erasure(path, self.unet, self.names, self.metadata)
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
    **settings,
) -> Erasure:
    """Erase `concepts` from `model` (a source for load_pipeline, or a loaded pipeline, changed in place).

    settings: any field of the method's config (steps, lr, gamma1, lam, ...); None keeps the default.
    With `out`, the erasure is also written there. With `checkpoint_dir`, training checkpoints every
    `checkpoint_every` steps, and `resume=True` continues from the last one.
    """
    method_cls = get_method(method)
    config = method_cls.make_config(preset, **settings)
    if out is not None:
        ensure_writable_dir(Path(out).parent)
    pipe = load_pipeline(model) if isinstance(model, (str, Path)) else model
    concepts = check_concepts(pipe.tokenizer, [concepts] if isinstance(concepts, str) else list(concepts))
    if replacement is not None:
        replacement = check_concepts(pipe.tokenizer, [replacement])[0]
    names = select_parameters(pipe.unet, config.parameters)
    base_hash = unet_fingerprint(pipe.unet)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    instance = method_cls(pipe, concepts, config, replacement)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if instance.closed_form:
        history = instance.edit(names, progress)
    else:
        history = train(instance, names, generator, ckpt, checkpoint_every, resume, progress)

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
        "erasekit_version": __version__,
        "final_loss": history[-1] if history else None,
    }
    erasure = Erasure(metadata=metadata, names=names, unet=pipe.unet, history=history)
    if out is not None:
        erasure.save(out)
    return erasure
