"""Writing outputs safely: atomically (a reader never sees a half-written file, an interrupted run
leaves none), with a one-line error when the disk is full, and one writer per output at a time."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ErasekitError
from .paths import check_target, derived


class NoSpaceError(ErasekitError):
    """The disk filled up while writing an output; nothing of it was left behind."""


def _no_space(target: Path) -> NoSpaceError:
    return NoSpaceError(f"no space left on the device of {target.parent}: {target.name} was not written (any earlier version is unchanged)")


def out_of_space(error: BaseException) -> bool:
    """Whether `error` means the disk (or quota) is full."""
    # torch.save reports a full disk as a RuntimeError from its zip writer, safetensors as its own
    # error type quoting the OS: only an OSError carries the errno.
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    return "No space left" in text or "os error 28" in text or (isinstance(error, RuntimeError) and "inline_container" in text)


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`, else delete it.

    A full disk becomes a one-line ErasekitError, with `target` as it was before. A target that is
    a device, pipe or folder is refused: a rename would replace it.
    """
    target = Path(target)
    check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=derived(target, ".", ".").name, suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result gets a normal file's mode
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if out_of_space(e):
            raise _no_space(target) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` whole, else it is deleted.

    Anything at `target` but a folder (or a link, replaced as a link) is refused.
    """
    target = Path(target)
    check_target(target, folder=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=derived(target, ".", ".").name, suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # as for atomic_path: a normal folder's mode, not mkdtemp's private one
        old = None
        if os.path.lexists(target):
            old = derived(target, ".", f".old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            _remove(old)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, NoSpaceError) or out_of_space(e):  # name the folder, not the temporary one inside
            raise _no_space(target) from None
        raise


def _remove(path: Path) -> None:
    """Delete what was at an output before it was replaced: a link as a link, a folder with its files."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


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


@contextmanager
def new_folders_removed_on_failure(*paths: Path | str | None) -> Iterator[None]:
    """Folders on the way to `paths` that do not exist yet are removed again, if still empty, when
    the block fails: a command refused after it began leaves no empty folder behind."""
    missing = []
    for path in paths:
        if path is not None:
            missing += [p for p in [Path(path), *Path(path).parents] if not p.exists()]
    try:
        yield
    except BaseException:
        for folder in sorted(set(missing), key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()  # only if empty; a file means real output, which stays
            except OSError:
                pass
        raise


def read_utf8(path: Path | str) -> str:
    """A text file's contents; a file that is not UTF-8 is refused in one line, naming where it breaks."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ErasekitError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}): save it as UTF-8") from None


def lock_file(target: Path) -> Path:
    return derived(target, ".", ".lock")


@contextmanager
def output_lock(target: Path | str) -> Iterator[None]:
    """Hold `target` for this process: a second run writing it is refused at once, with our PID.

    An advisory lock (flock) on a hidden file beside `target`: the kernel releases it when its
    holder dies, however it dies, so a lock left by a killed run is simply taken over.
    """
    target = Path(target)
    path = lock_file(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ErasekitError(f"{target} is being written by another erasekit run (PID {holder}): wait for it to finish, or choose another output") from None
        try:  # the previous holder may have removed the file between our open and our lock: lock the current one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: see the inode check above
        os.close(fd)
