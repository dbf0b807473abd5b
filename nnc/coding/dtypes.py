"""How numpy dtypes map to NNC coding modes and to ``nnr_decompressed_data_format`` (spec §1.3)."""
from __future__ import annotations

from enum import IntEnum

import numpy as np

from ..errors import InputError

__all__ = ["DecompressedDataFormat", "coding_kind", "format_for_dtype", "dtype_for_format"]


class DecompressedDataFormat(IntEnum):
    INT32 = 0
    FLOAT32 = 1
    INT2 = 2
    INT3 = 3
    INT4 = 4
    INT8 = 5
    INT16 = 6
    INT64 = 7
    FLOAT16 = 8
    FLOAT64 = 9


_FORMAT_OF = {
    np.dtype(np.float16): DecompressedDataFormat.FLOAT16,
    np.dtype(np.float64): DecompressedDataFormat.FLOAT64,
    np.dtype(np.int8): DecompressedDataFormat.INT8,
    np.dtype(np.int16): DecompressedDataFormat.INT16,
    np.dtype(np.int64): DecompressedDataFormat.INT64,
}
_DTYPE_OF = {
    DecompressedDataFormat.INT32: np.dtype(np.int32),
    DecompressedDataFormat.FLOAT32: np.dtype(np.float32),
    DecompressedDataFormat.INT2: np.dtype(np.int8),
    DecompressedDataFormat.INT3: np.dtype(np.int8),
    DecompressedDataFormat.INT4: np.dtype(np.int8),
    DecompressedDataFormat.INT8: np.dtype(np.int8),
    DecompressedDataFormat.INT16: np.dtype(np.int16),
    DecompressedDataFormat.INT64: np.dtype(np.int64),
    DecompressedDataFormat.FLOAT16: np.dtype(np.float16),
    DecompressedDataFormat.FLOAT64: np.dtype(np.float64),
}


def coding_kind(name: str, dtype: np.dtype) -> str:
    """``"float"`` (quantised, NNR_PT_FLOAT) or ``"int"`` (lossless, NNR_PT_INT) for an input dtype."""
    if dtype.kind == "f" and dtype.itemsize in (2, 4, 8):
        return "float"
    if dtype.kind in "iub":
        return "int"
    raise InputError(f"tensor {name!r}: dtype {dtype} cannot be coded (use float16/32/64 or an integer type)")


def format_for_dtype(dtype: np.dtype) -> DecompressedDataFormat | None:
    """The format to signal so that decoding restores ``dtype``; ``None`` for the default float32/int32
    (and for dtypes the standard has no code for, such as unsigned integers and bool)."""
    return _FORMAT_OF.get(np.dtype(dtype))


def dtype_for_format(fmt: int) -> np.dtype | None:
    try:
        return _DTYPE_OF[DecompressedDataFormat(fmt)]
    except ValueError:
        return None
