"""Flower records <-> numpy: model tensors as an ArrayRecord, bytes as one ``uint8`` Array."""
from __future__ import annotations

import io
from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["to_arrayrecord", "from_arrayrecord", "bytes_array", "view_arrayrecord"]


def bytes_array(data: bytes, stype: str) -> Array:
    """``data`` as one ``uint8`` Array tagged ``stype`` (how every nnc bitstream travels)."""
    return Array(dtype="uint8", shape=(len(data),), stype=stype, data=bytes(data))


def to_arrayrecord(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    # np.asarray(order="C"), not np.ascontiguousarray, which turns 0-d arrays into shape (1,)
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in tensors.items()})


def from_arrayrecord(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: rec[k].numpy() for k in rec.keys()}


def _npy_view(a: Array) -> np.ndarray:
    """The array an ``Array`` of ``stype="numpy.ndarray"`` holds, as a read-only view of its bytes (no copy;
    ``Array.numpy()`` copies). Falls back to ``numpy()`` for anything but a plain numeric array."""
    data = a.data
    if not isinstance(data, bytes):
        return a.numpy()
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return a.numpy()
    except (ValueError, OSError):
        return a.numpy()
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject or f.tell() + count * dtype.itemsize != len(data):
        return a.numpy()
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def view_arrayrecord(rec: ArrayRecord) -> dict[str, np.ndarray]:
    """:func:`from_arrayrecord` without copies: read-only views of the record's bytes (for reading only)."""
    return {k: _npy_view(rec[k]) if rec[k].stype == "numpy.ndarray" else rec[k].numpy() for k in rec.keys()}
