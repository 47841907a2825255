"""The shapes task: the built-in world's concepts, the prompts around them, its detector and its ground truth.

Every concept of the world belongs to one attribute (a shape, a colour or a texture), so the
classifier gives exact answers: whether an image shows the concept, and whether it shows what its
prompt names. This module and the built-in model are the only ones that read the world (`erasekit.shapes`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import numpy as np
import torch
from PIL import Image

from ..errors import ErasekitError
from ..evaluation.detectors import Detection
from ..evaluation.prompts import Prompt
from ..shapes.world import ATTRIBUTES, COLOURS, SHAPES, SYNONYMS, TEXTURES
from . import Task

SUITES = ("target", "related", "described", "unrelated")


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


def described_prompts(concept: str) -> list[tuple[str, dict[str, str]]]:
    """other_prompts with the attribute they leave open named too, cycling through its values
    ("a red square" -> "a dotted red square"): prompts that say everything the image should show."""
    attribute, _ = attribute_of(concept)
    open_attribute = next(a for a in ("texture", "colour") if a != attribute and all(a not in w for _, w in other_prompts(concept)))
    values = {"texture": TEXTURES, "colour": COLOURS}[open_attribute]
    described = []
    for i, (text, wanted) in enumerate(other_prompts(concept)):
        v = values[i % len(values)]
        described.append((text.replace("a ", f"a {v} ", 1), wanted | {open_attribute: v}))
    return described



def paraphrases_of(concept: str) -> list[str]:
    """The world's other words for the concept (from its caption synonyms: "box" for square, "crimson" for red)."""
    _, value = attribute_of(concept)
    return [word for word in SYNONYMS[value] if word != concept]


def shapes_suite(name: str, concept: str) -> list[Prompt]:
    """The shapes world's suites around a concept.

    target: prompts naming the concept; related: prompts naming another value of the same
    attribute (other shapes when erasing "circle"), which an erasure must keep; described: the
    related prompts with the attribute they leave open named too ("a dotted red circle"), so the
    prompt fixes all three; unrelated: prompts naming only the other attributes ("a red shape"),
    where the erased concept may still appear.
    """
    attribute, value = attribute_of(concept)
    if name == "target":
        return [Prompt(text, wanted={attribute: value}) for text in target_prompts(concept)]
    if name == "related":
        return [Prompt(text, wanted=wanted) for text, wanted in other_prompts(concept)]
    if name == "described":
        return [Prompt(text, wanted=wanted) for text, wanted in described_prompts(concept)]
    if name == "unrelated":
        return [
            Prompt(f"a {v}" if other == "shape" else f"a {v} shape", wanted={other: v})
            for other in ATTRIBUTES
            if other != attribute
            for v in ATTRIBUTES[other]
        ]
    raise ErasekitError(f"unknown prompt suite '{name}': use {', '.join(SUITES)} or a CSV file")


class ShapesTask(Task):
    """A task judged by the shapes classifier: FID/KID against rendered ground truth where every prompt says what to draw."""

    @property
    def attribute(self) -> str:
        return attribute_of(self.concept)[0]

    def reference_images(self, suites, counts):
        prompts = [p for name in suites for p in suites[name]]
        if self.reference is not None or not all(p.wanted for p in prompts):
            return super().reference_images(suites, counts)
        return render_reference(prompts, [n for name in suites for n in counts[name]]), "rendered ground truth"


def shapes_task(concept: str, suites: str | None = None, name: str | None = None) -> ShapesTask:
    """The built-in world's task for `concept` (a value or a synonym): its suites (every one of SUITES, or
    those `suites` names), the shapes classifier, the concept's synonyms as paraphrases."""
    attribute_of(concept)
    names = [s.strip() for s in (suites or ",".join(SUITES)).split(",") if s.strip()]
    return ShapesTask(name or f"shapes:{concept}", concept, {n: shapes_suite(n, concept) for n in names}, detector="shapes",
                      paraphrases={concept: paraphrases_of(concept)}, features="shapes")


def render_reference(prompts: list[Prompt], jobs_per_prompt: list[int], seed: int = 0) -> list[Image.Image]:
    """A rendered image for each generated one, with the attributes its prompt names and the rest
    drawn at random: the ground truth that FID/KID compare a model with."""
    from ..shapes.world import Labels, random_labels, render

    rng = np.random.default_rng(seed)
    images = []
    for prompt, count in zip(prompts, jobs_per_prompt):
        for _ in range(count):
            labels = random_labels(rng)
            labels = Labels(**{**asdict(labels), **prompt.wanted})
            images.append(render(labels, rng))
    return images


class ShapesDetector:
    """The shipped shapes classifier: a concept is detected when its attribute is predicted as it."""

    name = "shapes"

    def __init__(self, classifier_dir=None):
        from ..shapes.classifier import load_classifier

        self.classifier = load_classifier(classifier_dir)

    def predict(self, images: list[Image.Image]) -> dict[str, list[str]]:
        return self.classifier.predict(images).labels

    def check(self, concept: str) -> None:
        """Refuse, before any image is made, a concept that is no value of the shapes world."""
        attribute_of(concept)

    def detect(self, images: list[Image.Image], concept: str) -> Detection:
        attribute, value = attribute_of(concept)
        predicted = self.predict(images)[attribute]
        return Detection(flags=[p == value for p in predicted], counts=dict(Counter(predicted)))


class ClassifierFeatures(torch.nn.Module):
    """The shapes classifier's penultimate features, as torchmetrics' FID/KID want a feature extractor:
    images as floats in [0, 1], (B, 3, H, W) -> (B, num_features)."""

    def __init__(self, detector=None):
        super().__init__()
        if detector is None:
            from ..shapes.classifier import load_classifier

            detector = load_classifier()
        self.detector = detector
        self.num_features = detector.model.widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detector.features(x * 2 - 1)
