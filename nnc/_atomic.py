"""Atomic file output: write to a temporary file beside the target, then rename over it.

An interrupted or failed write leaves the previous file (or no file) in place, never a partial one. The
finished file gets the permissions a plain ``open(path, "w")`` would give it: those of the file it replaces, or
``0o666`` less the process umask for a new file (the temporary file itself is private, 0600, until then).
Temporary files in flight are listed in :data:`LIVE_TEMPORARIES`, so that a process that must stop at once (the
CLI on Ctrl-C) can remove them with :func:`remove_live_temporaries` before it exits.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

__all__ = ["atomic_output", "write_bytes_atomic", "write_with_atomic", "remove_live_temporaries"]

#: temporary files created by :func:`atomic_output` and not yet renamed or removed
LIVE_TEMPORARIES: set[Path] = set()
_LOCK = threading.Lock()


def _umask() -> int:
    with _LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _final_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def remove_live_temporaries() -> None:
    """Delete every temporary file still in flight (for a process about to exit without unwinding)."""
    for tmp in list(LIVE_TEMPORARIES):
        with contextlib.suppress(OSError):
            tmp.unlink()
        LIVE_TEMPORARIES.discard(tmp)


def _checked_target(path) -> tuple[Path, Path]:
    """(target, its directory), checked first so that an error names the target (not a temporary file) and
    nothing is created."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "the output is a directory, not a file", str(target))
    if not directory.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the output's directory does not exist", str(directory))
    return target, directory


def _rename_into(tmp: Path, target: Path) -> None:
    """Rename the finished temporary file ``tmp`` (registered in LIVE_TEMPORARIES) over ``target``; on failure
    it is removed."""
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        LIVE_TEMPORARIES.discard(tmp)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success rename it to ``path``.

    The temporary name keeps the target's suffix (some writers, e.g. ``np.savez``, look at it).
    On any exception the temporary file is removed and the target is untouched.
    """
    target, directory = _checked_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix,
                               dir=directory)
    os.close(fd)
    tmp_path = Path(tmp)
    LIVE_TEMPORARIES.add(tmp_path)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _final_mode(target))
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        LIVE_TEMPORARIES.discard(tmp_path)
        raise
    _rename_into(tmp_path, target)


@contextlib.contextmanager
def atomic_stream(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` only when the block completes (written as it is produced).

    On Linux the file is created unnamed (``O_TMPFILE``) in the target's directory, so a process killed
    mid-write (even by SIGKILL) leaves nothing behind; at the end it is given a temporary name and renamed over
    the target. Elsewhere (or where the file system has no ``O_TMPFILE``) this is :func:`atomic_output`.
    """
    target, directory = _checked_target(path)
    flag = getattr(os, "O_TMPFILE", None)
    fd = proc = None
    if flag is not None:
        with contextlib.suppress(OSError):
            proc = os.open("/proc/self/fd", os.O_RDONLY)
            fd = os.open(directory, flag | os.O_WRONLY, 0o600)
    if fd is None:
        if proc is not None:
            os.close(proc)
        with atomic_output(target) as tmp, open(tmp, "wb") as f:
            yield f
        return
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), _final_mode(target))
            for _ in range(100):        # a unique name for the instant between link and rename
                tmp = directory / f".{target.name}.{os.urandom(6).hex()}.tmp"
                try:   # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names the unnamed file
                    os.link(str(f.fileno()), tmp, src_dir_fd=proc, follow_symlinks=True)
                    break
                except FileExistsError:
                    continue
            else:  # pragma: no cover
                raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))
    finally:
        os.close(proc)
    LIVE_TEMPORARIES.add(tmp)
    _rename_into(tmp, target)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_with_atomic(path: str | os.PathLike, writer: Callable[[BinaryIO], None]) -> None:
    """Call ``writer(file)`` on a temporary file and rename it to ``path`` when it returns."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            writer(f)
