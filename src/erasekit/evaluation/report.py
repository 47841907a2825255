"""The evaluation report: a before/after grid (same seeds) and the numbers, as Markdown and JSON."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from PIL import Image, ImageDraw

from ..images import make_grid
from ..io import atomic_save_image, atomic_write_text


def before_after_grid(base: list[Image.Image], erased: list[Image.Image], prompts: list[str], seeds: int) -> Image.Image:
    """Rows are prompts; the left block is the base model, the right block the erased one, same seeds."""
    scale = max(1, 96 // base[0].size[0])
    left = make_grid(base, columns=seeds, row_labels=prompts, scale=scale)
    right = make_grid(erased, columns=seeds, scale=scale)
    gap, header = 12, 18
    grid = Image.new("RGB", (left.width + gap + right.width, left.height + header), "white")
    grid.paste(left, (0, header))
    grid.paste(right, (left.width + gap, header))
    draw = ImageDraw.Draw(grid)
    label_w = left.width - seeds * base[0].size[0] * scale
    draw.text((label_w + 4, 3), "base model", fill="black")
    draw.text((left.width + gap + 4, 3), "after erasure", fill="black")
    return grid


def sample_rows(jobs: list, rows: int, columns: int) -> tuple[list[int], list[str]]:
    """Indices of up to `columns` images for each of `rows` prompts spread evenly over `jobs`."""
    by_prompt: dict[str, list[int]] = {}
    for i, (text, _, _) in enumerate(jobs):
        by_prompt.setdefault(text, []).append(i)
    texts = list(by_prompt)
    chosen = texts[:: max(1, len(texts) // rows)][:rows]
    columns = min(columns, min(len(by_prompt[t]) for t in chosen))
    return [i for t in chosen for i in by_prompt[t][:columns]], chosen


def evaluation_grid(evaluation, rows_per_suite: int = 4, columns: int = 4) -> Image.Image:
    """A few prompts of every suite, base model left, erased model right, same seeds."""
    base, erased, labels = [], [], []
    per_row = min(columns, min(len(evaluation.jobs[n]) for n in evaluation.jobs))
    for name, jobs in evaluation.jobs.items():
        picked, texts = sample_rows(jobs, rows_per_suite, per_row)
        per_row = min(per_row, len(picked) // len(texts))
        base += [evaluation.images[name]["base"][i] for i in picked]
        erased += [evaluation.images[name]["erased"][i] for i in picked]
        labels += [f"{name}: {t}" for t in texts]
    return before_after_grid(base, erased, labels, per_row)


def markdown_text(value) -> str:
    """Text from outside (a concept, a path, a CSV file's name, an erasure's metadata) made inert in
    Markdown: HTML escaped, and what starts code, links, emphasis or a table cell backslash-escaped."""
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", html.escape(str(value), quote=False)).replace("\n", " ")


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _attributes(values: dict | None) -> str:
    return "—" if not values else ", ".join(f"{a} {_pct(v)}" for a, v in values.items())


def evaluation_markdown(evaluation, metadata: dict | None, grid: str | None = "grid.png") -> str:
    ev, md = evaluation, markdown_text
    concept = md(ev.concept)
    title = f"# Erasure of '{concept}'" + (f" ({md(metadata.get('method'))})" if metadata else "")
    lines = [title, ""]
    if grid:
        lines += [f"![base vs erased, same seeds]({grid})", ""]
    lines += [
        f"| suite | images | '{concept}' detected, base → erased | alignment, base → erased | same as the base image | SSIM (25x25) to base |",
        "|---|---:|---:|---|---|---:|",
    ]
    for name, r in ev.suites.items():
        alignment = f"{_attributes(r.alignment_base)} → {_attributes(r.alignment)}" if r.alignment else (
            f"CLIP {r.clip_base:.2f} → {r.clip:.2f}" if r.clip is not None else "—")
        kept = _attributes(r.kept) if r.kept else "—"
        lines.append(f"| {md(name)} | {r.n_images} | {_pct(r.detected_base)} → **{_pct(r.detected)}** | {alignment} | {kept} | {r.ssim:.3f} |")
        if r.replacement is not None:
            lines.append(f"| {md(name)}: replacement '{md(ev.settings['replacement'])}' shown | | {_pct(r.replacement)} | | | |")
    if ev.distribution:
        d = ev.distribution
        base = d["base"]
        lines += [
            "", f"FID / KID against {d['n_reference']} images ({md(d['reference'])}), features of the shapes classifier unless stated:", "",
            "| model | FID | KID |", "|---|---:|---:|",
        ]
        if base:
            lines.append(f"| base | {base['fid']:.2f} | {base['kid']:.4f} |")
        lines.append(f"| erased | {d['erased']['fid']:.2f} | {d['erased']['kid']:.4f} |")
    t = ev.timing
    lines += [
        "",
        f"Generation: {t['images']} images in {t['generation_s']} s ({t['images_per_s']} images/s, "
        f"{ev.settings['processes']} process(es)); measuring added {100 * t['metrics_overhead']:.1f}%.",
        "",
        f"Settings: {md(json.dumps(ev.settings))}",
        "",
    ]
    if metadata:
        lines += [f"Erasure: {md(json.dumps({k: metadata.get(k) for k in ('method', 'concepts', 'replacement', 'hyperparameters')}))}", ""]
    return "\n".join(lines)


REPORT_FILES = ("grid.png", "metrics.json", "report.md")  # what write_evaluation writes into its folder
REPORT_SUITES = "target,related,described"  # the prompt suites of erase --report


def write_evaluation(out: Path, evaluation, metadata: dict | None = None) -> Path:
    """Write grid.png, metrics.json and report.md to `out`; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_image(evaluation_grid(evaluation), out / "grid.png")
    atomic_write_text(out / "metrics.json", json.dumps({"evaluation": evaluation.as_dict(), "erasure": metadata}, indent=2))
    atomic_write_text(out / "report.md", evaluation_markdown(evaluation, metadata))
    return out / "report.md"


def erasure_report(model, erasure_file: Path, concept: str, out: Path, seeds: int = 4, replacement: str | None = None,
                   device=None, dtype=None, model_config: str | None = None):
    """Base model against the erasure, on the built-in suites of a shapes-world concept (target, related
    and described prompts, `seeds` seeds each): writes report.md, metrics.json and grid.png to `out`.
    Returns (path of report.md, the Evaluation)."""
    from ..api import Sampling
    from ..erasure_file import load_erasure
    from ..model import load_pipeline
    from ..tasks import load_task
    from .evaluate import evaluate

    base = load_pipeline(model, device, dtype, model_config)
    erased = load_pipeline(model, device, dtype, model_config)
    metadata = load_erasure(erased, erasure_file)
    task = load_task("shapes", concept)
    evaluation = evaluate(base, erased, task, task.select(REPORT_SUITES), Sampling(seeds=range(seeds)), replacement=replacement)
    return write_evaluation(out, evaluation, metadata), evaluation
