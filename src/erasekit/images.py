"""Image grids and writing images to a folder, atomically."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from .errors import ErasekitError
from .io import atomic_save_image


def make_grid(images: list[Image.Image], columns: int | None = None, row_labels: list[str] | None = None, scale: int = 1,
              column_labels: list[str] | None = None) -> Image.Image:
    """Tile images in rows of `columns`, optionally upscaled, with a text label left of each row and above each column."""
    if not images:
        raise ValueError("no images to tile")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size[0] * scale, images[0].size[1] * scale
    label_w = 8 + 6 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    top = 16 if column_labels else 0
    grid = Image.new("RGB", (label_w + columns * w, top + rows * h), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(im.resize((w, h), Image.Resampling.NEAREST), (label_w + c * w, top + r * h))
    for r, text in enumerate(row_labels or []):
        draw.text((4, top + r * h + h // 2 - 5), text, fill="black")
    for c, text in enumerate(column_labels or []):
        draw.text((label_w + c * w + 4, 3), text, fill="black")
    return grid


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "empty"


def ensure_writable_dir(out: Path | str) -> Path:
    """Create `out` if needed and prove it is writable, before any expensive work starts."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ErasekitError(f"cannot write to output folder {out}: {e.strerror or e}") from None
    return out


def save_images(images: dict[str, Image.Image], out: Path) -> list[Path]:
    """Write `images` ({file name: image}) into `out` all or none: into a hidden temporary folder
    inside it first, then renamed into place, so a full disk leaves no partial set behind."""
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".images-", suffix=".tmp"))
    try:
        for name, image in images.items():
            atomic_save_image(image, staging / name)
        for name in images:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in images]
