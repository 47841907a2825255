"""The `erasekit` command line: parses, calls the Python API, prints.

Every command turns an `ErasekitError` (bad input, missing model...) into one line on stderr and
exit code 2, with no traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from .paths import check_paths  # stdlib only: --help stays fast

app = typer.Typer(
    help="Erase concepts from text-to-image diffusion models, measure the erasure, attack it.\n\n"
    "Models: 'builtin' (the shipped shapes-world model), a diffusers folder, a .safetensors file, or a hub id.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
shapes_app = typer.Typer(help="The built-in shapes world: train its model and classifier, score a model on it.", no_args_is_help=True)
app.add_typer(shapes_app, name="shapes")

MODEL_HELP = "'builtin', a diffusers folder, a .safetensors checkpoint, or a hub id (from the local cache when offline)."


def device_option():
    return typer.Option("auto", help="auto (CUDA if present, else the CPU), cpu, cuda or cuda:N.")


def dtype_option():
    return typer.Option("auto", help="auto (bf16 on GPUs that support it, fp16 on other GPUs, fp32 on the CPU), fp32, fp16 or bf16. "
                        "Training keeps the trained weights in fp32 whatever this is.")


def guidance_option(help: str = "Guidance scale (default: the model family's, 7.5; FLUX's distilled guidance, 3.5)."):
    return typer.Option(None, help=help)


def _guidance(guidance: float | None, model: str, config: str | None) -> float:
    """--guidance, or the family's default where the model's folder names its family (Family.guidance), else SD's."""
    from .families import Family
    from .model import peek_family

    return guidance if guidance is not None else (peek_family(model, config) or Family).guidance


def batch_size_option():
    return typer.Option(32, help="Images per UNet batch.")


def config_option():
    return typer.Option(None, help="For a single-file --model: a local diffusers folder of the same architecture, giving its configuration (needed offline).")


STEPS_HELP = "Sampling steps: DDIM on Stable Diffusion and SDXL, flow-matching Euler on SD3 and FLUX (as their pipelines sample)."
TASK_HELP = ("What measures the concept: its prompts, detector and paraphrases. shapes (the built-in world; with --concept), nudity "
             "(NudeNet), object:<ImageNet class>, style:<artist> or person:<name> (CLIP zero-shot, with --clip), or a task .toml file.")


def task_option():
    return typer.Option("shapes", "--task", "-t", help=TASK_HELP)


def _task(task: str, concept: Optional[str], clip: Optional[str] = None, detector: Optional[str] = None, threshold: Optional[float] = None):
    """The task and its detector, both checked before any model loads (a CLIP detector is given --clip)."""
    from .tasks import load_task

    found = load_task(task, concept)
    return found, found.make_detector(detector, clip, **({"threshold": threshold} if threshold is not None else {}))


def _measured(task: str, concepts: Optional[List[str]], erasure: Optional[Path], clip: Optional[str], detector: Optional[str] = None,
              threshold: Optional[float] = None) -> list:
    """(task, detector) per concept measured: those given, else every concept the --erasure file erased
    (in the shapes world), else the task's own; all checked before any model loads."""
    if not concepts and erasure is not None and task == "shapes":
        from .erasure_file import read_metadata

        concepts = read_metadata(erasure).get("concepts") or None
    return [_task(task, c, clip, detector, threshold) for c in (concepts or [None])]


def _folders(measures: list, out: Path) -> dict:
    """Where each measured concept's files go: OUT itself for one concept, OUT/CONCEPT/ for several."""
    from .images import slug

    return {m.concept: out if len(measures) == 1 else out / slug(m.concept) for m, _ in measures}


def _precision(device: str, dtype: str):
    """--device and --dtype resolved once, before any work starts ("auto" chosen, a device this
    machine lacks or an unknown dtype refused); every load of the command takes these."""
    from .precision import resolve_device, resolve_dtype

    resolved = resolve_device(device)
    return resolved, resolve_dtype(dtype, resolved)


def _erasure_or_method(erasure: Optional[Path], method: Optional[str], preset: Optional[str], required: bool = False):
    """Check --erasure FILE and --method NAME [--preset] before any work: not both (nor neither, if
    `required`), a file that exists with metadata erasekit can read, an inference-time method. Returns its settings to steer with, or None."""
    from .errors import ErasekitError
    from .methods import get_method

    if required and erasure is None and method is None:
        raise ErasekitError("give exactly one of --erasure FILE or --method NAME (inference-time: neg-prompt, sld)")
    if erasure is not None and method is not None:
        raise ErasekitError("give --erasure FILE (a weight edit) or --method (inference-time), not both")
    if erasure is not None:
        from .erasure_file import check_metadata, read_metadata

        if not erasure.is_file():
            raise ErasekitError(f"erasure file not found: {erasure}")
        check_metadata(read_metadata(erasure), erasure.name)
    return get_method(method).steering(preset) if method is not None else None


def _model_path(model: str) -> Optional[Path]:
    """The model as a path that outputs must not overlap: the built-in model's folder, or a local
    folder or file; None for a hub id (its files live in the hub cache)."""
    from .model import source_path

    path = source_path(model)
    return path if os.path.lexists(path) else None


def _local(value: Optional[str]) -> Optional[Path]:
    """An option that may name a local file or folder (a CSV, a CLIP folder): the path if it exists."""
    return Path(value) if value and os.path.lexists(value) else None


def _check_limits(model: str, config: Optional[str], steps: int, images: int = 0, what: str = "") -> None:
    """Refuse sampling steps past the scheduler's length and image counts that cannot fit in memory,
    from the model's configuration files where they can be read before it loads (api.check_limits
    checks again on the loaded pipeline)."""
    from .api import check_limits
    from .model import peek_sizes

    check_limits(peek_sizes(model, config), steps, images, what)


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


OUTPUT_OPTIONS = ("out", "report", "save_pipeline")  # the commands' options that name what they write


