"""erasekit's Python API: what the CLI calls, and what a notebook imports."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from .errors import ErasekitError
from .model import load_pipeline, sizes_of
from .progress import progress_bar

__all__ = ["load_pipeline", "generate", "Sampling"]


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
    """One pipeline call; every image has its own generator, so it depends only on (prompt, seed). The
    size is the model's own (FLUX's pipeline would draw 1024 pixels whatever the model)."""
    from .families import family_of

    size = sizes_of(pipe)["image_size"]
    return family_of(pipe).call(
        pipe,
        prompt=[p for p, _, _ in batch],
        negative_prompt=[negative_prompt] * len(batch) if negative_prompt else None,
        generator=[torch.Generator("cpu").manual_seed(s) for _, s, _ in batch],
        num_inference_steps=steps,
        guidance_scale=batch[0][2],
        height=size, width=size,
        output_type="pil",
        **(family_of(pipe).negative_guidance(batch[0][2]) if negative_prompt else {}),
    ).images


def check_generation(n: int, steps: int, guidance: float, batch_size: int, n_name: str = "n") -> None:
    """Refuse counts below 1 and a guidance scale that is not a finite number, in one line."""
    for name, value in ((n_name, n), ("steps", steps), ("batch size", batch_size)):
        if value < 1:
            raise ErasekitError(f"{name} must be at least 1, got {value}")
    if not math.isfinite(guidance):
        raise ErasekitError(f"guidance must be a finite number, got {guidance}")


IMAGE_OVERHEAD = 1024  # bytes a PIL image holds beyond its pixels


def available_memory() -> int:
    """Bytes of memory free to use now: the kernel's MemAvailable, else the machine's physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_limits(sizes: dict, steps: int, images: int = 0, what: str = "") -> None:
    """Refuse, in one line, sampling steps past the scheduler's length (`sizes["train_timesteps"]`)
    and `images` RGB images of `sizes["image_size"]` that cannot all be held in the memory free now.
    `sizes` is model.peek_sizes or model.sizes_of; a size it lacks is not checked."""
    limit = sizes.get("train_timesteps")
    if limit is not None and steps > limit:
        raise ErasekitError(f"--steps {steps} is more than the model's scheduler has timesteps ({limit}): use at most {limit}")
    size = sizes.get("image_size")
    if size and images:
        need, free = images * (3 * size * size + IMAGE_OVERHEAD), available_memory()
        if need > free:
            raise ErasekitError(f"{what or 'this run'} would hold {images:,} images of {size}x{size} in memory, at least {_gb(need)}; "
                                f"{_gb(free)} is free here: ask for fewer images")


@dataclass(frozen=True)
class Sampling:
    """How a measurement draws its images, the same for the base and the erased model: every prompt
    on each of `seeds` (a prompt with its own seed, a CSV row's, keeps it), `steps` DDIM steps at
    classifier-free guidance `guidance`, `batch_size` images per UNet batch.

    evaluate, the attacks, bench and the erase report all take one, so what they draw is set in one place.
    """

    seeds: Sequence[int] = (0, 1)
    steps: int = 35
    guidance: float = 7.5
    batch_size: int = 32

    def check(self) -> "Sampling":
        """This sampling, once every count is at least 1 and the guidance a finite number (one line otherwise)."""
        check_generation(len(self.seeds), self.steps, self.guidance, self.batch_size, "seeds")
        return self

    def jobs(self, prompts: list[str]) -> list[Job]:
        """One job per prompt and seed, prompt by prompt."""
        return [(p, s, self.guidance) for p in prompts for s in self.seeds]

    def generate(self, pipe, jobs: list[Job], negative_prompt: str | None = None, progress: bool = False) -> list[Image.Image]:
        """The image of every job, in order."""
        return generate_jobs(pipe, jobs, self.steps, self.batch_size, negative_prompt, progress)


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
    check_limits(sizes_of(pipe), steps, 2 * len(prompts) * n, f"{len(prompts)} prompt(s) x --n {n}")  # the images and their grid
    jobs = [(p, seed + j, guidance) for p in prompts for j in range(n)]
    return generate_jobs(pipe, jobs, steps, batch_size, negative_prompt, progress)


def generate_jobs(pipe, jobs: list[Job], steps: int, batch_size: int = 32, negative_prompt: str | None = None,
                  progress: bool = False) -> list[Image.Image]:
    """One image per (prompt, seed, guidance) job, in order, generated in batches of at most `batch_size`."""
    check_limits(sizes_of(pipe), steps, len(jobs), f"{len(jobs)} generation jobs")
    images: list[Image.Image] = []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("generate", total=len(jobs), info="")
        for batch in make_batches(jobs, batch_size):
            images.extend(generate_batch(pipe, batch, steps, negative_prompt))
            bar.update(task, advance=len(batch))
    return images
