"""safetensors reading and writing (the format is simple enough to stream without the library).

Layout: u64 little-endian header length N, N bytes of JSON header (``name -> {dtype, shape, data_offsets}``,
optional ``__metadata__`` of str -> str), then the raw little-endian tensor bytes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from typing import Mapping

import numpy as np

from .._atomic import write_bytes_atomic
from ..coding.dtypes import bfloat16_dtype, is_bfloat16
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


def _numpy_storage(dname: str) -> np.dtype:
    """The numpy dtype a tensor is read into: bfloat16 as ml_dtypes.bfloat16 (not widened)."""
    if dname == "bfloat16" and bfloat16_dtype() is not None:
        return bfloat16_dtype()
    return np.dtype(_STORAGE[dname])


class SafetensorsFile:
    """The header of one safetensors file, and its tensors read one at a time (``pread`` into a fresh array:
    nothing else of the file is held in memory)."""

    def __init__(self, path: str):
        self.path = path
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
                raise ModelFormatError(f"{path!r} is not a valid safetensors file (header length {n}, file size "
                                       f"{size})")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise ModelFormatError(f"{path!r}: corrupt safetensors header: {e}") from None
        if not isinstance(header, dict):
            raise ModelFormatError(f"{path!r}: safetensors header is not a JSON object")
        self.data_start = 8 + n
        data_len = size - self.data_start
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise ModelFormatError(f"{path!r}: __metadata__ is not an object")
        self.metadata = {str(k): str(v) for k, v in metadata.items()}
        #: name -> (dtype name, shape, begin, end), in header order
        self.entries: dict[str, tuple[str, list[int], int, int]] = {}
        for name, info in header.items():
            try:
                st_dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ModelFormatError(f"{path!r}: malformed header entry for {name!r}") from None
            if not all(type(v) is int for v in (*shape, begin, end)):     # JSON integers only (not 2.5, true, "8")
                raise ModelFormatError(f"{path!r}: tensor {name!r} has a shape or data_offsets that are not integers "
                                       f"(shape {shape}, data_offsets {[begin, end]})")
            if not isinstance(st_dtype, str) or st_dtype not in _ST_TO_NAME:
                raise ModelFormatError(f"{path!r}: tensor {name!r} has unsupported dtype {st_dtype}")
            dname = _ST_TO_NAME[st_dtype]
            storage = np.dtype(_STORAGE[dname])
            count = math.prod(shape)            # Python ints: a hostile shape cannot wrap around to a small count
            if any(d < 0 for d in shape) or not (0 <= begin <= end <= data_len) or \
                    end - begin != count * storage.itemsize:
                raise ModelFormatError(f"{path!r}: tensor {name!r} has inconsistent offsets {begin}..{end} for shape "
                                       f"{shape} {st_dtype} (data section {data_len} bytes; truncated file?)")
            self.entries[name] = (dname, shape, begin, end)
        # every byte of the data section belongs to at most one tensor (the format's rule): overlapping tensors
        # would let a small file expand into many copies of its data
        spans = sorted((b, e, n) for n, (_, _, b, e) in self.entries.items() if e > b)
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise ModelFormatError(f"{path!r}: tensors {n0!r} and {n1!r} overlap in the data section (bytes "
                                       f"{b0}..{e0} and {b1}..{e1}); each byte of a safetensors file belongs to one "
                                       "tensor")

    def read(self, name: str) -> np.ndarray:
        dname, shape, begin, end = self.entries[name]
        storage = np.dtype(_STORAGE[dname])
        raw = np.empty(end - begin, np.uint8)
        try:
            with open(self.path, "rb") as f:
                got = os.preadv(f.fileno(), [raw], self.data_start + begin) if raw.size else 0
        except OSError as e:
            raise ModelFormatError(f"cannot read tensor {name!r} from {self.path!r}: {e}") from None
        if got != raw.size:
            raise ModelFormatError(f"{self.path!r}: tensor {name!r} is truncated")
        arr = raw.view(storage).reshape(shape)
        if dname == "bfloat16":
            return arr.view(_numpy_storage(dname)) if bfloat16_dtype() is not None else bf16_bits_to_float32(arr)
        if storage.byteorder not in ("=", "|") and not storage.isnative:
            arr = arr.astype(storage.newbyteorder("="))
        return arr


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """Return (arrays, original dtype names, __metadata__); bfloat16 tensors are ml_dtypes.bfloat16 arrays."""
    sf = SafetensorsFile(path)
    return ({name: sf.read(name) for name in sf.entries}, {n: e[0] for n, e in sf.entries.items()}, sf.metadata)


def _tensor_bytes(arr: np.ndarray, dtype_name: str) -> np.ndarray:
    """The little-endian bytes of ``arr`` stored as ``dtype_name`` (bfloat16 rounded from wider floats)."""
    if dtype_name == "bfloat16":
        if is_bfloat16(arr.dtype):
            data = np.ascontiguousarray(arr).view(np.uint16)
        else:
            data = float32_to_bf16_bits(arr)
    else:
        data = np.ascontiguousarray(arr, dtype=np.dtype(_STORAGE[dtype_name]))
    return data.reshape(-1).view(np.uint8)


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
                f.write(_tensor_bytes(p.array, p.dtype_name))


# --------------------------------------------------------------------------------------------------
# streaming output: a safetensors file or a Hugging Face sharded folder, written tensor by tensor

INDEX_NAME = "model.safetensors.index.json"


class StreamingSafetensorsWriter:
    """Lays out every tensor's place first (names, dtypes and shapes are known from the NDU headers before
    anything is decoded), then writes each tensor at its offsets as it arrives, in any order; aliases (tied
    tensors) are written from the same array. ``commit()`` renames the temporary files into place (and writes
    the shard index); on any error ``abort()`` removes them, so no partial output is left.

    ``layout``: (name, dtype name, shape, canonical name) in output order. With ``shard_size`` (bytes) the
    tensors are split into ``<stem>-00001-of-0000N.safetensors`` files plus ``<stem>.safetensors.index.json``
    (the Hugging Face layout; ``dest`` a folder: stem ``model``); a tensor larger than ``shard_size`` gets a
    shard of its own.
    """

    def __init__(self, dest: str, layout: list[tuple[str, str, list[int], str]], metadata: dict | None,
                 shard_size: int | None = None, folder: bool = False):
        self._tmp: list[tuple[str, str]] = []       # (temporary path, final path)
        self._files = []
        for name, dname, _, _ in layout:
            if dname not in _NAME_TO_ST:
                raise ModelFormatError(f"tensor {name!r}: dtype {dname} cannot be stored in safetensors")
        sizes = [int(np.prod(shape, dtype=np.int64)) * np.dtype(_STORAGE[d]).itemsize for _, d, shape, _ in layout]
        groups: list[list[int]] = [[]]
        acc = 0
        for i, nbytes in enumerate(sizes):
            if shard_size is not None and groups[-1] and acc + nbytes > shard_size:
                groups.append([])
                acc = 0
            groups[-1].append(i)
            acc += nbytes
        if folder:
            directory, stem = dest, "model"
        else:
            directory, base = os.path.split(os.path.abspath(dest))
            stem = base[:-len(".safetensors")] if base.endswith(".safetensors") else base
        if not os.path.isdir(directory):
            raise ModelFormatError(f"cannot write {dest!r}: directory {directory!r} does not exist")
        sharded = shard_size is not None and len(groups) > 1   # one shard: model.safetensors, no index (as HF)
        n = len(groups)
        names = ([f"{stem}-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)] if sharded
                 else [f"{stem}.safetensors" if folder else os.path.basename(dest)])
        self._index = None
        if sharded:
            weight_map = {layout[i][0]: names[k] for k, g in enumerate(groups) for i in g}
            total = sum(sizes)
            self._index = (os.path.join(directory, f"{stem}.safetensors.index.json"),
                           {"metadata": {"total_size": total}, "weight_map": weight_map})
        #: canonical name -> [(file index, absolute offset, nbytes, dtype name)]
        self._places: dict[str, list[tuple[int, int, int, str]]] = {}
        try:
            for k, g in enumerate(groups):
                header: dict = {}
                if metadata:
                    header["__metadata__"] = {str(a): str(b) for a, b in metadata.items()}
                off = 0
                for i in g:
                    name, dname, shape, _ = layout[i]
                    header[name] = {"dtype": _NAME_TO_ST[dname], "shape": list(shape),
                                    "data_offsets": [off, off + sizes[i]]}
                    off += sizes[i]
                hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
                hb += b" " * (-len(hb) % 8)
                final = os.path.join(directory, names[k])
                fd, tmp = tempfile.mkstemp(prefix=f".{names[k]}.", suffix=".tmp", dir=directory)
                self._tmp.append((tmp, final))
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)    # the mode a plain open() would give, not mkstemp's 0600
                f = os.fdopen(fd, "wb")
                self._files.append(f)
                f.write(len(hb).to_bytes(8, "little"))
                f.write(hb)
                f.truncate(8 + len(hb) + off)
                pos = 8 + len(hb)
                for i in g:
                    name, dname, _, canon = layout[i]
                    self._places.setdefault(canon, []).append((k, pos, sizes[i], dname))
                    pos += sizes[i]
        except BaseException:
            self.abort()
            raise
        self.paths = [final for _, final in self._tmp] + ([self._index[0]] if self._index else [])

    def write(self, name: str, arr: np.ndarray) -> None:
        """Write the decoded ``arr`` of canonical tensor ``name`` (and its aliases)."""
        for k, pos, nbytes, dname in self._places.pop(name, ()):
            data = _tensor_bytes(arr, dname)
            if data.size != nbytes:
                raise ModelFormatError(f"tensor {name!r}: {data.size} bytes decoded, the layout has {nbytes}")
            os.pwrite(self._files[k].fileno(), data, pos) if data.size else None

    def commit(self) -> None:
        if self._places:
            raise ModelFormatError(f"tensors {sorted(self._places)[:3]} were never written")
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for tmp, final in self._tmp:
            os.replace(tmp, final)
        self._tmp = []
        if self._index is not None:
            write_bytes_atomic(self._index[0], (json.dumps(self._index[1], indent=2) + "\n").encode("utf-8"))

    def abort(self) -> None:
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        for tmp, _ in self._tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._tmp = []
