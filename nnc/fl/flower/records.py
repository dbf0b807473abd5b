"""Flower records <-> numpy: model tensors as an ArrayRecord, bytes as one ``uint8`` Array."""
from __future__ import annotations

from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["to_arrayrecord", "from_arrayrecord", "bytes_array"]


def bytes_array(data: bytes, stype: str) -> Array:
    """``data`` as one ``uint8`` Array tagged ``stype`` (how every nnc bitstream travels)."""
    return Array(dtype="uint8", shape=(len(data),), stype=stype, data=bytes(data))


def to_arrayrecord(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    # np.asarray(order="C"), not np.ascontiguousarray, which turns 0-d arrays into shape (1,)
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in tensors.items()})


def from_arrayrecord(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: rec[k].numpy() for k in rec.keys()}
