"""safetensors reading and writing (the format is simple enough to stream without the library).

Layout: u64 little-endian header length N, N bytes of JSON header (``name -> {dtype, shape, data_offsets}``,
optional ``__metadata__`` of str -> str), then the raw little-endian tensor bytes.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from ..errors import ModelFormatError
from ._common import (TensorRecord, atomic_path, bf16_bits_to_float32, float32_to_bf16_bits, plan_restore)

_ST_TO_NAME = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
               "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
               "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}
_NAME_TO_ST = {v: k for k, v in _ST_TO_NAME.items()}
_STORAGE = {"float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "int64": "<i8",
            "int32": "<i4", "int16": "<i2", "int8": "i1", "uint64": "<u8", "uint32": "<u4", "uint16": "<u2",
            "uint8": "u1", "bool": "?"}
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """Return (arrays with bfloat16 widened to float32, original dtype names, __metadata__)."""
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")
    except OSError as e:
        raise ModelFormatError(f"cannot read safetensors file {path!r}: {e}") from None
    with f:
        head = f.read(8)
        if len(head) != 8:
            raise ModelFormatError(f"{path!r} is not a safetensors file (shorter than 8 bytes)")
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER or n + 8 > size:
            raise ModelFormatError(f"{path!r} is not a valid safetensors file (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ModelFormatError(f"{path!r}: corrupt safetensors header: {e}") from None
        if not isinstance(header, dict):
            raise ModelFormatError(f"{path!r}: safetensors header is not a JSON object")
        data_start = 8 + n
        data_len = size - data_start
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise ModelFormatError(f"{path!r}: __metadata__ is not an object")
        arrays: dict[str, np.ndarray] = {}
        dtypes: dict[str, str] = {}
        for name, info in header.items():
            try:
                st_dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ModelFormatError(f"{path!r}: malformed header entry for {name!r}") from None
            if st_dtype not in _ST_TO_NAME:
                raise ModelFormatError(f"{path!r}: tensor {name!r} has unsupported dtype {st_dtype}")
            dname = _ST_TO_NAME[st_dtype]
            storage = np.dtype(_STORAGE[dname])
            count = int(np.prod(shape, dtype=np.int64))
            if any(d < 0 for d in shape) or not (0 <= begin <= end <= data_len) or end - begin != count * storage.itemsize:
                raise ModelFormatError(f"{path!r}: tensor {name!r} has inconsistent offsets {begin}..{end} for shape "
                                       f"{shape} {st_dtype} (data section {data_len} bytes; truncated file?)")
            f.seek(data_start + begin)
            arr = np.fromfile(f, dtype=storage, count=count)
            if arr.size != count:
                raise ModelFormatError(f"{path!r}: tensor {name!r} is truncated")
            arr = arr.reshape(shape)
            if dname == "bfloat16":
                arr = bf16_bits_to_float32(arr)
            elif storage.byteorder not in ("=", "|") and not storage.isnative:
                arr = arr.astype(storage.newbyteorder("="))
            arrays[name] = arr
            dtypes[name] = dname
    return arrays, dtypes, {str(k): str(v) for k, v in metadata.items()}


def write_safetensors(dest: str, tensors: Mapping[str, np.ndarray], record: TensorRecord | None) -> None:
    planned = plan_restore(tensors, record)
    header: dict = {}
    meta = (record.extra.get("safetensors_metadata") if record else None) or None
    if meta is None and record is not None and record.source_format == "pytorch":
        meta = {"format": "pt"}
    if meta:
        header["__metadata__"] = {str(k): str(v) for k, v in meta.items()}
    offset = 0
    for p in planned:
        if p.dtype_name not in _NAME_TO_ST:
            raise ModelFormatError(f"tensor {p.name!r}: dtype {p.dtype_name} cannot be stored in safetensors")
        nbytes = p.array.size * np.dtype(_STORAGE[p.dtype_name]).itemsize
        header[p.name] = {"dtype": _NAME_TO_ST[p.dtype_name], "shape": list(p.array.shape),
                          "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(len(hb).to_bytes(8, "little"))
            f.write(hb)
            for p in planned:
                if p.dtype_name == "bfloat16":
                    data = float32_to_bf16_bits(p.array)
                else:
                    data = np.ascontiguousarray(p.array, dtype=np.dtype(_STORAGE[p.dtype_name]))
                f.write(data.reshape(-1).view(np.uint8))
