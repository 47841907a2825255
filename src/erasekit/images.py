"""Image grids and writing images to a folder, atomically."""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, UnidentifiedImageError

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


def image_names(prompts: list[str], seeds: list[int]) -> list[str]:
    """One PNG name per (prompt, seed), prompt by prompt, distinct for distinct prompts: the prompt's
    slug and the seed, with a short hash of the prompt where two prompts share a slug ("a red
    circle" and "A RED CIRCLE!", or two emoji, which have none)."""
    slugs = {p: slug(p) for p in dict.fromkeys(prompts)}
    shared = Counter(slugs.values())

    def stem(p: str) -> str:
        return slugs[p] if shared[slugs[p]] == 1 else f"{slugs[p]}-{hashlib.sha256(p.encode()).hexdigest()[:8]}"

    return [f"{stem(p)}_{s}.png" for p in prompts for s in seeds]


# Pixels an input image may have: 8192 x 8192, far above any model's size, so a small file that
# declares a huge image (a decompression bomb) is refused from its header, before it is decoded.
MAX_PIXELS = 8192 * 8192
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _opened(path: Path) -> Image.Image:
    """The image at `path` opened (its header read, nothing decoded), refused in one line if
    unreadable or larger than MAX_PIXELS."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise ErasekitError(f"{path} declares an image of more than {MAX_PIXELS:,} pixels: refused before decoding") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ErasekitError(f"cannot read {path} as an image ({type(e).__name__})") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ErasekitError(f"{path} is {width}x{height}, more than {MAX_PIXELS:,} pixels: refused before decoding; give a smaller image")
    return image


def _pixels(path: Path) -> int:
    with _opened(path) as image:
        return image.size[0] * image.size[1]


def open_image(path: Path | str) -> Image.Image:
    """An input image as RGB, refused in one line if missing, unreadable or too large (checked from its header)."""
    path = Path(path)
    if not path.is_file():
        raise ErasekitError(f"image not found: {path}")
    try:
        with _opened(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # a header that reads, over broken data
        raise ErasekitError(f"cannot read {path} as an image ({type(e).__name__})") from None


def read_image_folder(folder: Path | str) -> list[Image.Image]:
    """Every image (.png, .jpg, .webp) in `folder`, as RGB; every header is checked first, and a
    folder whose images would not fit in the memory free now is refused before any is decoded."""
    from .api import available_memory

    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not paths:
        raise ErasekitError(f"no images (.png, .jpg, .webp) in {folder}")
    need = 3 * sum(_pixels(p) for p in paths)
    if need > available_memory():
        raise ErasekitError(f"the {len(paths)} images in {folder} need {need / 2**30:.1f} GiB decoded, more than is free here: give fewer")
    return [open_image(p) for p in paths]


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
