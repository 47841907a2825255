"""Which parameters a method trains: named presets of parameter names (a family may have its own).

A preset names the denoiser's parameters by their own names. The text-encoder presets add the
weight matrices of every CLIP text encoder's layers, named under the pipeline's component
("text_encoder.encoder.layers.0.mlp.fc1.weight"): AdvUnlearn's `text_encoder_full` (Zhang et al.
2024), without its norms and biases, so that a LoRA carries the whole change (lora.py).
"""

from __future__ import annotations

import torch

from .errors import ErasekitError
from .families import denoiser_of, text_components
# ESD-u leaves out the final output layers and time embedding too, as esd_sd.py does ("out.", "time_embed"),
# and SDXL's embedding of the pooled text and image sizes (add_embedding), which is conditioning as well.
_ESD_U_EXCLUDED = ("attn2", "time_embedding", "add_embedding", "conv_out", "conv_norm_out")

PRESETS = {
    "attn2": lambda name: "attn2" in name,
    "attn2-kv": lambda name: "attn2.to_k" in name or "attn2.to_v" in name,
    "non-attn2": lambda name: not any(part in name for part in _ESD_U_EXCLUDED),
    "all": lambda name: True,
}


# Presets that train the text encoders, each with its part of the denoiser (None: none of it).
TEXT_PRESETS = {"text-encoder": None, "attn2+text-encoder": "attn2"}
# The families whose text encoders are all CLIP, which the text-encoder presets train; SD3's T5 and
# FLUX's, which carry most of their prompts, are not trained yet.
TEXT_TRAINED_FAMILIES = ("sd", "sdxl")


def trains_text(preset: str) -> bool:
    """Whether a preset trains the text encoders."""
    return preset in TEXT_PRESETS


def check_text_training(preset: str, family) -> None:
    """Refuse, in one line, a text-encoder preset on a family whose encoders it does not train."""
    if trains_text(preset) and family.name not in TEXT_TRAINED_FAMILIES:
        raise ErasekitError(f"parameter preset '{preset}' trains CLIP text encoders (SD 1.x/2.x, SDXL); {family.label}'s "
                            "T5 is not trained yet: use a preset of the denoiser (attn2, ...)")


_CLIP_MATRICES = tuple(f"{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))


def text_matrix(name: str) -> bool:
    """A weight matrix of a CLIP text encoder's layers (attention q, k, v, out and the MLP), by its name in the encoder."""
    return "encoder.layers." in name and name.endswith(_CLIP_MATRICES)


def pipeline_parameters(pipe) -> dict[str, torch.nn.Parameter]:
    """Every parameter a preset may name: the denoiser's under their own names, each text encoder's
    under its component's ("text_encoder.<name>")."""
    params = dict(denoiser_of(pipe).named_parameters())
    for component in text_components(pipe):
        params |= {f"{component}.{name}": p for name, p in getattr(pipe, component).named_parameters()}
    return params


def of_text_encoder(name: str, pipe) -> bool:
    """Whether a name of `pipeline_parameters` is a text encoder's."""
    return name.split(".", 1)[0] in text_components(pipe)


def select_parameters(denoiser, preset: str, family=None, pipe=None) -> list[str]:
    """Names of the parameters that `preset` trains: the UNet's rules above, or where the family has
    its own for a preset (SD3's transformer: `Family.presets`), those; a text-encoder preset also
    names the text encoders' matrices of `pipe`, which it needs."""
    rules = {**PRESETS, **(family.presets if family is not None else {})}
    if preset not in rules and preset not in TEXT_PRESETS:
        raise ErasekitError(f"unknown parameter preset '{preset}'; choose from {', '.join([*rules, *TEXT_PRESETS])}")
    part = TEXT_PRESETS.get(preset, preset)
    names = [name for name, _ in denoiser.named_parameters() if rules[part](name)] if part is not None else []
    if trains_text(preset):
        if pipe is None:
            raise ErasekitError(f"parameter preset '{preset}' trains the text encoders: it needs the pipeline")
        names += [f"{c}.{name}" for c in text_components(pipe) for name, _ in getattr(pipe, c).named_parameters() if text_matrix(name)]
    if not names:
        raise ErasekitError(f"parameter preset '{preset}' selects no parameter of this {type(denoiser).__name__}")
    return names
