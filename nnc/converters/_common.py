"""Helpers shared by the format converters: atomic writes, dtype names, the JSON topology record."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np

from .._atomic import atomic_output
from ..coding.dtypes import bfloat16_dtype, is_bfloat16
from ..config import default_decoder_config
from ..errors import LimitExceededError, ModelFormatError, NNCError
from ..topology import Topology, TopologyCompressionFormat, TopologyStorageFormat

#: Marker key that starts the JSON topology record written by nnc.converters.
META_KEY = "nnc_converters"
META_VERSION = 1

#: dtype names used in the JSON record; bfloat16 is ml_dtypes.bfloat16 (float32 only without ml_dtypes), looked up
#: when needed (importing ml_dtypes costs ~1 s: see nnc.coding.dtypes).
NUMPY_DTYPES = {
    "float16": np.float16, "float32": np.float32, "float64": np.float64, "bfloat16": None,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "bool": np.bool_,
}


def numpy_dtype(name: str) -> np.dtype:
    try:
        if name == "bfloat16":
            return bfloat16_dtype() or np.dtype(np.float32)
        return np.dtype(NUMPY_DTYPES[name])
    except KeyError:
        raise ModelFormatError(f"unknown tensor dtype {name!r} in the topology record") from None


def coded_array(arr: np.ndarray) -> np.ndarray:
    """The numpy array handed to the codec for an array of any supported dtype (bool becomes uint8)."""
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if arr.dtype.byteorder == ">":
        return arr.astype(arr.dtype.newbyteorder("<"))
    return arr


# --------------------------------------------------------------------------------------------------
# atomic output

@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path in the directory of ``dest``; move it onto ``dest`` only on success
    (:func:`nnc._atomic.atomic_output`, with a missing directory reported as a ``ModelFormatError``).

    On any exception the temporary file is removed, so no partial output is ever left behind.
    """
    dest = os.fspath(dest)
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        raise ModelFormatError(f"cannot write {dest!r}: directory {directory!r} does not exist")
    with atomic_output(dest, suffix=".tmp") as tmp:
        yield str(tmp)


# --------------------------------------------------------------------------------------------------
# every failure on a model file is typed

#: what parsers of hostile files raise when their input is garbage (numpy, protobuf, zipfile, json, pickle)
_GARBAGE = (KeyError, IndexError, TypeError, ValueError, OverflowError, MemoryError, RecursionError, UnicodeError,
            AttributeError, EOFError, LookupError, zipfile.BadZipFile, struct.error, pickle.UnpicklingError)


