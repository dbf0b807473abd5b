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


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success rename it to ``path``.

    The temporary name keeps the target's suffix (some writers, e.g. ``np.savez``, look at it).
    On any exception the temporary file is removed and the target is untouched.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    # checked first, so that the error names the target (not the temporary file) and nothing is created
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "the output is a directory, not a file", str(target))
    if not directory.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the output's directory does not exist", str(directory))
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
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    finally:
        LIVE_TEMPORARIES.discard(tmp_path)


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
