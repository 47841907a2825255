"""Atomic file writes: a reader never sees a half-written output, an interrupted run leaves none."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`, else delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_save_torch(obj, target: Path | str) -> None:
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def atomic_save_image(image, target: Path | str) -> None:
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG")