def typed_errors(fn):
    """Decorator for the converters' entry points: an exception that a garbage model file provokes inside
    numpy, protobuf, zipfile, torch or json becomes a :class:`ModelFormatError` naming the file (or the
    topology) and the original exception; nnc's own errors pass through unchanged."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:   # noqa: BLE001 - filtered below
            if isinstance(e, NNCError) or not _is_garbage(e):
                raise
            where = args[0] if args and isinstance(args[0], (str, os.PathLike)) else "the model"
            raise ModelFormatError(f"{os.fspath(where) if not isinstance(where, str) else where!r}: unreadable or "
                                   f"inconsistent model data ({type(e).__name__}: {str(e)[:200]})") from e
    return wrapper


def _is_garbage(e: BaseException) -> bool:
    if isinstance(e, _GARBAGE):
        return True
    mod = type(e).__module__ or ""
    # protobuf's DecodeError, torch's RuntimeError on corrupt archives
    return mod.startswith("google.protobuf") or (mod == "builtins" and isinstance(e, RuntimeError)
                                                 and "pytorch" in str(e).lower() + type(e).__name__.lower())


# --------------------------------------------------------------------------------------------------
# bfloat16 bit conversions (numpy has no bfloat16)

def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def bf16_from_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as an ml_dtypes.bfloat16 array (a view; float32 without ml_dtypes)."""
    bf16 = bfloat16_dtype()
    if bf16 is None:  # pragma: no cover - ml_dtypes missing
        return bf16_bits_to_float32(bits)
    return np.ascontiguousarray(bits).view(np.uint16).view(bf16)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (NaN stays NaN); bfloat16 input: its bits."""
    if is_bfloat16(np.asarray(x).dtype):
        return np.ascontiguousarray(x).view(np.uint16)
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


# --------------------------------------------------------------------------------------------------
# deflate

def deflate(data: bytes) -> bytes:
    """NNR_DFL payload: a deflate stream in the zlib container (RFC 1950 wrapping RFC 1951)."""
    return zlib.compress(data, 9)


def inflate(data: bytes, max_bytes: int | None = None) -> bytes:
    """Inverse of :func:`deflate`; also accepts a bare RFC 1951 stream.

    The output is bounded by ``max_bytes`` (default: ``max_total_bytes`` of the active decoder limits,
    :func:`nnc.config.default_decoder_config`): a deflate bomb raises :class:`LimitExceededError` after
    producing at most that many bytes, instead of expanding without bound."""
    if max_bytes is None:
        max_bytes = default_decoder_config().max_total_bytes
    last = None
    for wbits in (15, -15):
        try:
            # first pass: count the output in 1 MiB steps without keeping it, so a bomb costs no memory
            d = zlib.decompressobj(wbits)
            size, buf = 0, data
            while True:
                size += len(d.decompress(buf, 1 << 20))
                if size > max_bytes:
                    raise LimitExceededError(f"the deflate-compressed topology data ({len(data)} bytes) expands to "
                                             f"more than max_total_bytes={max_bytes} bytes",
                                             syntax_path="NNR_TPL.topology_data")
                buf = d.unconsumed_tail
                if not buf:
                    break
            size += len(d.flush())
            if size > max_bytes:
                raise LimitExceededError(f"the deflate-compressed topology data expands to more than "
                                         f"max_total_bytes={max_bytes} bytes", syntax_path="NNR_TPL.topology_data")
            if not d.eof:
                raise zlib.error("incomplete or truncated stream")
            return zlib.decompress(data, wbits, max(size, 1))
        except zlib.error as e:
            last = e
    raise ModelFormatError(f"topology data is not a valid deflate stream: {last}")


def _inflate_head(data: bytes, n: int) -> bytes | None:
    """The first ``n`` bytes (at most) that ``data`` inflates to, without expanding the rest; None when it is
    not a deflate stream (the full :func:`inflate` then reports it)."""
    for wbits in (15, -15):
        try:
            return zlib.decompressobj(wbits).decompress(data, n)
        except zlib.error:
            continue
    return None


def topology_payload(topology: Topology) -> bytes:
    data = bytes(topology.data)
    if topology.compression_format == TopologyCompressionFormat.NNR_DFL:
        return inflate(data)
    if topology.compression_format != TopologyCompressionFormat.NNR_PT_RAW:
        raise ModelFormatError(f"unknown topology_compression_format {topology.compression_format}")
    return data


# --------------------------------------------------------------------------------------------------
# JSON topology record (PyTorch / safetensors / npz sources)

@dataclass
class TensorRecord:
    """What nnc.converters remembers about a model beyond the coded tensors.

    dtypes: original dtype name of each tensor that is not float32 (the codec may return another dtype).
    shapes: original shape of 0-d tensors (NNC codes them as shape [1]).
    tied:   alias name -> name of the tensor it shares storage with (coded once).
    order:  full original name order, present when there are aliases.
    """

    source_format: str = "numpy"
    dtypes: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def is_trivial(self) -> bool:
        return not (self.dtypes or self.shapes or self.tied or self.extra)

    def to_topology(self) -> Topology:
        """A TPL unit the reference decoder accepts: storage format 3 (PYT) or 0, raw UTF-8 JSON, no NUL.

        A model that needs no record gets the same empty TPL unit NNCodec writes.
        """
        fmt = (TopologyStorageFormat.NNR_TPL_PYT if self.source_format == "pytorch"
               else TopologyStorageFormat.NNR_TPL_UNREC)
        if self.is_trivial():
            return Topology(int(fmt), int(TopologyCompressionFormat.NNR_PT_RAW), b"")
        obj = {META_KEY: META_VERSION, "source_format": self.source_format}
        if self.dtypes:
            obj["dtypes"] = self.dtypes
        if self.shapes:
            obj["shapes"] = self.shapes
        if self.tied:
            obj["tied"] = self.tied
            obj["order"] = self.order
        if self.extra:
            obj["extra"] = self.extra
        # json.dumps escapes every control character, so the text never contains a NUL byte.
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        assert b"\x00" not in data
        return Topology(int(fmt), int(TopologyCompressionFormat.NNR_PT_RAW), data)

    @classmethod
    def from_topology(cls, topology: Topology | None) -> "TensorRecord | None":
        """Parse a record written by :meth:`to_topology`; ``None`` for any other topology."""
        if topology is None or topology.storage_format not in (TopologyStorageFormat.NNR_TPL_UNREC,
                                                                TopologyStorageFormat.NNR_TPL_PYT):
            return None
        source = "pytorch" if topology.storage_format == TopologyStorageFormat.NNR_TPL_PYT else "numpy"
        if topology.compression_format == TopologyCompressionFormat.NNR_DFL:
            # look at the start first: a deflated payload that is not a record (a deflate bomb among them) is
            # not expanded in full just to find that out
            head = _inflate_head(bytes(topology.data), 4096)
            if head is not None and not head.lstrip().startswith(b'{"' + META_KEY.encode()):
                return cls(source_format=source)
        data = topology_payload(topology)
        start = re.match(rb"\s*", data).end()            # no copy of a large payload
        if not data.startswith(b'{"' + META_KEY.encode(), start):
            return cls(source_format=source)
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ModelFormatError(f"corrupt nnc.converters topology record: {type(e).__name__}: "
                                   f"{str(e)[:200]}") from None
        return cls._from_json(obj, source)

    @classmethod
    def _from_json(cls, obj, source: str) -> "TensorRecord":
        """Every field type-checked: a hostile record is a ModelFormatError naming the field, never a crash."""
        def bad(what: str) -> ModelFormatError:
            return ModelFormatError(f"corrupt nnc.converters topology record: {what} (NNR_TPL.topology_data)")

        if not isinstance(obj, dict):
            raise bad(f"a JSON {type(obj).__name__}, not an object")
        if obj.get(META_KEY) != META_VERSION:
            raise ModelFormatError(f"unsupported nnc.converters topology record version {obj.get(META_KEY)!r}")

        def str_map(key: str) -> dict:
            v = obj.get(key, {})
            if not isinstance(v, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
                raise bad(f"'{key}' must map names to strings")
            return dict(v)

        dtypes = str_map("dtypes")
        for name, dt in dtypes.items():
            if dt not in NUMPY_DTYPES:
                raise bad(f"unknown dtype {dt[:40]!r} for tensor {name[:80]!r}")
        shapes = obj.get("shapes", {})
        if not isinstance(shapes, dict):
            raise bad("'shapes' must be an object")
        for name, shp in shapes.items():
            if not isinstance(shp, list) or len(shp) > 64 or not all(
                    type(d) is int and 0 <= d < (1 << 62) for d in shp):
                raise bad(f"'shapes' of {name[:80]!r} must be a list of at most 64 non-negative integers")
        order = obj.get("order", [])
        if not isinstance(order, list) or not all(isinstance(x, str) for x in order):
            raise bad("'order' must be a list of names")
        extra = obj.get("extra", {})
        if not isinstance(extra, dict):
            raise bad("'extra' must be an object")
        meta = extra.get("safetensors_metadata")
        if meta is not None and not isinstance(meta, dict):
            raise bad("'extra.safetensors_metadata' must be an object")
        fmt = obj.get("source_format", source)
        if not isinstance(fmt, str):
            raise bad("'source_format' must be a string")
        return cls(source_format=fmt, dtypes=dtypes, shapes={k: list(v) for k, v in shapes.items()},
                   tied=str_map("tied"), order=list(order), extra=dict(extra))


def restore_array(name: str, arr: np.ndarray, dtype_name: str | None, shape: list[int] | None) -> np.ndarray:
    """Cast a decoded array back to its recorded dtype (bfloat16 stays float32 here) and shape."""
    arr = np.asarray(arr)
    if dtype_name is not None:
        target = numpy_dtype(dtype_name)
        if arr.dtype != target:
            if target == np.bool_:
                arr = arr != 0
            elif target.kind in "iu" and arr.dtype.kind == "f":
                arr = np.rint(arr).astype(target)
            else:
                arr = arr.astype(target)
    elif arr.dtype.kind == "f" and arr.dtype != np.float32 and dtype_name is None:
        pass  # the codec told us the dtype; keep it
    if shape is not None and list(arr.shape) != list(shape):
        if int(np.prod(shape, dtype=np.int64)) != arr.size:
            raise ModelFormatError(f"tensor {name!r}: decoded shape {list(arr.shape)} cannot be restored to {shape}")
        arr = arr.reshape(shape)
    return arr


@dataclass
class PlannedTensor:
    name: str
    array: np.ndarray          # numpy array in the restored dtype (bfloat16 as float32)
    dtype_name: str            # original dtype name, e.g. "bfloat16"
    alias_of: str | None = None


def undo_exact_views(tensors: Mapping[str, np.ndarray], record) -> dict[str, np.ndarray]:
    """Decoded int16 bit views back to the float arrays they carry (see :func:`checkpoint_to_tensors`)."""
    views = (record.extra or {}).get("exact_views") if record is not None else None
    if not views:
        return dict(tensors)
    out = dict(tensors)
    for name, (dtype, shape) in views.items():
        if name not in out:
            continue
        try:
            dt = np.dtype(dtype)
            arr = np.asarray(out[name])
            if dt.kind != "f" or arr.dtype.kind not in "iu":
                raise ValueError(f"{arr.dtype} cannot carry {dtype}")
            bits = arr.astype(np.int16).reshape(-1)
            out[name] = bits.view(dt).reshape([int(d) for d in shape])
        except (TypeError, ValueError) as e:
            raise ModelFormatError(f"tensor {name!r}: exact-view record does not fit the decoded data: {e}") from None
    return out


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)       # numpy builds the name anew on each call: a third of planning a tiny tensor


def plan_restore(tensors: Mapping[str, np.ndarray], record: "TensorRecord | None") -> list[PlannedTensor]:
    """Restored tensors in original order, with aliases (tied tensors) pointing at their canonical entry."""
    record = record or TensorRecord()
    if record.extra.get("exact_views"):
        tensors = undo_exact_views(tensors, record)
    out: dict[str, PlannedTensor] = {}
    for name, arr in tensors.items():
        dt = record.dtypes.get(name)
        restored = restore_array(name, arr, dt, record.shapes.get(name))
        out[name] = PlannedTensor(name, restored, dt or _dtype_name(restored.dtype))
    for alias, canon in record.tied.items():
        if canon not in out:
            raise ModelFormatError(f"tied tensor {alias!r} refers to {canon!r}, which is not in the bitstream")
        c = out[canon]
        out[alias] = PlannedTensor(alias, c.array, c.dtype_name, alias_of=canon)
    if record.order and set(record.order) == set(out):
        return [out[n] for n in record.order]
    return list(out.values())