def friendly_errors(command):
    """Run a command; an ErasekitError (or a full disk) becomes 'error: ...' on stderr and exit code 2,
    and an ErasekitWarning one 'warning: ...' line. Folders the command created for its outputs
    are removed again if it fails before writing into them."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import warnings

        from .errors import ErasekitError, ErasekitWarning
        from .io import new_folders_removed_on_failure, out_of_space

        _quiet_libraries()
        show = warnings.showwarning

        def one_line(message, category, *rest, **kw):
            if issubclass(category, ErasekitWarning):
                typer.echo(f"warning: {message}", err=True)
            else:
                show(message, category, *rest, **kw)

        warnings.showwarning = one_line
        outputs = [kwargs.get(name) for name in OUTPUT_OPTIONS]
        try:
            with new_folders_removed_on_failure(*outputs):
                return command(*args, **kwargs)
        except ErasekitError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:
            if not out_of_space(e):
                raise
            typer.echo(f"error: no space left on the device of {e.filename or 'an output'}: free some and run again", err=True)
            raise typer.Exit(2) from None
        finally:
            warnings.showwarning = show

    return wrapper


def _read_prompts(prompt: list[str] | None, prompt_file: Path | None) -> list[str]:
    from .errors import ErasekitError
    from .io import read_utf8

    prompts = list(prompt or [])
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise ErasekitError(f"prompt file not found: {prompt_file}")
        prompts += [line.strip() for line in read_utf8(prompt_file).splitlines() if line.strip()]
    if not prompts:
        raise ErasekitError("no prompts: give --prompt TEXT (repeatable) or --prompt-file FILE with one prompt per line")
    return prompts


@app.command()
@friendly_errors
def generate(
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="A prompt; repeat for several."),
    prompt_file: Optional[Path] = typer.Option(None, help="A text file with one prompt per line."),
    model: str = typer.Option("builtin", help=MODEL_HELP),
    negative_prompt: Optional[str] = typer.Option(None, help="What to steer away from (classifier-free guidance)."),
    n: int = typer.Option(4, "--n", help="Images per prompt; image j uses seed SEED + j."),
    seed: int = typer.Option(0, help="First seed: the same seed and prompt give the same image."),
    steps: int = typer.Option(35, help=STEPS_HELP),
    guidance: Optional[float] = guidance_option(),
    batch_size: int = batch_size_option(),
    method: Optional[str] = typer.Option(None, help="Inference-time erasure of --concept: neg-prompt or sld."),
    concept: Optional[str] = typer.Option(None, help="The concept an inference-time --method steers away from."),
    preset: Optional[str] = typer.Option(None, help="The --method's named settings, e.g. sld's weak, medium (default), strong or max (the SLD paper's)."),
    out: Path = typer.Option(Path("out"), help="Folder for the PNGs and grid.png."),
    erasure: Optional[Path] = typer.Option(None, help="An erasure file (from `erasekit erase`) applied to the model first."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    config: Optional[str] = config_option(),
):
    """Generate images and a grid (one row per prompt).

    Example: erasekit generate -p "a red circle" -p "a blue striped star" --n 8 --out samples
    An erased model: erasekit generate -p "a red circle" --erasure red.safetensors --out erased-samples
    With inference-time erasure: erasekit generate -p "a red circle" --method sld --preset max --concept red
    """
    from .api import check_generation
    from .api import generate as generate_images
    from .errors import ErasekitError
    from .images import ensure_writable_dir, image_names, make_grid, save_images
    from .methods import get_method
    from .model import load_pipeline
    from .erasure_file import load_erasure

    prompts = _read_prompts(prompt, prompt_file)
    if len(set(prompts)) < len(prompts):
        typer.echo(f"note: {len(prompts) - len(set(prompts))} repeated prompt(s) generated once (the same prompt and seed give the same image)", err=True)
        prompts = list(dict.fromkeys(prompts))
    if (method is None) != (concept is None or not concept.strip()):
        raise ErasekitError("--method and --concept go together: erasekit generate --method sld --concept red ...")
    steering = _erasure_or_method(erasure, method, preset)
    guidance = _guidance(guidance, model, config)
    check_generation(n, steps, guidance, batch_size)
    _check_limits(model, config, steps, 2 * len(prompts) * n, f"{len(prompts)} prompt(s) x --n {n}")
    device, dtype = _precision(device, dtype)
    names = image_names(prompts, range(seed, seed + n)) + ["grid.png"]
    check_paths({"--model": _model_path(model), "--config": _local(config), "--erasure": erasure, "--prompt-file": prompt_file},
                [("--out", out / name) for name in names], into={"--out": out})
    pipe = load_pipeline(model, device, dtype, config)
    if erasure is not None:
        load_erasure(pipe, erasure)
    if method is not None:
        pipe = get_method(method).steer(pipe, concept.strip(), steering)
    ensure_writable_dir(out)
    images = generate_images(pipe, prompts, n=n, seed=seed, steps=steps, guidance=guidance, negative_prompt=negative_prompt, batch_size=batch_size)
    named = dict(zip(names, images))
    named["grid.png"] = make_grid(images, columns=n, row_labels=prompts, scale=max(1, 128 // images[0].size[0]))
    save_images(named, out)
    typer.echo(f"wrote {len(images)} image{'s' if len(images) != 1 else ''} and grid.png to {out}")


@app.command()
@friendly_errors
def erase(
    concept: Optional[List[str]] = typer.Option(None, "--concept", "-c", help="Concept to erase; repeat to erase several (each gets its share of the teacher bank; a bank smaller than their number grows to one trajectory each, with a warning)."),
    concepts_file: Optional[Path] = typer.Option(None, help="Concepts to erase, one per line ('circle', or 'circle -> square' with its own replacement; # starts a comment), with or instead of --concept."),
    model: str = typer.Option("builtin", help=MODEL_HELP),
    method: str = typer.Option("abo", help="abo (All but One), esd-x, esd-u, esd-all, esd-x-strict, uce, rece (UCE hardened in closed-form rounds), sdd, ablating or fmn."),
    replacement: Optional[str] = typer.Option(None, help="abo, uce, rece, ablating: what the concept becomes instead (e.g. --concept circle --replacement square)."),
    preset: Optional[str] = typer.Option(None, help="Named settings, e.g. 'paper' (the paper's optimiser, lr and steps, meant for Stable Diffusion)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: the method's)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the method's)."),
    sample_from: Optional[str] = typer.Option(None, help="ESD: draw x_t from the 'frozen' model (fast, default) or the 'student' (the paper's loop)."),
    setting: Optional[List[str]] = typer.Option(None, "--set", help="Any other method setting as key=value, e.g. --set lam=5 --set delta=implicit."),
    seed: int = typer.Option(0, help="Seed: the same seed and settings give the same weights."),
    out: Path = typer.Option(Path("erased.safetensors"), help="Erasure file: the changed parameters plus metadata (safetensors)."),
    save_pipeline: Optional[Path] = typer.Option(None, help="Also write the whole erased pipeline as a diffusers folder."),
    save_checkpoint: Optional[Path] = typer.Option(None, help="Also write the erased model as one .safetensors checkpoint in its original layout (A1111, ComfyUI): "
                                                  "the whole Stable Diffusion or SD3 model; FLUX's transformer alone, as FLUX.1 ships."),
    save_lora: Optional[Path] = typer.Option(None, help="Also write the change as a LoRA (truncated SVD of each weight's delta): pipe.load_lora_weights(FILE) loads it."),
    lora_rank: Optional[int] = typer.Option(None, help="The LoRA's rank (default: the smallest that keeps every layer's change within 1%, at most 128; "
                                            "lower is smaller and coarser, and the output says how close it is)."),
    lora_format: Optional[str] = typer.Option(None, help="kohya (lora_unet_* keys: A1111, ComfyUI and diffusers' load_lora_weights read them; "
                                              "the default for SD and SDXL) or peft (diffusers' own keys: ComfyUI ignores them for SD and SDXL "
                                              "and reads them for SD3, where they are the default)."),
    checkpoint_every: int = typer.Option(50, help="Checkpoint every N steps into OUT.ckpt/ (removed when done)."),
    resume: bool = typer.Option(False, help="Continue from OUT.ckpt/ exactly where an interrupted run stopped."),
    report: Optional[Path] = typer.Option(None, help="Write a before/after report (grid.png, report.md, metrics.json) to this folder."),
    report_seeds: int = typer.Option(4, help="Seeds per prompt in the report."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    save_dtype: str = typer.Option("base", help="What OUT stores the changed weights in: base (the model's dtype), fp32 (the trained masters, exact), fp16 or bf16."),
    gradient_checkpointing: bool = typer.Option(False, help="Recompute activations in the backward pass: less GPU memory on a real model, more time."),
    strict: bool = typer.Option(False, help="Refuse a concept with a word the tokenizer does not know as a word (default: a warning naming its pieces)."),
    config: Optional[str] = config_option(),
):
    """Erase a concept from a model's weights and save the change.

    Example: erasekit erase --concept circle --replacement square --report report/
    Many at once: erasekit erase --concepts-file concepts.txt (a line each: "circle -> square", "red")
    Train each concept as long as it needs (abo, esd-x, esd-u): --set check_every=50 --set steps=600 stops once the erasing loss on held-out trajectories falls by less than 5% (min_gain) between checks.
    Many concepts share the method's steps: n times the steps (--set steps=...) and, for abo, what to keep (--set preserve=square,triangle) erase each as well as alone (docs/results.md, "Many concepts at once").
    Train the text encoders as AdvUnlearn does (esd-*, abo; SD 1.x/2.x, SDXL): --set parameters=text-encoder, or attn2+text-encoder with the cross-attention; the file, LoRA and single file carry them.
    On a GPU: erasekit erase --model CompVis/stable-diffusion-v1-4 --concept "Van Gogh" --method esd-x --dtype bf16
    """
    from .erase import erase as erase_concepts
    from .errors import ErasekitError
    from .evaluation.report import REPORT_FILES, REPORT_SUITES
    from .images import ensure_writable_dir
    from .methods import get_method
    from .methods.base import parse_settings
    from .paths import checkpoint_folder
    from .precision import DTYPES

    # Every check before anything loads or is written.
    concept, replacement = _concepts(concept or [], concepts_file, replacement)
    settings = parse_settings(setting)
    settings.update({k: v for k, v in {"steps": steps, "lr": lr, "sample_from": sample_from}.items() if v is not None})
    get_method(method).check_erasable()
    get_method(method).check_replacement(get_method(method).make_config(preset, **settings), replacement)
    device, dtype = _precision(device, dtype)
    if save_dtype != "base" and save_dtype not in DTYPES:
        raise ErasekitError(f"unknown --save-dtype '{save_dtype}': use base, {', '.join(DTYPES)}")
    if checkpoint_every < 1:
        raise ErasekitError(f"--checkpoint-every must be a positive number of steps, got {checkpoint_every}")
    if report_seeds < 1:
        raise ErasekitError(f"--report-seeds must be at least 1, got {report_seeds}")
    if lora_rank is not None and lora_rank < 1:
        raise ErasekitError(f"--lora-rank must be at least 1, got {lora_rank}")
    from .lora import FORMATS

    if lora_format is not None and lora_format not in FORMATS:
        raise ErasekitError(f"unknown --lora-format '{lora_format}': use {' or '.join(FORMATS)}")
    checkpoint, keeps = checkpoint_folder(out), "--out's checkpoint folder"
    check_paths({"--model": _model_path(model), "--config": _local(config), "--concepts-file": concepts_file},
                [("--out", out), ("--save-lora", save_lora), ("--save-checkpoint", save_checkpoint),
                 *[("--report", report / name) for name in (REPORT_FILES if report is not None else ())]],
                {keeps: checkpoint, "--save-pipeline": save_pipeline},
                marks={keeps: ("state.pt",), "--save-pipeline": ("model_index.json",)}, into={"--report": report})
    if report is not None:
        from .tasks import load_task

        # the report measures shapes-world concepts: others are refused before training
        suites = load_task("shapes", concept[0].strip()).select(REPORT_SUITES)
        _check_limits(model, config, 1, 2 * report_seeds * sum(map(len, suites.values())), f"--report-seeds {report_seeds}")
    for folder in [out.parent, report, *(p.parent for p in (save_lora, save_checkpoint, save_pipeline) if p)]:
        if folder is not None:
            ensure_writable_dir(folder)
    stopped_by = []
    try:
        with _terminate_as_interrupt(stopped_by):
            erasure = erase_concepts(
                model, method=method, concepts=concept, replacement=replacement, preset=preset, seed=seed, out=out,
                checkpoint_dir=checkpoint, checkpoint_every=checkpoint_every, resume=resume, keep_checkpoint=False,
                device=device, dtype=dtype, model_config=config, gradient_checkpointing=gradient_checkpointing, strict=strict,
                save_dtype=None if save_dtype == "base" else save_dtype, **settings,
            )
    except KeyboardInterrupt:
        _say_where_to_resume(checkpoint)
        raise typer.Exit(128 + (stopped_by[0] if stopped_by else signal.SIGINT)) from None
    meta = erasure.metadata
    typer.echo(f"wrote {out} ({len(erasure.names)} changed tensors, trained in {meta['base_dtype']} on {meta['device']}, final loss {meta['final_loss']})")
    if meta.get("steps_trained", meta["hyperparameters"]["steps"]) < meta["hyperparameters"]["steps"]:
        typer.echo(f"stopped early after {meta['steps_trained']} of {meta['hyperparameters']['steps']} steps: the held-out erasing loss fell by less than min_gain")
    if save_lora is not None:
        from .families import family_of
        from .lora import TOLERANCE

        lora_format = lora_format or family_of(erasure.pipe).lora_format
        lora = erasure.save_lora(save_lora, lora_rank, lora_format)
        worst = max(lora.error.values(), default=0.0)
        if lora_rank is None:
            why = f", the smallest within {TOLERANCE:.0%} on every layer" if worst <= TOLERANCE else f", the cap: some layer stays above {TOLERANCE:.0%}"
        else:
            why = f", the most any changed weight has; --lora-rank {lora_rank} asked" if lora.rank < lora_rank else ""
        typer.echo(f"wrote {save_lora} ({lora_format} LoRA of rank {lora.rank}{why} over {len(lora.up)} layers; "
                   f"largest relative error of a weight's change {worst:.3f})")
        if lora.dropped:
            typer.echo(f"warning: a LoRA holds weight matrices only; {len(lora.dropped)} changed bias or norm tensor(s) left out, "
                       f"e.g. {lora.dropped[0]} (the erasure file keeps them)", err=True)
    if save_pipeline is not None:
        erasure.save_pipeline(save_pipeline)
        typer.echo(f"wrote the erased pipeline to {save_pipeline}")
    if save_checkpoint is not None:
        count = erasure.save_checkpoint(save_checkpoint)
        typer.echo(f"wrote {save_checkpoint} ({count} tensors in the original single-file layout)")
    if report is not None:
        from .evaluation.report import erasure_report

        from .methods.base import replacements_for

        path, evaluation = erasure_report(model, out, concept[0], report, seeds=report_seeds, replacement=replacements_for(concept, replacement)[concept[0]],
                                          device=device, dtype=dtype, model_config=config)
        target, related = evaluation.suites["target"], evaluation.suites["related"]
        typer.echo(f"wrote {path}")
        typer.echo(f"'{concept[0]}' detected: {100 * target.detected_base:.0f}% before, {100 * target.detected:.0f}% after; "
                   f"SSIM to base on related prompts {related.ssim:.3f}")
        described = evaluation.suites["described"]
        typer.echo("prompts naming shape, colour and texture: the same as the base image "
                   + ", ".join(f"{a} {100 * v:.1f}%" for a, v in described.kept.items()))


def _concepts(given: list[str], concepts_file: Optional[Path], replacement: Optional[str]):
    """The concepts of --concept and --concepts-file, and the replacement: --replacement for all, or
    one per concept where the file names some ('circle -> square'; --replacement then fills the rest)."""
    from .errors import ErasekitError
    from .io import read_utf8

    concepts, own = list(given), {}
    if concepts_file is not None:
        if not concepts_file.is_file():
            raise ErasekitError(f"concepts file not found: {concepts_file}")
        for number, line in enumerate(read_utf8(concepts_file).splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, arrow, new = (part.strip() for part in line.partition("->"))
            if not name or (arrow and not new):
                raise ErasekitError(f"{concepts_file}, line {number}: write a concept, or 'concept -> replacement'")
            concepts.append(name)
            if arrow:
                own[name] = new
    if not concepts:
        raise ErasekitError("no concept to erase: --concept NAME (repeatable) or --concepts-file FILE")
    if len({c.strip() for c in concepts}) < len(concepts):
        raise ErasekitError(f"'{next(c for c in concepts if concepts.count(c) > 1)}' is named twice among the concepts")
    if not own:
        return concepts, replacement
    return concepts, {c: own.get(c, replacement) for c in concepts if own.get(c, replacement) is not None}


@contextmanager
def _terminate_as_interrupt(stopped_by: list):
    """SIGTERM (what a job scheduler or `kill` sends) stops erase as Ctrl-C does, so it too says where to
    resume; the signal's number goes into `stopped_by`, for the exit status (128 + it, as a shell reports)."""
    def stop(signum, frame):
        stopped_by.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say_where_to_resume(checkpoint: Path) -> None:
    """After Ctrl-C (or SIGTERM) in erase: where the checkpoint is and how to go on from it."""
    from .errors import ErasekitError
    from .train import checkpoint_step

    try:
        step = checkpoint_step(checkpoint, sys.maxsize)
    except ErasekitError:
        typer.echo("interrupted before the first checkpoint: nothing to resume; run the command again", err=True)
        return
    typer.echo(f"interrupted: {checkpoint} holds the training at step {step}; run the same command with --resume to go on from there", err=True)


