"""An erasure as a LoRA, in the formats the ecosystem loads (diffusers/PEFT, and kohya for A1111 and ComfyUI).

Each changed weight's delta ΔW = W_erased - W_base is factored by a truncated SVD into up @ down of
rank r (the best rank-r approximation in the Frobenius norm, Eckart-Young), split as
up = U_r sqrt(S_r), down = sqrt(S_r) V_r^T. We factor the delta after training rather than train
adapters with PEFT, so that every method (UCE's closed form too) exports the same way, the rank is
chosen after the fact, and what it costs is measured against the full delta
(benchmarks/results/lora-rank/results.md). A LoRA changes weight matrices only: a changed bias or
norm scale is left out and listed in `Lora.dropped`. (PEFT can carry biases, as `lora_B.bias`, but
then diffusers' `fuse_lora` refuses every layer without a bias, and the kohya format has no place
for them.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ErasekitError
from .io import atomic_path

FORMATS = ("peft", "kohya")


@dataclass
class Lora:
    """Rank-r factors per module: `up` (out, r[, 1, 1]) and `down` (r, in[, kh, kw]) with up @ down ≈ ΔW."""

    rank: int  # the largest rank stored: the one asked for, or less where every weight's delta has fewer singular values
    down: dict[str, torch.Tensor] = field(default_factory=dict)  # module name -> lora_A / lora_down
    up: dict[str, torch.Tensor] = field(default_factory=dict)  # module name -> lora_B / lora_up
    dropped: list[str] = field(default_factory=list)  # changed parameters that are not weight matrices
    error: dict[str, float] = field(default_factory=dict)  # module -> ||ΔW - up @ down|| / ||ΔW||


def factor(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-`rank` factors (up, down) of a linear or convolution weight's delta, and the relative error."""
    flat = delta.double().flatten(1)
    U, S, Vh = torch.linalg.svd(flat, full_matrices=False)
    r = min(rank, S.numel())
    root = S[:r].sqrt()
    up, down = U[:, :r] * root, root[:, None] * Vh[:r]
    norm = flat.norm().item()
    error = (flat - up @ down).norm().item() / norm if norm > 0 else 0.0
    if delta.dim() == 4:  # a convolution: down is the r-channel k x k conv, up the 1 x 1 conv back
        up, down = up[:, :, None, None], down.reshape(r, *delta.shape[1:])
    return up.float().contiguous(), down.float().contiguous(), error


def erasure_lora(base: dict[str, torch.Tensor], erased: dict[str, torch.Tensor], rank: int) -> Lora:
    """The LoRA of rank `rank` for the change from `base` to `erased` (parameter name -> tensor)."""
    if rank < 1:
        raise ErasekitError(f"LoRA rank must be at least 1, got {rank}")
    lora = Lora(rank)
    weights = {n.removesuffix(".weight") for n, t in erased.items() if n.endswith(".weight") and t.dim() in (2, 4)}
    for name, new in erased.items():
        module, kind = name.rsplit(".", 1)
        delta = new.float() - base[name].float()
        if not delta.any():
            continue
        if module in weights and kind == "weight":
            lora.up[module], lora.down[module], lora.error[module] = factor(delta, rank)
        else:
            lora.dropped.append(name)
    lora.rank = max((up.shape[1] for up in lora.up.values()), default=rank)  # no layer's factors exceed its matrix's smaller side
    return lora


def save_lora(lora: Lora, path: Path | str, fmt: str = "peft", metadata: dict | None = None) -> None:
    """Write `lora` as a safetensors file, atomically.

    peft: diffusers' own keys (unet.<module>.lora_A/lora_B), loaded by `pipe.load_lora_weights(path)`.
    kohya: lora_unet_<module with underscores>.lora_down/lora_up/alpha, read by A1111 and ComfyUI
    (and by diffusers' load_lora_weights, which converts it).
    """
    if fmt not in FORMATS:
        raise ErasekitError(f"unknown LoRA format '{fmt}'; choose from {', '.join(FORMATS)}")
    tensors = {}
    for module in lora.up:
        tensors[f"unet.{module}.lora_A.weight"] = lora.down[module]
        tensors[f"unet.{module}.lora_B.weight"] = lora.up[module]
    if fmt == "kohya":
        from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

        tensors = convert_state_dict_to_kohya(tensors)  # diffusers' own conversion; alpha = rank, so scale 1
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def apply_lora(unet, path: Path | str) -> None:
    """Merge a LoRA file of either format into `unet`'s weights in place (W += up @ down)."""
    state = load_file(str(path))
    params = dict(unet.named_parameters())
    modules = {}
    for key, tensor in state.items():
        if key.startswith("unet.") and ".lora_" in key:
            module, part = key.removeprefix("unet.").split(".lora_", 1)
            modules.setdefault(module, {})[{"A.weight": "down", "B.weight": "up"}[part]] = tensor
        elif key.startswith("lora_unet_") and not key.endswith(".alpha"):
            stem, part = key.split(".", 1)
            modules.setdefault(_module_of(stem, params), {})[{"lora_down.weight": "down", "lora_up.weight": "up"}[part]] = tensor
    if not modules:
        raise ErasekitError(f"{Path(path).name} holds no UNet LoRA weights (unet.*.lora_A/B or lora_unet_*)")
    with torch.no_grad():
        for module, parts in modules.items():
            weight = params[f"{module}.weight"]
            up, down = parts["up"].float(), parts["down"].float()
            weight += (up.flatten(1) @ down.flatten(1)).reshape(weight.shape).to(weight.dtype)


def _module_of(stem: str, params: dict) -> str:
    """The UNet module a kohya key names (its dots were written as underscores)."""
    for name in params:
        module = name.rsplit(".", 1)[0]
        if "lora_unet_" + module.replace(".", "_") == stem:
            return module
    raise ErasekitError(f"LoRA key {stem} names no module of this UNet")
