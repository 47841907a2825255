"""Erasure on the shapes world: is the concept gone from prompts that name it, and is the rest intact?

Every concept of the world belongs to one attribute (a shape, a colour or a texture), so the
classifier gives exact answers: the target's detection rate on prompts that name it, the
replacement's rate there, prompt agreement on prompts that do not name it, and same-seed SSIM
against the base model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ErasekitError
from ..shapes.world import ATTRIBUTES, COLOURS, SHAPES, SYNONYMS, TEXTURES
from .metrics import ssim


def attribute_of(concept: str) -> tuple[str, str]:
    """('shape', 'circle') for "circle" or a synonym such as "disc"."""
    for name, values in ATTRIBUTES.items():
        for value in values:
            if concept == value or concept in SYNONYMS[value]:
                return name, value
    raise ErasekitError(f"'{concept}' is not a concept of the shapes world ({', '.join(SHAPES + COLOURS + TEXTURES)})")


def target_prompts(concept: str) -> list[str]:
    """Prompts that name the concept: the bare word, with an article, and combined with the other attributes."""
    attribute, value = attribute_of(concept)
    if attribute == "shape":
        combos = [f"a {c} {value}" for c in COLOURS] + [f"a {t} {value}" for t in TEXTURES]
    elif attribute == "colour":
        combos = [f"a {value} {s}" for s in SHAPES]
    else:
        combos = [f"a {value} {s}" for s in SHAPES]
    return [value, f"a {value}" if attribute == "shape" else f"a {value} shape"] + combos


def other_prompts(concept: str) -> list[tuple[str, dict[str, str]]]:
    """Prompts that do not name the concept, with the attributes they name (for prompt agreement)."""
    attribute, value = attribute_of(concept)
    if attribute == "shape":
        return [(f"a {c} {s}", {"shape": s, "colour": c}) for s in SHAPES if s != value for c in COLOURS]
    if attribute == "colour":
        return [(f"a {c} {s}", {"shape": s, "colour": c}) for s in SHAPES for c in COLOURS if c != value]
    return [(f"a {t} {s}", {"shape": s, "texture": t}) for s in SHAPES for t in TEXTURES if t != value]


@dataclass
class ErasureReport:
    concept: str
    target_rate_base: float  # share of target-prompt images showing the concept, base model
    target_rate: float  # the same, erased model
    replacement_rate: float | None  # share of target-prompt images showing the replacement, erased model
    agreement_base: dict[str, float]  # prompt agreement on other prompts, base model
    agreement: dict[str, float]  # the same, erased model
    ssim_other: float  # same-seed SSIM base vs erased, other prompts
    ssim_target: float  # the same, target prompts
    n_target_images: int
    n_other_images: int

    def as_dict(self) -> dict:
        return asdict(self)


def _rate(predicted: dict[str, list[str]], attribute: str, value: str) -> float:
    labels = predicted[attribute]
    return sum(p == value for p in labels) / len(labels)


def evaluate_erasure(base_pipe, erased_pipe, detector, concept: str, replacement: str | None = None,
                     seeds: int = 4, steps: int = 35, guidance: float = 7.5, progress: bool = True):
    """Generate target and other prompts with both models from the same seeds, and compare.

    Returns the report and the images: {"base"|"erased": (target images, other images)}, each
    prompt by prompt with `seeds` images per prompt.
    """
    from ..api import generate
    from ..shapes.score import agreement

    attribute, value = attribute_of(concept)
    targets = target_prompts(concept)
    others = other_prompts(concept)
    other_texts = [p for p, _ in others]
    wanted = [attrs for _, attrs in others for _ in range(seeds)]
    images = {}
    for name, pipe in (("base", base_pipe), ("erased", erased_pipe)):
        images[name] = (
            generate(pipe, targets, n=seeds, steps=steps, guidance=guidance, progress=progress),
            generate(pipe, other_texts, n=seeds, steps=steps, guidance=guidance, progress=progress),
        )
    base_t, base_o = (detector.predict(x).labels for x in images["base"])
    erased_t, erased_o = (detector.predict(x).labels for x in images["erased"])
    replacement_rate = None
    if replacement:
        r_attribute, r_value = attribute_of(replacement)
        replacement_rate = _rate(erased_t, r_attribute, r_value)
    report = ErasureReport(
        concept=concept,
        target_rate_base=_rate(base_t, attribute, value),
        target_rate=_rate(erased_t, attribute, value),
        replacement_rate=replacement_rate,
        agreement_base=agreement(base_o, wanted),
        agreement=agreement(erased_o, wanted),
        ssim_other=ssim(images["base"][1], images["erased"][1]).mean().item(),
        ssim_target=ssim(images["base"][0], images["erased"][0]).mean().item(),
        n_target_images=len(images["base"][0]),
        n_other_images=len(images["base"][1]),
    )
    return report, images
