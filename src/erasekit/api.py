"""erasekit's Python API: what the CLI calls, and what a notebook imports."""

from __future__ import annotations

import torch
from PIL import Image

from .errors import ErasekitError
from .model import load_pipeline
from .progress import progress_bar

__all__ = ["load_pipeline", "generate"]


def generate(
    pipe,
    prompts: list[str],
    n: int = 4,
    seed: int = 0,
    steps: int = 35,
    guidance: float = 7.5,
    negative_prompt: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> list[Image.Image]:
    """Generate `n` images per prompt with DDIM; image j of every prompt uses seed `seed + j`.

    Returns the images prompt by prompt. Seeding each image by its own generator makes an image
    depend only on (prompt, seed), not on the batch it was drawn in, so base and erased models
    compared at the same seed start from the same noise.
    """
    if not prompts:
        raise ErasekitError("no prompts given: pass at least one prompt")
    if n <= 0 or steps <= 0 or batch_size <= 0:
        raise ErasekitError("n, steps and batch size must be positive")
    jobs = [(p, seed + j) for p in prompts for j in range(n)]
    images: list[Image.Image] = []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("generate", total=len(jobs), info="")
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            out = pipe(
                prompt=[p for p, _ in chunk],
                negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
                generator=[torch.Generator("cpu").manual_seed(s) for _, s in chunk],
                num_inference_steps=steps,
                guidance_scale=guidance,
                output_type="pil",
            )
            images.extend(out.images)
            bar.update(task, advance=len(chunk))
    return images

