"""Which denoiser parameters a method trains: named presets of parameter names (a family may have its own)."""

from __future__ import annotations

from .errors import ErasekitError
# ESD-u leaves out the final output layers and time embedding too, as esd_sd.py does ("out.", "time_embed"),
# and SDXL's embedding of the pooled text and image sizes (add_embedding), which is conditioning as well.
_ESD_U_EXCLUDED = ("attn2", "time_embedding", "add_embedding", "conv_out", "conv_norm_out")

PRESETS = {
    "attn2": lambda name: "attn2" in name,
    "attn2-kv": lambda name: "attn2.to_k" in name or "attn2.to_v" in name,
    "non-attn2": lambda name: not any(part in name for part in _ESD_U_EXCLUDED),
    "all": lambda name: True,
}


def select_parameters(denoiser, preset: str, family=None) -> list[str]:
    """Names of the denoiser's parameters that `preset` trains: the UNet's rules above, or where the
    family has its own for a preset (SD3's transformer: `Family.presets`), those."""
    rules = {**PRESETS, **(family.presets if family is not None else {})}
    if preset not in rules:
        raise ErasekitError(f"unknown parameter preset '{preset}'; choose from {', '.join(rules)}")
    names = [name for name, _ in denoiser.named_parameters() if rules[preset](name)]
    if not names:
        raise ErasekitError(f"parameter preset '{preset}' selects no parameter of this {type(denoiser).__name__}")
    return names
