"""How numpy dtypes map to NNC coding modes and to ``nnr_decompressed_data_format`` (spec §1.3)."""
from __future__ import annotations

import json
import sys

import numpy as np

from ..bitstream.enums import DecompressedDataFormat
from ..errors import InputError

# ml_dtypes gives numpy its usual bfloat16 (jax, tensorflow and torch's numpy views use it). It is imported on
# first need, not with nnc: importing it registers its ufunc loops one by one, which takes 1.5 s with numpy 2.4
# (measured: ml_dtypes 0.7.0) -- longer than everything else `import nnc` does. No bfloat16 array can exist
# before ml_dtypes is imported, so until then nothing is bfloat16.
_BF16: "list[np.dtype | None]" = []


def bfloat16_dtype() -> "np.dtype | None":
    """numpy's bfloat16 (``ml_dtypes.bfloat16``), imported on first use; None without ml_dtypes."""
    if not _BF16:
        try:
            from ml_dtypes import bfloat16
            _BF16.append(np.dtype(bfloat16))
        except ImportError:  # pragma: no cover - exercised only without ml_dtypes
            _BF16.append(None)
    return _BF16[0]


def __getattr__(name: str):
    if name == "BFLOAT16":      # the dtype as a module constant, for code that imports it by name
        return bfloat16_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DecompressedDataFormat", "coding_kind", "format_for_dtype", "dtype_for_format",
           "bfloat16_dtype", "is_bfloat16", "is_float", "float32_view", "recorded_dtypes", "dtype_record"]

#: Marker key of the JSON record in an NNR_TPL unit (storage format 0/3) that names original dtypes the
#: standard has no ``nnr_decompressed_data_format`` code for (bfloat16). Shared with nnc.converters, which
#: writes the same record with more fields (shapes of 0-d tensors, tied tensors).
RECORD_KEY = "nnc_converters"
RECORD_VERSION = 1


def is_bfloat16(dtype) -> bool:
    """True for ml_dtypes' bfloat16 (what ``torch.Tensor.numpy()`` cannot give, but jax/ml_dtypes arrays do)."""
    if "ml_dtypes" not in sys.modules:
        return False
    bf16 = bfloat16_dtype()
    return bf16 is not None and np.dtype(dtype) == bf16


def is_float(dtype) -> bool:
    """float16/32/64 or bfloat16: the dtypes nnc quantises."""
    dt = np.dtype(dtype)
    return (dt.kind == "f" and dt.itemsize in (2, 4, 8)) or is_bfloat16(dt)


def float32_view(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` as float32 (a new array unless it already is float32, or written into ``out``, a float32 array of
    x's size); bfloat16 is widened exactly."""
    if x.dtype == np.float32 and out is None:
        return x
    if is_bfloat16(x.dtype):
        bits = np.ascontiguousarray(x).view(np.uint16)
        if out is None:
            out = np.empty(bits.shape, np.float32)
        np.left_shift(bits, 16, out=out.view(np.uint32).reshape(bits.shape), dtype=np.uint32)
        return out
    if out is None:
        return x.astype(np.float32)
    out.reshape(x.shape)[...] = x
    return out


def dtype_record(dtypes: dict[str, str]) -> bytes:
    """The JSON record (UTF-8, no NUL) naming the original dtype of tensors the NDUs cannot signal."""
    obj = {RECORD_KEY: RECORD_VERSION, "source_format": "numpy", "dtypes": dict(dtypes)}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def recorded_dtypes(topology) -> dict[str, str]:
    """The ``dtypes`` of a JSON record in an uncompressed NNR_TPL unit of storage format 0 or 3 ({} otherwise,
    also for a record that does not parse: the converters report that one with their own error)."""
    if topology is None or int(topology.storage_format) not in (0, 3) or int(topology.compression_format) != 0:
        return {}
    data = bytes(topology.data)
    if not data.lstrip().startswith(b'{"' + RECORD_KEY.encode()):
        return {}
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):   # hostile nesting too: the converters report it
        return {}
    d = obj.get("dtypes") if isinstance(obj, dict) else None
    return {str(k): str(v) for k, v in d.items()} if isinstance(d, dict) else {}


_FORMAT_OF = {
    np.dtype(np.float16): DecompressedDataFormat.TENSOR_FLOAT16,
    np.dtype(np.float64): DecompressedDataFormat.TENSOR_FLOAT64,
    np.dtype(np.int8): DecompressedDataFormat.TENSOR_INT8,
    np.dtype(np.int16): DecompressedDataFormat.TENSOR_INT16,
    np.dtype(np.int64): DecompressedDataFormat.TENSOR_INT64,
}
_DTYPE_OF = {
    DecompressedDataFormat.TENSOR_INT32: np.dtype(np.int32),
    DecompressedDataFormat.TENSOR_FLOAT32: np.dtype(np.float32),
    DecompressedDataFormat.TENSOR_INT2: np.dtype(np.int8),
    DecompressedDataFormat.TENSOR_INT3: np.dtype(np.int8),
    DecompressedDataFormat.TENSOR_INT4: np.dtype(np.int8),
    DecompressedDataFormat.TENSOR_INT8: np.dtype(np.int8),
    DecompressedDataFormat.TENSOR_INT16: np.dtype(np.int16),
    DecompressedDataFormat.TENSOR_INT64: np.dtype(np.int64),
    DecompressedDataFormat.TENSOR_FLOAT16: np.dtype(np.float16),
    DecompressedDataFormat.TENSOR_FLOAT64: np.dtype(np.float64),
}


def coding_kind(name: str, dtype: np.dtype) -> str:
    """``"float"`` (quantised, NNR_PT_FLOAT) or ``"int"`` (lossless, NNR_PT_INT) for an input dtype."""
    if is_float(dtype):
        return "float"
    if dtype.kind in "iub":
        return "int"
    raise InputError(f"tensor {name!r}: dtype {dtype} cannot be coded (use float16/32/64, bfloat16 (ml_dtypes) or "
                     "an integer type)")


def format_for_dtype(dtype: np.dtype) -> DecompressedDataFormat | None:
    """The format to signal so that decoding restores ``dtype``; ``None`` for the default float32/int32
    (and for dtypes the standard has no code for, such as unsigned integers and bool)."""
    return _FORMAT_OF.get(np.dtype(dtype))


def dtype_for_format(fmt: int) -> np.dtype | None:
    try:
        return _DTYPE_OF[DecompressedDataFormat(fmt)]
    except ValueError:
        return None
