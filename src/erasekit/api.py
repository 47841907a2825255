"""erasekit's Python API: what the CLI calls, and what a notebook imports."""

from __future__ import annotations

import math

import torch
from PIL import Image

from .errors import ErasekitError
from .model import load_pipeline
from .progress import progress_bar

__all__ = ["load_pipeline", "generate"]


Job = tuple[str, int, float]  # (prompt, seed, guidance scale): one image


def make_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Consecutive jobs in batches of at most `batch_size` sharing one guidance scale."""
    batches: list[list[Job]] = []
    for job in jobs:
        if batches and len(batches[-1]) < batch_size and batches[-1][0][2] == job[2]:
            batches[-1].append(job)
        else:
            batches.append([job])
    return batches


def generate_batch(pipe, batch: list[Job], steps: int, negative_prompt: str | None = None) -> list[Image.Image]:
    """One pipeline call; every image has its own generator, so it depends only on (prompt, seed)."""
    return pipe(
        prompt=[p for p, _, _ in batch],
        negative_prompt=[negative_prompt] * len(batch) if negative_prompt else None,
        generator=[torch.Generator("cpu").manual_seed(s) for _, s, _ in batch],
        num_inference_steps=steps,
        guidance_scale=batch[0][2],
        output_type="pil",
    ).images


def check_generation(n: int, steps: int, guidance: float, batch_size: int) -> None:
    """Refuse counts below 1 and a guidance scale that is not a finite number, in one line."""
    for name, value in (("n", n), ("steps", steps), ("batch size", batch_size)):
        if value < 1:
            raise ErasekitError(f"{name} must be at least 1, got {value}")
    if not math.isfinite(guidance):
        raise ErasekitError(f"guidance must be a finite number, got {guidance}")


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
    check_generation(n, steps, guidance, batch_size)
    jobs = [(p, seed + j, guidance) for p in prompts for j in range(n)]
    return generate_jobs(pipe, jobs, steps, batch_size, negative_prompt, progress)


def generate_jobs(pipe, jobs: list[Job], steps: int, batch_size: int = 32, negative_prompt: str | None = None,
                  progress: bool = False) -> list[Image.Image]:
    """One image per (prompt, seed, guidance) job, in order, generated in batches of at most `batch_size`."""
    images: list[Image.Image] = []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("generate", total=len(jobs), info="")
        for batch in make_batches(jobs, batch_size):
            images.extend(generate_batch(pipe, batch, steps, negative_prompt))
            bar.update(task, advance=len(batch))
    return images
