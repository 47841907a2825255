"""evaluate(): generate with the base and the erased model from the same seeds, and measure both.

Erasure is the detector's rate on prompts that name the concept; preservation is same-seed SSIM
to the base model, prompt alignment (the shapes classifier, or CLIP score for real models) and
FID/KID against a reference set. Generation is sharded across processes when run under
`accelerate launch`: every process draws whole batches of one global batch list, so the images
do not depend on the number of processes; rank 0 gathers them and measures.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image

from ..api import Job, Sampling, generate_batch, make_batches
from ..precision import dtype_name
from ..progress import progress_bar
from .metrics import agreement, fid_kid, ssim
from .prompts import Prompt
from ..families import denoiser_of


@dataclass
class SuiteResult:
    """One prompt suite, base model vs erased model (same prompts, same seeds)."""

    n_images: int
    detected_base: float  # share of images where the detector finds the concept
    detected: float
    counts_base: dict[str, int]  # detector classes found, images per class
    counts: dict[str, int]
    ssim: float  # mean same-seed SSIM (25x25 window) between base and erased images
    alignment_base: dict[str, float] | None = None  # shapes world: agreement with the attributes named
    alignment: dict[str, float] | None = None
    clip_base: float | None = None  # real models: CLIP score of image and prompt
    clip: float | None = None
    replacement: float | None = None  # share of erased images showing the replacement concept
    kept: dict[str, float] | None = None  # shapes world: per attribute, share of erased images showing what the base image of the same seed shows


@dataclass
class Evaluation:
    concept: str
    settings: dict
    suites: dict[str, SuiteResult]
    distribution: dict | None  # FID/KID of base and erased images against the reference set
    timing: dict
    images: dict[str, dict[str, list[Image.Image]]] = field(default_factory=dict, repr=False)
    jobs: dict[str, list[Job]] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("images", "jobs")} | {
            "prompts": {name: [list(j) for j in jobs] for name, jobs in self.jobs.items()}
        }


def same_seed_agreement(base: dict[str, list[str]], erased: dict[str, list[str]]) -> dict[str, float]:
    """Per attribute, the share of image pairs (same prompt, same seed) where the erased model's image
    shows what the base model's shows: it sees attributes a prompt does not name (the texture of
    "a cyan square"), which alignment with the prompt cannot."""
    return {a: sum(b == e for b, e in zip(base[a], erased[a])) / len(base[a]) for a in sorted(base)}


def seeds_of(prompt: Prompt, seeds: list[int]) -> list[int]:
    """The seeds a prompt is generated with: its own (a CSV row) or every seed of the run."""
    return [prompt.seed] if prompt.seed is not None else list(seeds)


def expand(prompts: list[Prompt], sampling: Sampling) -> list[Job]:
    """One job per prompt and seed, prompt by prompt; a prompt's own seed and guidance (a CSV row's) win."""
    return [(p.text, s, p.guidance if p.guidance is not None else sampling.guidance) for p in prompts for s in seeds_of(p, sampling.seeds)]


def processes():
    """This process's place in an `accelerate launch` (one process when not launched). Called before a
    model loads, it also points each process of a multi-GPU launch at its own GPU."""
    from accelerate import PartialState

    # On a machine without CUDA, accelerate only sets up multi-process CPU runs when told `cpu=True`.
    return PartialState(cpu=not torch.cuda.is_available())


def end_processes() -> None:
    """Take down the process group of a multi-process run once this process is done with it: left to
    interpreter exit, a rank that had finished its work aborted once ("terminate called without an
    active exception")."""
    state = processes()
    if state.num_processes > 1:
        state.destroy_process_group()


def generate_sharded(pipe, jobs: list[Job], sampling: Sampling, negative_prompt: str | None, label: str, progress: bool,
                     shard: bool = True) -> list[Image.Image]:
    """Generate `jobs` split by whole batches across the processes of an accelerate launch (all here unless `shard`)."""
    from accelerate.utils import gather_object

    if not shard:
        return sampling.generate(pipe, jobs, negative_prompt, progress)
    state = processes()
    batches = make_batches(jobs, sampling.batch_size)
    local = []
    with state.split_between_processes(batches) as mine, progress_bar(disable=not (progress and state.is_main_process)) as bar:
        task = bar.add_task(label, total=sum(len(b) for b in mine), info="")
        for batch in mine:
            local.append(generate_batch(pipe, batch, sampling.steps, negative_prompt))
            bar.update(task, advance=len(batch))
    gathered = gather_object(local) if state.num_processes > 1 else local
    return [image for batch in gathered for image in batch]


def evaluate(
    base,
    erased,
    task,
    suites: dict[str, list[Prompt]] | None = None,
    detector=None,
    sampling: Sampling = Sampling(),
    negative_prompt: str | None = None,
    replacement: str | None = None,
    reference: list[Image.Image] | str | None = "auto",
    features=None,
    clip_model: str | None = None,
    base_images: dict[str, list[Image.Image]] | None = None,
    progress: bool = True,
    shard: bool = True,
) -> Evaluation | None:
    """Measure `erased` against `base` on every suite; returns None on processes other than rank 0.

    base, erased: pipelines (the same object when the method acts at inference, with
    `negative_prompt` set for the erased run). task: the concept's task (tasks/); suites and
    detector default to its own (`task.select(None)`, `task.make_detector()`). sampling: the seeds,
    steps, guidance and batch size both models draw with. reference: images for
    FID/KID, "auto" (the task's: rendered ground truth in the shapes world, else its folder or the
    base model's images) or None (skip). features: the FID/KID feature extractor (default: the task's).
    base_images: the base model's images per suite from an earlier evaluation with the same
    suites and settings (`Evaluation.images`), so that comparing many erasures generates them once.
    shard: split the images over the processes of an `accelerate launch`; False draws them all here
    (bench, which spreads whole cells over the processes instead).
    """
    concept = task.concept
    suites = task.select(None) if suites is None else suites
    detector = task.make_detector() if detector is None else detector
    sampling.check()
    jobs = {name: expand(prompts, sampling) for name, prompts in suites.items()}
    images: dict[str, dict[str, list[Image.Image]]] = {name: {} for name in suites}
    started = time.perf_counter()
    for which, pipe, negative in (("base", base, None), ("erased", erased, negative_prompt)):
        for name in suites:
            if which == "base" and base_images is not None:
                images[name]["base"] = base_images[name]
            else:
                images[name][which] = generate_sharded(pipe, jobs[name], sampling, negative, f"{which}: {name}", progress, shard)
    generation_s = time.perf_counter() - started
    if shard and not processes().is_main_process:
        return None

    started = time.perf_counter()
    results = {}
    for name, prompts in suites.items():
        before, after = images[name]["base"], images[name]["erased"]
        found_base, found = detector.detect(before, concept), detector.detect(after, concept)
        result = SuiteResult(
            n_images=len(before), detected_base=found_base.rate, detected=found.rate,
            counts_base=found_base.counts, counts=found.counts, ssim=ssim(before, after).mean().item(),
        )
        wanted = [p.wanted for p in prompts for _ in seeds_of(p, sampling.seeds)]
        if hasattr(detector, "predict"):
            predicted_base, predicted = detector.predict(before), detector.predict(after)
            result.kept = same_seed_agreement(predicted_base, predicted)
            if all(wanted):
                result.alignment_base, result.alignment = agreement(predicted_base, wanted), agreement(predicted, wanted)
        if clip_model is not None:
            from .metrics import clip_score

            texts = [text for text, _, _ in jobs[name]]
            result.clip_base, result.clip = clip_score(before, texts, clip_model), clip_score(after, texts, clip_model)
        if replacement is not None and name == "target":
            result.replacement = detector.detect(after, replacement).rate
        results[name] = result

    distribution = _distribution(task, suites, images, sampling.seeds, reference, features)
    metrics_s = time.perf_counter() - started
    n_images = (1 if base_images is not None else 2) * sum(len(j) for j in jobs.values())
    timing = {
        "generation_s": round(generation_s, 2), "images": n_images, "images_per_s": round(n_images / generation_s, 2),
        "metrics_s": round(metrics_s, 2), "metrics_overhead": round(metrics_s / generation_s, 4),
    }
    settings = {
        "task": task.name, "seeds": list(sampling.seeds), "steps": sampling.steps, "guidance": sampling.guidance, "negative_prompt": negative_prompt,
        "detector": getattr(detector, "name", type(detector).__name__), "batch_size": sampling.batch_size,
        "processes": processes().num_processes if shard else 1, "replacement": replacement,
        "device": str(base.device), "dtype": dtype_name(denoiser_of(base).dtype),
    }
    return Evaluation(concept=concept, settings=settings, suites=results, distribution=distribution, timing=timing, images=images, jobs=jobs)


def _distribution(task, suites, images, seeds, reference, features) -> dict | None:
    """FID/KID of the base and erased images of every suite but "target" against the reference."""
    kept = [name for name in suites if name != "target"] or list(suites)
    base_images = [im for name in kept for im in images[name]["base"]]
    erased_images = [im for name in kept for im in images[name]["erased"]]
    if reference is None or len(base_images) < 2:
        return None
    if features is None:
        from .metrics import feature_extractor

        features = feature_extractor(task.features)
    source = "given"
    if reference == "auto":
        counts = {name: [len(seeds_of(p, seeds)) for p in suites[name]] for name in kept}
        reference, source = task.reference_images({name: suites[name] for name in kept}, counts)
        reference = base_images if reference is None else reference
    return {
        "reference": source, "n_reference": len(reference), "n_images": len(erased_images),
        "base": fid_kid(reference, base_images, features) if source != "base model" else None,
        "erased": fid_kid(reference, erased_images, features),
    }
