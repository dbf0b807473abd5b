"""Atomic file output: write to a temporary file beside the target, then rename over it.

An interrupted or failed write leaves the previous file (or no file) in place, never a partial one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

__all__ = ["atomic_output", "write_bytes_atomic"]


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
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


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
