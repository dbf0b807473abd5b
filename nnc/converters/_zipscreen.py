"""Checks on zip-based model files (.pt, TorchScript, .npz) *before* anything is inflated or allocated.

A zip entry declares its uncompressed size in the central directory; ``zipfile`` never returns more than
that, but a deflated entry can legitimately declare up to ~1032x its compressed size, and a ``.npy`` header
can claim any shape. So, before a loader touches the data:

* every deflated entry's declared size is at most :data:`MAX_RATIO` x its compressed size (what deflate can
  reach; more means the directory lies);
* the declared sizes together fit the active decoder budget (``max_total_bytes`` of
  :func:`nnc.config.default_decoder_config`: the CLI's ``--max-memory``);
* in an ``.npz``, each ``.npy`` header is read (bounded) and its shape x itemsize must be exactly what the
  entry declares after the header.

Every failure is a :class:`ModelFormatError` (or :class:`LimitExceededError` for the budget) naming the file
and the entry.
"""
from __future__ import annotations

import math
import zipfile

import numpy as np

from ..config import default_decoder_config
from ..errors import LimitExceededError, ModelFormatError

#: deflate's largest possible expansion is 1032:1; a declared size beyond this ratio cannot be honest
MAX_RATIO = 1100
#: longest .npy header read (numpy's own default max_header_size is 10000)
MAX_NPY_HEADER = 1 << 16


def _budget(max_bytes: int | None) -> int:
    if max_bytes is not None:
        return max_bytes
    return default_decoder_config().max_total_bytes


def screen_zip(path: str, *, max_bytes: int | None = None, what: str = "model file") -> list[zipfile.ZipInfo]:
    """Check the directory of the zip file ``path``; returns its entries."""
    limit = _budget(max_bytes)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise ModelFormatError(f"{path!r} is not a readable {what} (zip): {e}") from None
    total = 0
    for info in infos:
        if info.file_size < 0 or info.compress_size < 0:
            raise ModelFormatError(f"{path!r}: entry {info.filename!r} declares a negative size")
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ModelFormatError(f"{path!r}: entry {info.filename!r} declares {info.file_size} bytes from "
                                   f"{info.compress_size} compressed bytes, more than deflate can expand "
                                   f"({MAX_RATIO}:1)")
        total += info.file_size
    if total > limit:
        raise LimitExceededError(f"{path!r}: the {what}'s entries declare {total} bytes in all, more than "
                                 f"max_total_bytes={limit} (the decoder budget; --max-memory on the CLI)")
    return infos


def screen_npz(path: str, *, max_bytes: int | None = None) -> None:
    """:func:`screen_zip` plus every ``.npy`` header against its entry's declared size."""
    infos = screen_zip(path, max_bytes=max_bytes, what=".npz archive")
    try:
        with zipfile.ZipFile(path) as z:
            for info in infos:
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    _check_npy_header(path, info, f)
    except (ModelFormatError, LimitExceededError):
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise ModelFormatError(f"{path!r} is not a valid .npz file: {e}") from None


def _check_npy_header(path: str, info: zipfile.ZipInfo, f) -> None:
    fmt = np.lib.format
    name = info.filename
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
        else:
            raise ModelFormatError(f"{path!r}: array {name!r} has an unknown .npy version {version}")
    except ModelFormatError:
        raise
    except (ValueError, SyntaxError, TypeError, OverflowError, MemoryError, RecursionError, EOFError) as e:
        raise ModelFormatError(f"{path!r}: array {name!r} has a malformed .npy header: {e}") from None
    if dtype.hasobject:
        raise ModelFormatError(f"{path!r}: array {name!r} holds Python objects (needs pickle, refused)")
    header_len = f.tell()
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ModelFormatError(f"{path!r}: array {name!r} has an invalid shape {shape!r:.100}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != info.file_size - header_len:
        raise ModelFormatError(f"{path!r}: array {name!r} claims shape {list(shape)[:8]} of {dtype} ({nbytes} "
                               f"bytes) but its entry holds {info.file_size - header_len} data bytes")
