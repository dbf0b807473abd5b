"""Where a bitstream comes from: bytes-like objects (and, for the describing tools, a file path)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["as_bytes"]


def as_bytes(bitstream, *, allow_path: bool = False) -> bytes | memoryview:
    """``bitstream`` as bytes or a byte memoryview: bytes, bytearray, memoryview or a uint8 numpy array; with
    ``allow_path`` also a ``str``/``os.PathLike`` naming a file, which is read."""
    if allow_path and isinstance(bitstream, (str, os.PathLike)):
        return Path(bitstream).read_bytes()
    if isinstance(bitstream, (bytes, bytearray, memoryview)):
        return bitstream
    if isinstance(bitstream, np.ndarray) and bitstream.dtype == np.uint8:
        return memoryview(np.ascontiguousarray(bitstream)).cast("B")
    what = "bytes-like or a path" if allow_path else "bytes-like"
    raise TypeError(f"bitstream must be {what}, got {type(bitstream).__name__}")
