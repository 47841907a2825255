"""The erasure report: a before/after grid (same seeds) and the numbers, as Markdown and JSON."""

from __future__ import annotations

import json
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


def pick_rows(images: list[Image.Image], prompts: list[str], seeds: int, rows: int) -> tuple[list[Image.Image], list[str]]:
    """`rows` prompts spread evenly over the list, with their images."""
    step = max(1, len(prompts) // rows)
    chosen = list(range(0, len(prompts), step))[:rows]
    return [im for i in chosen for im in images[i * seeds : (i + 1) * seeds]], [prompts[i] for i in chosen]


def write_report(out: Path, report, images: dict, target_prompts: list[str], other_prompts: list[str], seeds: int, metadata: dict) -> Path:
    """Write grid.png, metrics.json and report.md to `out`; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    prompts = []
    for which, texts in ((0, target_prompts), (1, other_prompts)):
        base, names = pick_rows(images["base"][which], texts, seeds, 4)
        erased, _ = pick_rows(images["erased"][which], texts, seeds, 4)
        rows.append((base, erased))
        prompts += names
    grid = before_after_grid(rows[0][0] + rows[1][0], rows[0][1] + rows[1][1], prompts, seeds)
    atomic_save_image(grid, out / "grid.png")
    atomic_write_text(out / "metrics.json", json.dumps({"report": report.as_dict(), "erasure": metadata}, indent=2))

    r = report
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [
        f"# Erasure of '{r.concept}' ({metadata.get('method')})",
        "",
        "![base vs erased, same seeds](grid.png)",
        "",
        "| metric | base model | erased model |",
        "|---|---:|---:|",
        f"| '{r.concept}' detected on prompts naming it ({r.n_target_images} images) | {pct(r.target_rate_base)} | {pct(r.target_rate)} |",
    ]
    if r.replacement_rate is not None:
        lines.append(f"| replacement '{metadata.get('replacement')}' shown on those prompts | | {pct(r.replacement_rate)} |")
    for attribute in r.agreement:
        lines.append(f"| {attribute} agreement on other prompts ({r.n_other_images} images) | {pct(r.agreement_base[attribute])} | {pct(r.agreement[attribute])} |")
    lines += [
        f"| SSIM (25x25) to base, other prompts | 1.000 | {r.ssim_other:.3f} |",
        f"| SSIM (25x25) to base, target prompts | 1.000 | {r.ssim_target:.3f} |",
        "",
        f"Settings: {json.dumps(metadata.get('hyperparameters'))}",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"
