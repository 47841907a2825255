"""How well a model draws what the prompt names, judged by the shapes classifier."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..evaluation.metrics import agreement
from .world import COLOURS, SHAPES, TEXTURES


def scoring_prompts() -> list[tuple[str, dict[str, str]]]:
    """Every shape x colour x texture as "a {colour} {texture} {shape}", with the attributes it names."""
    return [
        (f"a {colour} {texture} {shape}", {"shape": shape, "colour": colour, "texture": texture})
        for shape in SHAPES
        for colour in COLOURS
        for texture in TEXTURES
    ]


@dataclass
class Score:
    """Share of images whose predicted attribute equals the prompted one, per attribute."""

    agreement: dict[str, float]
    n_images: int
    per_prompt: list[dict] = field(default_factory=list)


def score_model(pipe, detector, seeds: int = 2, steps: int = 35, guidance: float = 7.5, batch_size: int = 54, progress: bool = True) -> Score:
    from ..api import generate

    prompts = scoring_prompts()
    images = generate(pipe, [p for p, _ in prompts], n=seeds, seed=0, steps=steps, guidance=guidance, batch_size=batch_size, progress=progress)
    wanted = [attrs for _, attrs in prompts for _ in range(seeds)]
    predicted = detector.predict(images).labels
    per_prompt = [
        {"prompt": prompt, "seed": j, **{f"predicted_{a}": predicted[a][i * seeds + j] for a in attrs}}
        for i, (prompt, attrs) in enumerate(prompts)
        for j in range(seeds)
    ]
    return Score(agreement=agreement(predicted, wanted), n_images=len(images), per_prompt=per_prompt)
