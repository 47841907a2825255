"""Where a command may write, checked before it starts: no output over one of its inputs or over
another of its outputs, and no output onto anything but a regular file or a folder.

Every command names what it reads and what it writes (`check_paths`); the writers in io.py refuse a
target that is not a regular file (or a folder, for a folder replaced whole) once more, for callers
of the Python API. Names derived from an output (its lock, its temporary file, `OUT.ckpt`) stay
within the file system's 255-byte limit, however long the output's own legal name (`derived`).
Standard library only: the CLI imports it before `--help`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from .errors import ErasekitError

NAME_MAX = 255  # bytes in one file name, on every file system erasekit runs on
RESERVED = 16  # what mkstemp and mkdtemp add to a prefix: 8 random characters and a suffix

Paths = dict[str, "Path | str | None"]


def derived(path: Path | str, prefix: str = "", suffix: str = "") -> Path:
    """`prefix + NAME + suffix` beside `path`, or, where that passes NAME_MAX (less RESERVED), NAME
    cut short and a hash of the whole name added, so any legal name has its derived names."""
    path = Path(path)
    name = f"{prefix}{path.name}{suffix}"
    if len(name.encode()) <= NAME_MAX - RESERVED:
        return path.with_name(name)
    digest = hashlib.sha256(path.name.encode()).hexdigest()[:16]
    short = path.name.encode()[:96].decode(errors="ignore")
    return path.with_name(f"{prefix}{short}~{digest}{suffix}")


def checkpoint_folder(out: Path | str) -> Path:
    """The folder an erase writing `out` keeps its training checkpoint in: OUT.ckpt."""
    return derived(out, suffix=".ckpt")


def _place(path: Path | str) -> Path:
    """The directory entry a write to `path` replaces: its folder resolved, its own name kept (a
    symbolic link named as an output is replaced as a link, its target left alone)."""
    path = Path(os.path.abspath(path))
    return Path(os.path.realpath(path.parent)) / path.name


def _places(path: Path | str) -> set[Path]:
    """Every entry an input is reached through: the name given and, through links, what it names."""
    return {_place(path), Path(os.path.realpath(path))}


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and folder in path.parents


def _kind(path: Path) -> str | None:
    """None for a regular file, a folder or a symbolic link (what a write may replace); else what it is."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a socket"


def check_target(path: Path | str, folder: bool = False, flag: str = "") -> None:
    """Refuse writing `path` where something other than a regular file (or, with `folder`, a folder) is."""
    path = Path(path)
    what = f"{flag} {path}" if flag else str(path)
    kind = _kind(path)
    if kind is not None:
        raise ErasekitError(f"{what} is {kind}, not a regular file: erasekit writes only regular files and folders; give another path")
    if os.path.lexists(path) and not os.path.islink(path):
        if folder and not path.is_dir():
            raise ErasekitError(f"{what} is a file: give a folder")
        if not folder and path.is_dir():
            raise ErasekitError(f"{what} is an existing folder: give a file name")


def check_not_under_a_file(path: Path | str | None) -> None:
    """Refuse an output whose nearest existing folder is a file, before mkdir would fail half-way."""
    if path is None:
        return
    path = Path(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ErasekitError(f"cannot write {path}: {parent} is a file, not a folder")
            return


def _pairs(paths: Paths | list[tuple[str, Path | str | None]] | None, folder: bool = False) -> list[tuple[str, Path, bool]]:
    items = paths.items() if isinstance(paths, dict) else (paths or [])
    return [(flag, Path(p), folder) for flag, p in items if p is not None]


def check_paths(inputs: Paths, files: Paths | list[tuple[str, Path | str | None]], folders: Paths | None = None,
                marks: dict[str, tuple[str, ...]] | None = None, into: Paths | None = None) -> None:
    """Refuse, in one line and before any work, a command whose outputs would overlap its inputs or each other.

    inputs: what the command reads, by flag (files or folders; None where not given).
    files: the files it writes, by flag (a dict, or (flag, path) pairs where one flag writes several).
    folders: the folders it replaces whole (a pipeline folder, a checkpoint folder).
    marks: for a replaced folder, file names that show it is an earlier output of the same kind; an
    existing folder that is not empty and holds none of them is the user's, and is refused.
    into: folders it writes its `files` into, which must be folders (or not exist yet).
    """
    marks = marks or {}
    given_in = [(flag, source, _places(source), Path(os.path.realpath(source))) for flag, source, _ in _pairs(inputs)]
    for flag, path, _ in _pairs(into):
        check_target(path, folder=True, flag=flag)
        check_not_under_a_file(path)
        for in_flag, source, reached, _ in given_in:
            if _places(path) & reached:  # through a link too: the files land in what it names
                raise ErasekitError(f"{flag} {path} is the input {in_flag} {source}: write into another folder")
    written = [(flag, path, folder, _place(path)) for flag, path, folder in _pairs(files) + _pairs(folders, folder=True)]

    for flag, path, folder, place in written:
        check_not_under_a_file(path)
        check_target(path, folder, flag)
        for in_flag, source, reached, real in given_in:
            if place in reached:
                raise ErasekitError(f"{flag} {path} is the input {in_flag} {source}: it would be written over; give another path")
            if folder and any(_inside(p, place) for p in reached):
                raise ErasekitError(f"{flag} {path} holds the input {in_flag} {source}, and is replaced whole: give another folder")
            if real.is_dir() and _inside(place, real) and os.path.lexists(place):
                raise ErasekitError(f"{flag} {path} is part of the input {in_flag} {source}: it would be written over; give another path")
        if folder and path.is_dir() and not path.is_symlink() and any(path.iterdir()):
            if not any((path / mark).exists() for mark in marks.get(flag, ())):
                raise ErasekitError(f"{flag} {path} is a folder holding other files: erasekit replaces that folder whole, so give a new or empty one")

    seen: dict[Path, tuple[str, Path]] = {}
    for flag, path, _, place in written + [(flag, path, True, _place(path)) for flag, path, _ in _pairs(into)]:
        if place in seen:
            raise ErasekitError(f"{flag} {path} is also {seen[place][0]} {seen[place][1]}: two outputs cannot share a path")
        seen[place] = (flag, path)
    for flag, path, _, place in written:
        for other, other_path, folder, other_place in written:
            if _inside(place, other_place):
                what = "replaced whole" if folder else "a file"
                raise ErasekitError(f"{flag} {path} is inside {other} {other_path}, which is {what}: give paths apart")