def _parse_seeds(text: str) -> range | list[int]:
    """'0,1,2' or '0-3' (inclusive) -> the seeds; a range stays a range, so a huge one costs no memory
    until the count is checked (check_limits)."""
    from .errors import ErasekitError

    try:
        if "-" in text.strip("-"):
            lo, hi = text.split("-")
            seeds = range(int(lo), int(hi) + 1)
        else:
            seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ErasekitError(f"--seeds takes '0,1,2' or '0-3', got '{text}'") from None
    if not seeds:
        raise ErasekitError(f"--seeds names no seed: '{text}'")
    return seeds


def _sampling(seeds: str, steps: int, guidance: float, batch_size: int):
    """The --seeds, --steps, --guidance and --batch-size of a measuring command, as the one object its API takes; checked."""
    from .api import Sampling

    return Sampling(_parse_seeds(seeds), steps, guidance, batch_size).check()


@app.command()
@friendly_errors
def evaluate(
    concept: Optional[List[str]] = typer.Option(None, "--concept", "-c", help="The erased concept (what the detector looks for); repeat for several. "
                                                "Default: every concept the --erasure file erased (shapes task), or the task's own."),
    task: str = task_option(),
    model: str = typer.Option("builtin", help=MODEL_HELP),
    erasure: Optional[Path] = typer.Option(None, help="Erasure file (from `erasekit erase`) applied to the model."),
    method: Optional[str] = typer.Option(None, help="Or an inference-time method instead of a file: neg-prompt or sld."),
    preset: Optional[str] = typer.Option(None, help="The --method's named settings, e.g. sld's weak, medium (default), strong or max."),
    prompts: Optional[str] = typer.Option(None, help="The task's suites to measure (default target,related,unrelated; shapes also has described), or a CSV file (I2P or COCO columns)."),
    detector: Optional[str] = typer.Option(None, help="Instead of the task's detector: shapes, nudenet, imagenet or clip."),
    threshold: Optional[float] = typer.Option(None, help="nudenet: score at which an EXPOSED class counts (default 0.6)."),
    seeds: str = typer.Option("0,1", help="Seeds for prompts without their own, e.g. 0,1,2 or 0-7."),
    steps: int = typer.Option(35, help=STEPS_HELP),
    guidance: Optional[float] = guidance_option("Guidance scale (default: the model family's, 7.5; FLUX's distilled guidance, 3.5); CSV rows may set their own."),
    reference: str = typer.Option("auto", help="FID/KID reference: auto (the task's: rendered ground truth in the shapes world, else its folder or the base model's images), none, or a folder of images."),
    features: Optional[str] = typer.Option(None, help="FID/KID features: shapes (the shapes classifier) or inception; default the task's."),
    clip: Optional[str] = typer.Option(None, help="CLIP model (folder or hub id): CLIP score on real models, and the style and person tasks' detector."),
    batch_size: int = batch_size_option(),
    out: Path = typer.Option(Path("evaluation"), help="Folder for report.md, metrics.json and grid.png (with several concepts, a folder each: OUT/CONCEPT/)."),
    as_json: bool = typer.Option(False, "--json", help="Also print the metrics as JSON on stdout (with several concepts, one object per concept)."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    config: Optional[str] = config_option(),
):
    """Measure an erasure: base vs erased model, same prompts and seeds.

    Reports the detector's rate on each prompt suite, same-seed SSIM, prompt alignment (shapes
    world) or CLIP score, FID/KID, and timings. Shard generation over processes with
    `accelerate launch --multi_gpu --num_processes N -m erasekit evaluate ...` (works on CPU too).

    Example: erasekit evaluate --concept red --erasure red.safetensors --out eval-red/
    On Stable Diffusion: erasekit evaluate --model sd14/ --task nudity --prompts i2p.csv --erasure nudity.safetensors
    """
    from .evaluation.evaluate import end_processes, processes
    from .evaluation.evaluate import evaluate as run_evaluation
    from .evaluation.metrics import feature_extractor
    from .evaluation.report import REPORT_FILES, write_evaluation
    from .images import ensure_writable_dir, read_image_folder
    from .methods import get_method
    from .model import load_pipeline
    from .erasure_file import load_erasure

    steering = _erasure_or_method(erasure, method, preset, required=True)
    measures = _measured(task, concept, erasure, clip, detector, threshold)  # a concept the detector cannot look for is refused here
    folders = _folders(measures, out)
    suites = {m.concept: m.select(prompts) for m, _ in measures}
    sampling = _sampling(seeds, steps, _guidance(guidance, model, config), batch_size)
    images = 2 * sum(1 if p.seed is not None else len(sampling.seeds) for s in suites.values() for suite in s.values() for p in suite)  # base and erased
    _check_limits(model, config, steps, images, f"--seeds {seeds} over {sum(len(suite) for s in suites.values() for suite in s.values())} prompts")
    device, dtype = _precision(device, dtype)
    check_paths({"--model": _model_path(model), "--config": _local(config), "--erasure": erasure, "--prompts": _local(prompts),
                 "--reference": _local(reference), "--clip": _local(clip), "--task": _local(task)},
                [("--out", folder / name) for folder in folders.values() for name in REPORT_FILES], into={"--out": out})
    ref = None if reference == "none" else ("auto" if reference == "auto" else read_image_folder(Path(reference)))

    processes()  # before any model loads: each process of a multi-GPU launch on its own GPU
    base = load_pipeline(model, device, dtype, config)
    if erasure is not None:
        erased = load_pipeline(model, device, dtype, config)
        metadata = load_erasure(erased, erasure)
    else:  # an inference-time method steers away from every concept at once
        names = [m.concept for m, _ in measures]
        erased = get_method(method).steer(base, ", ".join(names), steering)
        metadata = {"method": method, "concepts": names, "preset": preset, "hyperparameters": dataclasses.asdict(steering)}
    results = {}
    for measured, found in measures:
        name = measured.concept
        extractor = feature_extractor(features or measured.features) if ref is not None else None
        ensure_writable_dir(folders[name])
        try:
            result = run_evaluation(base, erased, measured, suites[name], found, sampling, reference=ref, features=extractor, clip_model=clip)
        finally:
            end_processes()
        if result is None:  # not rank 0 of a multi-process run
            continue
        result.settings["model"] = model
        results[name] = result
        typer.echo(f"wrote {write_evaluation(folders[name], result, metadata)}", err=as_json)
        for suite, r in result.suites.items():
            typer.echo(f"{suite}: '{name}' detected {100 * r.detected_base:.1f}% -> {100 * r.detected:.1f}%, SSIM {r.ssim:.3f}", err=as_json)
    if as_json and results:
        shown = next(iter(results.values())).as_dict() if len(results) == 1 else {c: r.as_dict() for c, r in results.items()}
        typer.echo(json.dumps(shown, indent=2))


@app.command()
@friendly_errors
def bench(
    methods: str = typer.Option("esd-x,esd-u,abo", help="Comma-separated methods: trained ones, uce, and the inference-time neg-prompt and sld."),
    concepts: Optional[str] = typer.Option(None, help="Comma-separated concepts the --task knows (default: circle,striped in the shapes world, else the task's own)."),
    task: str = task_option(),
    model: str = typer.Option("builtin", help=MODEL_HELP),
    seeds: str = typer.Option("0,1", help="Evaluation seeds, e.g. 0,1 or 0-3."),
    steps: int = typer.Option(35, help=STEPS_HELP),
    guidance: Optional[float] = guidance_option(),
    batch_size: int = batch_size_option(),
    prompts: Optional[str] = typer.Option(None, help="The task's prompt suites evaluated for every cell (default: its target, related and unrelated), or a CSV file."),
    clip: Optional[str] = typer.Option(None, help="CLIP model (folder or hub id): the style and person tasks' detector."),
    setting: Optional[List[str]] = typer.Option(None, "--set", help="Method settings: key=value for every listed method that has the setting, or method.key=value for one (--set abo.steps=50 --set sld.preset=max)."),
    attacks: str = typer.Option("", help="Comma-separated attacks (paraphrase, inversion, unlearndiffatk, ring-a-bell) run against every cell and the unerased model: one ASR column each."),
    attack_restarts: int = typer.Option(1, help="Runs of each optimising attack with its own seeds 0..N-1, a prompt counted as brought back when any run brings it back: one run is one draw of the attack."),
    out: Path = typer.Option(Path("bench"), help="Folder for bench.md, bench.html, scatter.png, grids and the per-cell cache (cells/)."),
    device: str = device_option(),
    dtype: str = dtype_option(),
):
    """Erase and evaluate every method on every concept; write a Table-1-style report.

    Finished cells are cached under OUT/cells/ by a hash of their settings: re-running only
    computes what changed. Spread whole cells over GPUs (or CPU processes) with
    `accelerate launch --multi_gpu --num_processes N -m erasekit bench ...`.

    Example: erasekit bench --methods esd-x,esd-u,abo --concepts circle,striped
    With attacks: erasekit bench --methods esd-x,abo --concepts square --prompts target --attacks paraphrase,inversion
    On Stable Diffusion: erasekit bench --model sd14/ --task nudity --methods esd-u,uce --attacks paraphrase
    """
    from .errors import ErasekitError
    from .evaluation.bench import BENCH_FILES, BenchSettings, check_bench, route_settings
    from .evaluation.bench import bench as run_bench
    from .evaluation.evaluate import end_processes
    from .images import ensure_writable_dir
    from .methods.base import parse_settings
    from .tasks import load_task

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    per_method = route_settings(method_list, parse_settings(setting))
    if concepts is None:
        concepts = "circle,striped" if task == "shapes" else load_task(task).concept
    concept_list = [c.strip() for c in concepts.split(",") if c.strip()]
    attack_list = tuple(a.strip() for a in attacks.split(",") if a.strip())
    sampling = _sampling(seeds, steps, _guidance(guidance, model, None), batch_size)
    if not concept_list:
        raise ErasekitError("--concepts names no concept")
    suites = load_task(task, concept_list[0]).select(prompts)
    _check_limits(model, None, steps, 2 * len(sampling.seeds) * sum(map(len, suites.values())), f"--seeds {seeds} over the prompts of a cell")
    settings = BenchSettings(model=model, sampling=sampling, prompts=prompts, task=task, clip=clip, device=device, dtype=dtype, attack_restarts=attack_restarts)
    check_bench(method_list, concept_list, settings, per_method, attack_list)
    check_paths({"--model": _model_path(model), "--task": _local(task), "--prompts": _local(prompts), "--clip": _local(clip)},
                [("--out", out / name) for name in BENCH_FILES], into={"--out": out})
    ensure_writable_dir(out)
    try:
        rows = run_bench(out, method_list, concept_list, settings, per_method, attacks=attack_list)
    finally:
        end_processes()
    if rows is not None:  # None: not rank 0 of a multi-process run
        typer.echo(f"wrote {out / 'bench.md'} and {out / 'bench.html'} ({len(rows)} cells)")


@app.command()
@friendly_errors
def attack(
    concept: Optional[List[str]] = typer.Option(None, "--concept", "-c", help="The erased concept the attack tries to bring back; repeat for several. "
                                                "Default: every concept the --erasure file erased (shapes task), or the task's own."),
    task: str = task_option(),
    attack_name: str = typer.Option("paraphrase", "--attack", help=(
        "paraphrase: the concept's synonyms in its place. inversion: a new token learned against the erased model "
        "(Pham et al. 2024). unlearndiffatk: prefix words chosen by the erased model's own denoising loss (Zhang et al. 2024). "
        "ring-a-bell: prompts found from the text encoder alone (Tsai et al. 2024).")),
    erasure: Optional[Path] = typer.Option(None, help="The erasure file to attack; without it and --method, the base model (the sanity check: an attack must reach the concept there)."),
    method: Optional[str] = typer.Option(None, help="Or attack an inference-time method steering the base model: neg-prompt or sld (the token attacks optimise on its UNet, which is the base's)."),
    preset: Optional[str] = typer.Option(None, help="The --method's named settings, e.g. sld's weak, medium (default), strong or max."),
    model: str = typer.Option("builtin", help=MODEL_HELP),
    attack_steps: Optional[int] = typer.Option(None, help="The attack's budget: optimisation steps (inversion 300, unlearndiffatk 40, ring-a-bell 100 generations by default); paraphrase takes none."),
    restarts: int = typer.Option(1, help="Runs of the attack with its own seeds 0..N-1, a prompt counted as brought back when any run brings it back: one run is one draw of an optimising attack (docs/results.md, \"Concept inversion's own seed\")."),
    images: Optional[Path] = typer.Option(None, help="inversion, unlearndiffatk: a folder of images of the concept to learn from (default: the base model's own)."),
    paraphrases: Optional[Path] = typer.Option(None, help="paraphrase: a UTF-8 file of words or phrases, one per line, put where the prompts name the concept (nudity's: 'nude'; default: the task's, e.g. the shapes world's synonyms)."),
    prompts: Optional[str] = typer.Option(None, help="The target prompts to attack: a CSV file (I2P or COCO columns; each text once, on --seeds) instead of the task's target suite."),
    detector: Optional[str] = typer.Option(None, help="Instead of the task's detector: shapes, nudenet, imagenet or clip."),
    threshold: Optional[float] = typer.Option(None, help="nudenet: score at which an EXPOSED class counts (default 0.6)."),
    clip: Optional[str] = typer.Option(None, help="CLIP model (folder or hub id): the style and person tasks' detector."),
    seeds: str = typer.Option("0-3", help="Seeds per target prompt, e.g. 0,1,2 or 0-3."),
    steps: int = typer.Option(35, help=STEPS_HELP),
    guidance: Optional[float] = guidance_option(),
    batch_size: int = batch_size_option(),
    out: Path = typer.Option(Path("attack"), help="Folder for attack.json (ASR, budget, and the prompts that succeeded, to replay), learned_embeds.safetensors (inversion) and successes.png "
                             "(with several concepts, a folder each: OUT/CONCEPT/)."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    config: Optional[str] = config_option(),
):
    """Attack an erasure: how often does the concept come back? Reports ASR before and after.

    ASR is the share of target prompts x seeds whose image shows the concept; "after" counts a prompt
    that succeeded as written or under the attack (as UnlearnDiffAtk's leaderboard does). Run it once
    without --erasure first: an attack that cannot reach the concept on the base model proves nothing.

    Example: erasekit attack --erasure square.safetensors --concept square --attack inversion
    On Stable Diffusion: erasekit attack --model sd14/ --task nudity --erasure nudity.safetensors --attack unlearndiffatk
    """
    from .attacks import ATTACK_FILES, check_attack, run_attack, successes_grid
    from .erasure_file import load_erasure
    from .errors import ErasekitError
    from .images import ensure_writable_dir, read_image_folder
    from .io import atomic_save_image, read_utf8
    from .methods import get_method
    from .model import load_pipeline, sizes_of

    attack_method = check_attack(attack_name, attack_steps, base=True, restarts=restarts)
    steering = _erasure_or_method(erasure, method, preset)
    measures = _measured(task, concept, erasure, clip, detector, threshold)
    folders = _folders(measures, out)
    targets = {m.concept: m.target_texts(prompts) for m, _ in measures}
    sampling = _sampling(seeds, steps, _guidance(guidance, model, config), batch_size)
    # the base model's images, the erased model's and the attacked ones, per target prompt and seed
    n_targets = sum(map(len, targets.values()))
    _check_limits(model, config, steps, 3 * n_targets * len(sampling.seeds), f"--seeds {seeds} over {n_targets} target prompts")
    check_paths({"--model": _model_path(model), "--config": _local(config), "--erasure": erasure, "--images": images, "--paraphrases": paraphrases,
                 "--prompts": _local(prompts), "--clip": _local(clip), "--task": _local(task)},
                [("--out", folder / name) for folder in folders.values() for name in ATTACK_FILES], into={"--out": out})
    words = None  # a --paraphrases file's, in place of the task's
    if paraphrases is not None:
        if attack_name != "paraphrase":
            raise ErasekitError(f"--paraphrases is for the paraphrase attack, not {attack_name}")
        if not paraphrases.is_file():
            raise ErasekitError(f"paraphrases file not found: {paraphrases}")
        words = [line.strip() for line in read_utf8(paraphrases).splitlines() if line.strip()]
    options = {m.concept: m.attack_options(attack_name, words) for m, _ in measures}
    for measured, _ in measures:
        attack_method.check_prompts(targets[measured.concept], measured.concept, **options[measured.concept])
    concept_pictures = None
    if images is not None:
        if not attack_method.needs_base:
            raise ErasekitError(f"--images is for attacks that learn from images (inversion, unlearndiffatk), not {attack_name}")
        concept_pictures = read_image_folder(images)
    device, dtype = _precision(device, dtype)
    base = load_pipeline(model, device, dtype, config)
    pipe = base
    if erasure is not None:
        pipe = load_pipeline(model, device, dtype, config)
        load_erasure(pipe, erasure)
    elif method is not None:  # an inference-time method steers away from every concept at once
        pipe = get_method(method).steer(base, ", ".join(m.concept for m, _ in measures), steering)
    size = sizes_of(base)["image_size"]
    if concept_pictures and any(p.size != (size, size) for p in concept_pictures):
        typer.echo(f"note: images in {images} that are not {size}x{size} are resized to the model's size", err=True)
    attacked = f"erasure {erasure}" if erasure else f"{method} (inference-time)" if method else "the base model"
    for measured, found in measures:
        name, folder = measured.concept, folders[measured.concept]
        result = run_attack(attack_name, pipe, name, targets[name], found, sampling=sampling, base=base, images=concept_pictures,
                            steps=attack_steps, progress=True, restarts=restarts, **options[name])
        ensure_writable_dir(folder)
        written = result.save(folder, {"erasure": str(erasure) if erasure else None, "method": method, "preset": preset, "model": model,
                                       "task": measured.name, "detector": found.name}, pipe=pipe)
        grid = successes_grid(base, pipe, result, sampling)
        if grid is not None:
            atomic_save_image(grid, folder / ATTACK_FILES[2])
            written.append(folder / ATTACK_FILES[2])
        budget = f"{result.budget['steps']} steps, " if result.budget["steps"] else ""
        typer.echo(f"{attack_name} on {attacked}, '{name}': ASR {100 * result.asr_before:.1f}% before, "
                   f"{100 * result.asr_after:.1f}% after ({100 * result.asr_attack_only:.1f}% by the attack's prompts alone; "
                   f"{result.n_prompts} prompts x seeds, {budget}{result.budget['images_generated']} images, {result.seconds:.0f} s)")
        typer.echo(f"wrote {', '.join(str(p) for p in written)} ({len(result.found)} successful attack prompts, to replay)")


@app.command()
@friendly_errors
def purify(
    erasure: Path = typer.Option(..., help="The erasure file (from `erasekit erase`) whose model denoises the image."),
    image: Path = typer.Option(..., help="The image to purify (resized to the model's size if it differs)."),
    model: str = typer.Option("builtin", help=MODEL_HELP),
    prompt: str = typer.Option("", help="Prompt for inversion and denoising: empty is the null prompt (the paper inverts with it or with the concept)."),
    strength: float = typer.Option(1.0, help="Share of the DDIM schedule to invert: 1.0 goes all the way to noise, lower keeps more of the input."),
    steps: int = typer.Option(100, help="DDIM steps of the whole schedule (inversion needs many to give the image back)."),
    concept: Optional[str] = typer.Option(None, "--concept", "-c", help="The concept to look for in the input and the result, with the --task's detector (the shapes classifier by default)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="A task whose detector judges input and result (" + TASK_HELP.split(": ", 1)[1]),
    clip: Optional[str] = typer.Option(None, help="CLIP model (folder or hub id): the style and person tasks' detector."),
    out: Path = typer.Option(Path("purified.png"), help="The purified image; OUT's stem + '-compare.png' shows input, base model's reconstruction, result."),
    device: str = device_option(),
    dtype: str = dtype_option(),
    config: Optional[str] = config_option(),
):
    """Take a concept out of an image: DDIM-invert it with the base model, denoise it with the erased one.

    All but One's "concept purification" (its Fig. 1a). Example:
    erasekit purify --erasure red.safetensors --image red-circle.png --concept red --out purified.png
    """
    from PIL import Image

    from .attacks.purify import purify as run_purify
    from .erasure_file import load_erasure
    from .errors import ErasekitError
    from .evaluation.metrics import ssim
    from .images import ensure_writable_dir, make_grid, open_image
    from .io import atomic_save_image
    from .model import load_pipeline, sizes_of
    from .paths import derived

    _erasure_or_method(erasure, None, None)
    if not 0 < strength <= 1:
        raise ErasekitError(f"--strength must be in (0, 1], got {strength}")
    if steps < 1:
        raise ErasekitError(f"--steps must be at least 1, got {steps}")
    _check_limits(model, config, steps)
    judge = _task(task or "shapes", concept, clip) if concept is not None or task is not None else None
    device, dtype = _precision(device, dtype)
    compare = derived(out.with_suffix(""), suffix="-compare.png")
    check_paths({"--model": _model_path(model), "--config": _local(config), "--erasure": erasure, "--image": image, "--task": _local(task), "--clip": _local(clip)},
                {"--out": out, "--out's comparison": compare})
    picture = open_image(image)
    base = load_pipeline(model, device, dtype, config)
    erased = load_pipeline(model, device, dtype, config)
    load_erasure(erased, erasure)
    size = sizes_of(base)["image_size"]
    if picture.size != (size, size):
        typer.echo(f"note: {image.name} is {picture.size[0]}x{picture.size[1]}; resized to the model's {size}x{size}", err=True)
        picture = picture.resize((size, size), Image.Resampling.LANCZOS)
    ensure_writable_dir(out.parent)
    result = run_purify(base, erased, [picture], prompt=prompt, strength=strength, steps=steps)
    atomic_save_image(result.images[0], out)
    atomic_save_image(make_grid([picture, result.reconstructed[0], result.images[0]], columns=3, scale=max(1, 128 // size),
                                column_labels=["input", "base, reconstructed", "purified"]), compare)
    typer.echo(f"wrote {out} and {compare} (input, base model's reconstruction, purified)")
    typer.echo(f"SSIM to the input: purified {ssim([picture], result.images)[0]:.3f}, base model's reconstruction {ssim([picture], result.reconstructed)[0]:.3f}")
    if judge is not None:
        measured, found = judge
        concept = measured.concept
        flags = found.detect([picture, result.reconstructed[0], result.images[0]], concept).flags
        typer.echo(f"'{concept}' detected: input {'yes' if flags[0] else 'no'}, reconstruction {'yes' if flags[1] else 'no'}, purified {'yes' if flags[2] else 'no'}")


@shapes_app.command("train")
@friendly_errors
def shapes_train(
    out: Path = typer.Option(..., help="Folder for the run: pipeline/, classifier/ (unet), train_config.json, train_log.csv. Re-run to resume."),
    denoiser: str = typer.Option("unet", help="unet: the whole built-in world (classifier, VAE, UNet, text encoder); dit: an SD3 transformer "
                                             "by flow matching on --world's VAE and text encoder."),
    world: Optional[Path] = typer.Option(None, help="dit: the pipeline folder whose VAE and text encoder it reuses (default: the shipped builtin)."),
    seed: int = typer.Option(0, help="Seed for data, initialisation and sampling."),
    steps: int = typer.Option(7200, help="Denoiser training steps (batch 64; on 2 CPU cores about 1.1 s each for the UNet with its text encoder, 0.6 s for the DiT)."),
    cycle: int = typer.Option(2400, help="The cosine learning rate restarts every this many steps (each cycle's end is a finished model)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: 6e-4 unet, 5e-4 dit)."),
    n_images: int = typer.Option(40_000, help="Rendered training images."),
    quick: bool = typer.Option(False, help="A tiny schedule for smoke tests (a minute; the result draws blobs)."),
):
    """Train a shapes-world pipeline from nothing: the UNet world with its classifier and VAE (about 2.5 hours
    on 2 CPU cores), or an SD3 transformer on the UNet world's VAE and text encoder (0.6 s a step)."""
    from .errors import ErasekitError
    from .shapes.train import DIT_LR, TrainConfig, train_all

    check_paths({"--world": world}, [], into={"--out": out})
    if out.is_dir() and any(out.iterdir()) and not (out / "train_config.json").is_file():
        raise ErasekitError(f"--out {out} holds other files and no training run to resume: give a new or empty folder")
    if world is not None and not (world / "vae").is_dir():
        raise ErasekitError(f"--world {world} is not a pipeline folder with a vae/: give the UNet world's pipeline folder")
    lr = lr if lr is not None else DIT_LR if denoiser == "dit" else TrainConfig.denoiser_lr
    cfg = TrainConfig(seed=seed, denoiser=denoiser, denoiser_steps=steps, denoiser_cycle=cycle, denoiser_lr=lr, n_images=n_images)
    if quick:
        cfg = dataclasses.replace(cfg, n_images=512, classifier_steps=20, vae_steps=20, denoiser_steps=10, denoiser_cycle=10, checkpoint_every=5)
    pipeline_dir = train_all(out, cfg, world)
    typer.echo(f"pipeline written to {pipeline_dir}" + (f"; classifier to {out / 'classifier'}" if denoiser == "unet" else ""))


@shapes_app.command("score")
@friendly_errors
def shapes_score(
    model: str = typer.Option("builtin", help=MODEL_HELP),
    classifier: Optional[Path] = typer.Option(None, help="Classifier folder (default: the shipped one)."),
    seeds: int = typer.Option(2, help="Seeds per prompt (108 prompts: every shape x colour x texture)."),
    steps: int = typer.Option(35, help=STEPS_HELP),
    guidance: Optional[float] = guidance_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with per-image predictions) instead of a table."),
):
    """Generate every shape x colour x texture prompt and report how often the classifier agrees with it."""
    from .model import load_pipeline
    from .shapes.classifier import load_classifier
    from .shapes.score import score_model

    pipe = load_pipeline(model)
    detector = load_classifier(classifier)
    guidance = _guidance(guidance, model, None)
    score = score_model(pipe, detector, seeds=seeds, steps=steps, guidance=guidance)
    if as_json:
        json.dump({"model": model, "agreement": score.agreement, "n_images": score.n_images, "per_image": score.per_prompt}, sys.stdout, indent=2)
        typer.echo()
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prompt agreement of {model} ({score.n_images} images, guidance {guidance}, {steps} sampling steps)")
    table.add_column("attribute")
    table.add_column("agreement", justify="right")
    for attribute, value in score.agreement.items():
        table.add_row(attribute, f"{100 * value:.1f}%")
    Console().print(table)


@shapes_app.command("render")
@friendly_errors
def shapes_render(
    n: int = typer.Option(64, help="How many images."),
    seed: int = typer.Option(0, help="Seed of the world."),
    out: Path = typer.Option(Path("shapes-world.png"), help="Grid image to write."),
):
    """Draw a grid of ground-truth images of the shapes world, to see what the model learns from."""
    from PIL import Image

    from .api import check_limits
    from .errors import ErasekitError
    from .images import ensure_writable_dir, make_grid
    from .io import atomic_save_image
    from .shapes.world import render_dataset

    if n < 1:
        raise ErasekitError(f"--n must be at least 1, got {n}")
    check_limits({"image_size": 64}, 1, 2 * n, f"--n {n}")  # the world's images are 64x64; with their grid
    check_paths({}, {"--out": out})
    ensure_writable_dir(out.parent)
    images, _ = render_dataset(n, seed)
    atomic_save_image(make_grid([Image.fromarray(im) for im in images], scale=2), out)
    typer.echo(f"wrote {out}")


def main() -> None:
    app()
