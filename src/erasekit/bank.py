"""The teacher bank: frozen-model trajectories and the loss targets at every x_τ, computed once.

A method's teacher step runs the frozen model on a batch of x_τ and returns the guided output to
step with plus the targets its loss needs there; `build_bank` runs many trajectories side by side
in large batches and keeps every (x_τ, τ, targets). Training then draws from the bank and runs
only the student. Because the bank is built from the model before its first update, the student
itself is the frozen model at that moment: no second UNet is ever held.

The bank lives in host memory in float32, whatever the compute dtype: a target such as
γ1 (ε*(c) − ε*(∅)) is a scaled difference of two close outputs, and storing it in half precision
would round it a second time; it holds latents, not images, so float32 stays small. Each step
copies only its drawn batch to the accelerator (a few hundred kB at 512 px), so the bank costs no
accelerator memory; pinning it would not pay, since indexing a batch out of a pinned tensor makes
an unpinned copy anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from .guidance import cfg
from .io import atomic_path
from .progress import progress_bar
from .sampling import initial_noise, run_sampler, training_noise, denoiser_out

# teacher_step(x, t, step_index, concept_index) -> (guided output, {name: target tensor})
TeacherStep = Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Bank:
    x: torch.Tensor  # (N, C, H, W) latents x_τ
    t: torch.Tensor  # (N,) their timesteps
    concept: torch.Tensor  # (N,) index of the target concept that drew them
    targets: dict[str, torch.Tensor]  # (N, C, H, W) each

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def trajectories(self) -> int:
        """Frozen-model DDIM runs it holds: each left one entry at the noisiest timestep kept (t = 0 for image banks)."""
        return int((self.t == self.t.max()).sum())

    def draw(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.entries(torch.randint(0, len(self), (batch,), generator=generator))

    def batches(self, size: int):
        """Every entry once, in order, `size` at a time, as `draw` gives them."""
        for start in range(0, len(self), size):
            yield self.entries(slice(start, start + size))

    def entries(self, index) -> dict[str, torch.Tensor]:
        """The entries at `index` (indices or a slice): x, t, concept and every target."""
        return {"x": self.x[index], "t": self.t[index], "concept": self.concept[index], **{k: v[index] for k, v in self.targets.items()}}

    def draw_noised(self, batch: int, scheduler, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw clean latents and noise them as the model was trained (sampling.training_noise)."""
        drawn = self.draw(batch, generator)
        x_t, t, _ = training_noise(scheduler, drawn["x"], generator)
        return {**drawn, "x": x_t, "t": t}

    def save(self, path: Path) -> None:
        tensors = {"x": self.x, "t": self.t, "concept": self.concept, **{f"target.{k}": v for k, v in self.targets.items()}}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))

    @classmethod
    def load(cls, path: Path) -> "Bank":
        t = load_file(str(path))
        return cls(t["x"], t["t"], t["concept"], {k.removeprefix("target."): v for k, v in t.items() if k.startswith("target.")})


@torch.no_grad()
def build_bank(
    scheduler, teacher_step: TeacherStep, n_trajectories: int, n_concepts: int, latent_shape: tuple[int, ...],
    generator: torch.Generator, device, batch_size: int = 64, progress: bool = True, label: str = "teacher bank",
) -> Bank:
    """Run `n_trajectories` DDIM trajectories (trajectory k draws concept k mod n_concepts) and keep every step."""
    xs, ts, concepts, targets = [], [], [], {}
    steps = len(scheduler.timesteps)
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(label, total=n_trajectories * steps, info=f"{n_trajectories} trajectories x {steps} steps")
        for start in range(0, n_trajectories, batch_size):
            n = min(batch_size, n_trajectories - start)
            concept = torch.arange(start, start + n) % n_concepts
            x_T = initial_noise(n, latent_shape, generator, scheduler).to(device)

            def record(x, t, i):
                guided, step_targets = teacher_step(x, t, i, concept)
                xs.append(x.float().cpu())
                ts.append(torch.full((n,), t.item()))  # DDPM's integer timesteps stay integers, flow matching's stay real
                concepts.append(concept)
                for name, value in step_targets.items():
                    targets.setdefault(name, []).append(value.float().cpu())
                bar.update(task, advance=n)
                return guided

            run_sampler(scheduler, x_T, record)
    return Bank(torch.cat(xs), torch.cat(ts), torch.cat(concepts), {k: torch.cat(v) for k, v in targets.items()})


@torch.no_grad()
def sample_latents(scheduler, unet, uncond: torch.Tensor, cond_for: Callable[[torch.Tensor], torch.Tensor], guidance: float,
                   n: int, n_concepts: int, latent_shape: tuple[int, ...], generator: torch.Generator, device,
                   batch_size: int = 64, progress: bool = True, label: str = "images") -> Bank:
    """Generate `n` clean latents x_0 by guided DDIM (image k of concept k mod n_concepts), for methods
    that train on noised images of a concept (Ablating Concepts' anchors, Forget-Me-Not's concept images).

    cond_for(concept indices) gives the prompt embeddings of a batch. Returned as a Bank with t = 0;
    `draw_noised` then draws x_t from it.
    """
    xs, concepts = [], []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(label, total=n, info=f"{n} latents")
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            concept = torch.arange(start, start + k) % n_concepts
            embeddings = torch.cat([uncond.expand(k, -1, -1), cond_for(concept)])

            def guided(x, t, i):
                eps_uncond, eps_cond = denoiser_out(unet, x.repeat(2, 1, 1, 1), t, embeddings).chunk(2)
                return cfg(eps_uncond, eps_cond, guidance)

            xs.append(run_sampler(scheduler, initial_noise(k, latent_shape, generator, scheduler).to(device), guided).float().cpu())
            concepts.append(concept)
            bar.update(task, advance=k)
    x = torch.cat(xs)
    return Bank(x, torch.zeros(len(x), dtype=torch.long), torch.cat(concepts), {})
