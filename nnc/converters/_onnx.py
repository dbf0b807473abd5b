"""ONNX: split a ModelProto into coded tensors + a weightless graph (NNR_TPL_ONNX), and rebuild it.

Which tensors are coded: every float initializer (FLOAT, FLOAT16, DOUBLE, BFLOAT16) of rank >= 1, in any graph
(subgraphs of If/Loop/Scan included), and the float ``value`` tensors of Constant nodes with at least
``constant_min_elements`` elements. Everything else (integer/bool initializers such as shapes and indices, float
scalars) stays inside the graph and is therefore restored bit-exactly.

Each coded tensor is left in the graph as a placeholder TensorProto: name, dims and data_type are kept, the data
is removed, ``data_location`` is EXTERNAL and ``external_data`` holds ``location = "nnc:bitstream"`` and
``nnc_tensor = <name of the tensor in the bitstream>``.
"""
from __future__ import annotations

import os
from typing import Iterator, Mapping

import numpy as np

from ..errors import ModelFormatError
from ..topology import Topology, TopologyCompressionFormat, TopologyStorageFormat
from ._common import (atomic_path, bf16_from_bits, deflate, float32_to_bf16_bits, topology_payload)

PLACEHOLDER_LOCATION = "nnc:bitstream"
PLACEHOLDER_KEY = "nnc_tensor"
DEFAULT_CONSTANT_MIN_ELEMENTS = 16


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover
        raise ModelFormatError("ONNX support needs the 'onnx' package (pip install 'nnc[onnx]')") from None
    return onnx


def _float_types():
    TP = _onnx().TensorProto
    return {TP.FLOAT: ("float32", "<f4"), TP.FLOAT16: ("float16", "<f2"), TP.DOUBLE: ("float64", "<f8"),
            TP.BFLOAT16: ("bfloat16", "<u2")}


# --------------------------------------------------------------------------------------------------
# walking every tensor slot of a model

def _graphs(graph) -> Iterator:
    """The graph and all its nested subgraphs (depth first)."""
    onnx = _onnx()
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _tensor_slots(model, skip_top_initializers: bool = False) -> Iterator[tuple[object, str, bool]]:
    """(TensorProto, suggested name, is_constant) for every initializer and Constant value in all graphs."""
    for g in _graphs(model.graph):
        if not (skip_top_initializers and g is model.graph):
            for init in g.initializer:
                yield init, init.name, False
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.HasField("t"):
                        yield attr.t, (node.output[0] if node.output else attr.t.name), True


def _is_placeholder(t) -> bool:
    onnx = _onnx()
    return t.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == PLACEHOLDER_LOCATION for e in t.external_data)


def _placeholder_name(t) -> str:
    for e in t.external_data:
        if e.key == PLACEHOLDER_KEY:
            return e.value
    raise ModelFormatError(f"ONNX topology placeholder {t.name!r} names no bitstream tensor")


# --------------------------------------------------------------------------------------------------
# TensorProto <-> numpy for the float types

def _read_external(t, base_dir: str | None, storage: str, count: int) -> np.ndarray:
    info = {e.key: e.value for e in t.external_data}
    if base_dir is None:
        raise ModelFormatError(f"initializer {t.name!r} keeps its data in an external file ({info.get('location')}); "
                               "load the model from its path (nnc.converters.load_model('model.onnx')) so the "
                               "external data can be found")
    loc = info.get("location", "")
    path = os.path.normpath(os.path.join(base_dir, loc))
    if os.path.isabs(loc) or not os.path.abspath(path).startswith(os.path.abspath(base_dir) + os.sep):
        raise ModelFormatError(f"initializer {t.name!r}: external data location {loc!r} escapes the model directory")
    offset = int(info.get("offset", 0) or 0)
    itemsize = np.dtype(storage).itemsize
    length = int(info["length"]) if info.get("length") else count * itemsize
    if length != count * itemsize:
        raise ModelFormatError(f"initializer {t.name!r}: external data length {length} does not match its shape")
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            arr = np.fromfile(f, dtype=storage, count=count)
    except OSError as e:
        raise ModelFormatError(f"initializer {t.name!r}: cannot read external data {path!r}: {e}") from None
    if arr.size != count:
        raise ModelFormatError(f"initializer {t.name!r}: external data file {path!r} is truncated")
    return arr


def _float_tensor_to_numpy(t, base_dir: str | None) -> np.ndarray:
    onnx = _onnx()
    TP = onnx.TensorProto
    name, storage = _float_types()[t.data_type]
    dims = [int(d) for d in t.dims]
    count = int(np.prod(dims, dtype=np.int64))
    if t.data_location == TP.EXTERNAL:
        arr = _read_external(t, base_dir, storage, count)
    elif t.HasField("raw_data"):
        raw = t.raw_data
        if len(raw) != count * np.dtype(storage).itemsize:
            raise ModelFormatError(f"initializer {t.name!r}: raw_data has {len(raw)} bytes, shape {dims} needs "
                                   f"{count * np.dtype(storage).itemsize}")
        arr = np.frombuffer(raw, dtype=storage)
    elif t.data_type == TP.FLOAT:
        arr = np.asarray(t.float_data, dtype=np.float32)
    elif t.data_type == TP.DOUBLE:
        arr = np.asarray(t.double_data, dtype=np.float64)
    else:  # FLOAT16 / BFLOAT16 bit patterns in int32_data
        arr = np.asarray(t.int32_data, dtype=np.int32).astype(np.uint16)
        if name == "float16":
            arr = arr.view(np.float16)
    if arr.size != count:
        raise ModelFormatError(f"initializer {t.name!r}: {arr.size} values for shape {dims}")
    arr = arr.reshape(dims)
    if name == "bfloat16":
        return bf16_from_bits(arr)
    return arr.astype(np.dtype(storage).newbyteorder("="), copy=False)


def _fill_tensor(t, arr: np.ndarray, name: str) -> None:
    """Put ``arr`` into placeholder ``t`` as raw_data in t's own data_type."""
    dname, storage = _float_types()[t.data_type]
    dims = [int(d) for d in t.dims]
    arr = np.asarray(arr)
    if arr.size != int(np.prod(dims, dtype=np.int64)):
        raise ModelFormatError(f"tensor {name!r}: decoded size {arr.size} does not fit ONNX shape {dims}")
    if dname == "bfloat16":
        data = float32_to_bf16_bits(arr)
    else:
        data = np.ascontiguousarray(arr, dtype=storage)
    del t.external_data[:]
    t.ClearField("data_location")
    t.raw_data = data.tobytes()


def _make_placeholder(t, bitstream_name: str) -> None:
    onnx = _onnx()
    for f in ("raw_data", "float_data", "int32_data", "double_data", "int64_data", "uint64_data", "string_data"):
        t.ClearField(f)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", PLACEHOLDER_LOCATION
    e = t.external_data.add()
    e.key, e.value = PLACEHOLDER_KEY, bitstream_name


# --------------------------------------------------------------------------------------------------
# split

def split_model(model, *, base_dir: str | None = None, constant_min_elements: int = DEFAULT_CONSTANT_MIN_ELEMENTS,
                tensors: dict[str, np.ndarray] | None = None, skip_top_initializers: bool = False
                ) -> tuple[dict[str, np.ndarray], Topology]:
    """Move the coded tensors out of ``model`` (modified in place) and return (tensors, topology).

    ``tensors`` may already hold the top-level initializers extracted by :func:`load_onnx_file`.
    """
    onnx = _onnx()
    TP = onnx.TensorProto
    floats = _float_types()
    if not model.HasField("graph") or not model.opset_import:
        raise ModelFormatError("not a valid ONNX model: no graph or no opset_import (truncated or not ONNX?)")
    tensors = {} if tensors is None else tensors
    used: set[str] = set(tensors)
    for t, suggested, is_const in _tensor_slots(model, skip_top_initializers=skip_top_initializers):
        if _is_placeholder(t):
            raise ModelFormatError(f"tensor {t.name!r} is already an nnc placeholder (model was split before)")
        if t.data_type not in floats or len(t.dims) == 0:
            if t.data_location == TP.EXTERNAL:  # keep non-coded tensors self-contained in the topology
                _load_external_inplace(t, base_dir)
            continue
        count = int(np.prod([int(d) for d in t.dims], dtype=np.int64))
        if is_const and count < constant_min_elements:
            continue
        name = _unique(suggested or "tensor", used)
        tensors[name] = _float_tensor_to_numpy(t, base_dir)
        _make_placeholder(t, name)  # drops the weight bytes held by the proto
    _check_stripped(model)
    data = model.SerializeToString()
    return tensors, Topology(int(TopologyStorageFormat.NNR_TPL_ONNX), int(TopologyCompressionFormat.NNR_DFL),
                             deflate(data))


def _unique(name: str, used: set[str]) -> str:
    if name in used:
        k = 1
        while f"{name}#{k}" in used:
            k += 1
        name = f"{name}#{k}"
    used.add(name)
    return name


def _load_external_inplace(t, base_dir):
    if base_dir is None:
        raise ModelFormatError(f"tensor {t.name!r} keeps its data in an external file; load the model from its path")
    from onnx.external_data_helper import load_external_data_for_tensor
    try:
        load_external_data_for_tensor(t, base_dir)
    except Exception as e:
        raise ModelFormatError(f"tensor {t.name!r}: cannot load external data: {e}") from None
    t.ClearField("data_location")
    del t.external_data[:]


def _check_stripped(model) -> None:
    """onnx.checker on a copy of the weightless model whose placeholders are given empty shapes."""
    onnx = _onnx()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for t, _, _ in _tensor_slots(probe):
        if _is_placeholder(t):
            del t.external_data[:]
            t.ClearField("data_location")
            del t.dims[:]
            t.dims.append(0)
    try:
        onnx.checker.check_model(probe)
    except onnx.checker.ValidationError as e:
        raise ModelFormatError(f"not a valid ONNX model: {str(e).splitlines()[0]}") from None


# --------------------------------------------------------------------------------------------------
# reading a model file without materialising its weights inside a protobuf message

class _Truncated(Exception):
    pass


def _varint_at(read, pos: int, end: int) -> tuple[int, int]:
    chunk = read(pos, min(10, end - pos))
    result = shift = 0
    for i, b in enumerate(chunk):
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos + i + 1
        shift += 7
    raise _Truncated(pos)


def _fields(read, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, value end) of each field in [start, end)."""
    pos = start
    while pos < end:
        key, vpos = _varint_at(read, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise _Truncated(pos)
        if wt == 0:
            _, vend = _varint_at(read, vpos, end)
        elif wt == 1:
            vend = vpos + 8
        elif wt == 5:
            vend = vpos + 4
        elif wt == 2:
            n, vpos = _varint_at(read, vpos, end)
            vend = vpos + n
        else:
            raise _Truncated(pos)
        if vend > end:
            raise _Truncated(pos)
        yield num, wt, pos, vpos, vend
        pos = vend


_RAW_DATA_FIELD = 9


def _top_initializer(b: bytes, base_dir: str, tensors: dict, used: set):
    """Parse one serialized top-level initializer; coded float tensors become placeholders (zero-copy arrays)."""
    onnx = _onnx()
    floats = _float_types()
    read = lambda p, n: b[p:p + n]  # noqa: E731
    raw = None
    for num, wt, fs, vs, ve in _fields(read, 0, len(b)):
        if num == _RAW_DATA_FIELD and wt == 2:
            raw = (fs, vs, ve)
    t = onnx.TensorProto()
    t.ParseFromString(b if raw is None else b[:raw[0]] + b[raw[2]:])
    if t.data_type not in floats or len(t.dims) == 0:
        if raw is not None:
            t.raw_data = b[raw[1]:raw[2]]
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _load_external_inplace(t, base_dir)
        return t
    name = _unique(t.name or "tensor", used)
    if raw is not None and t.data_location != onnx.TensorProto.EXTERNAL:
        dname, storage = floats[t.data_type]
        dims = [int(d) for d in t.dims]
        count = int(np.prod(dims, dtype=np.int64))
        if raw[2] - raw[1] != count * np.dtype(storage).itemsize:
            raise ModelFormatError(f"initializer {t.name!r}: raw_data has {raw[2] - raw[1]} bytes, shape {dims} "
                                   f"needs {count * np.dtype(storage).itemsize}")
        arr = np.frombuffer(b, dtype=storage, count=count, offset=raw[1]).reshape(dims)
        arr = bf16_from_bits(arr) if dname == "bfloat16" else arr.astype(np.dtype(storage).newbyteorder("="),
                                                                                copy=False)
    else:
        full = onnx.TensorProto()
        full.ParseFromString(b)
        arr = _float_tensor_to_numpy(full, base_dir)
    tensors[name] = arr
    _make_placeholder(t, name)
    return t


def load_onnx_file(path: str, *, constant_min_elements: int = DEFAULT_CONSTANT_MIN_ELEMENTS):
    """Split a model file. Peak memory: the coded tensors plus one serialized initializer at a time."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError
    if not os.path.isfile(path):
        raise ModelFormatError(f"cannot read {path!r}: no such file")
    base_dir = os.path.dirname(os.path.abspath(path))
    size = os.path.getsize(path)
    tensors: dict[str, np.ndarray] = {}
    used: set[str] = set()
    try:
        with open(path, "rb") as f:
            def read(p, n):
                f.seek(p)
                return f.read(n)
            head, graphs = [], []
            for num, wt, fs, vs, ve in _fields(read, 0, size):
                if num == 7 and wt == 2:
                    graphs.append((vs, ve))
                else:
                    head.append(read(fs, ve - fs))
            model = onnx.ModelProto()
            model.ParseFromString(b"".join(head))
            inits = []
            for gs, ge in graphs:
                rest = []
                for num, wt, fs, vs, ve in _fields(read, gs, ge):
                    if num == 5 and wt == 2:
                        inits.append((vs, ve))
                    else:
                        rest.append(read(fs, ve - fs))
                model.graph.MergeFromString(b"".join(rest))
            if not graphs:
                raise ModelFormatError(f"{path!r} is not an ONNX model (no graph)")
            for vs, ve in inits:
                model.graph.initializer.append(_top_initializer(read(vs, ve - vs), base_dir, tensors, used))
    except _Truncated as e:
        raise ModelFormatError(f"{path!r} is not a valid ONNX model: malformed or truncated protobuf near byte "
                               f"{e.args[0]}") from None
    except (DecodeError, RuntimeError) as e:
        raise ModelFormatError(f"{path!r} is not a valid ONNX model (truncated or corrupt?): {e}") from None
    except OSError as e:
        raise ModelFormatError(f"cannot read {path!r}: {e}") from None
    return split_model(model, base_dir=base_dir, constant_min_elements=constant_min_elements, tensors=tensors,
                       skip_top_initializers=True)


def from_onnx(model, *, constant_min_elements: int = DEFAULT_CONSTANT_MIN_ELEMENTS):
    """Split an in-memory ModelProto (left unchanged) into (tensors, topology)."""
    onnx = _onnx()
    if not isinstance(model, onnx.ModelProto):
        raise ModelFormatError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return split_model(copy, constant_min_elements=constant_min_elements)


# --------------------------------------------------------------------------------------------------
# rebuild

def is_onnx_topology(topology: Topology | None) -> bool:
    return topology is not None and topology.storage_format == TopologyStorageFormat.NNR_TPL_ONNX


def parse_topology(topology: Topology):
    onnx = _onnx()
    from google.protobuf.message import DecodeError
    if not is_onnx_topology(topology):
        raise ModelFormatError("the bitstream carries no ONNX topology (NNR_TPL_ONNX); an .onnx file cannot be "
                               "rebuilt from it. Choose .safetensors, .pt or .npz instead.")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(topology_payload(topology))
    except DecodeError as e:
        raise ModelFormatError(f"corrupt ONNX topology in the bitstream: {e}") from None
    return model


def tensor_dtypes(topology: Topology) -> dict[str, str]:
    """Bitstream tensor name -> original dtype name, from the placeholders of an ONNX topology."""
    model = parse_topology(topology)
    floats = _float_types()
    out = {}
    for t, _, _ in _tensor_slots(model):
        if _is_placeholder(t):
            out[_placeholder_name(t)] = floats[t.data_type][0]
    return out


def tensor_shapes(topology: Topology) -> dict[str, list[int]]:
    model = parse_topology(topology)
    return {_placeholder_name(t): [int(d) for d in t.dims] for t, _, _ in _tensor_slots(model) if _is_placeholder(t)}


def _lookup(tensors: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    try:
        return tensors[name]
    except KeyError:
        raise ModelFormatError(f"the ONNX topology needs tensor {name!r}, which is not among the decoded tensors") from None


def to_onnx(tensors: Mapping[str, np.ndarray], topology: Topology):
    """Rebuild a complete in-memory ModelProto."""
    model = parse_topology(topology)
    for t, _, _ in _tensor_slots(model):
        if _is_placeholder(t):
            name = _placeholder_name(t)
            _fill_tensor(t, _lookup(tensors, name), name)
    return model


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_GRAPH_TAG = bytes([(7 << 3) | 2])        # ModelProto.graph, length-delimited
_INITIALIZER_TAG = bytes([(5 << 3) | 2])  # GraphProto.initializer, length-delimited
_PROTO_LIMIT = 2 ** 31 - 1


def write_onnx_file(dest: str, tensors: Mapping[str, np.ndarray], topology: Topology) -> None:
    """Write the rebuilt model without ever holding it serialized in memory.

    Protobuf allows a message's fields in any order, so the file is written as: the ModelProto without its graph,
    then the graph field, whose body is the graph without top-level initializers followed by each initializer,
    serialized one at a time. Peak memory is the decoded tensors plus the largest single initializer.
    """
    onnx = _onnx()
    model = parse_topology(topology)
    # fill placeholders nested in subgraphs and Constant nodes in place (they are part of the graph body)
    for t, _, _ in _tensor_slots(model, skip_top_initializers=True):
        if _is_placeholder(t):
            name = _placeholder_name(t)
            _fill_tensor(t, _lookup(tensors, name), name)
    inits = onnx.GraphProto()
    inits.initializer.extend(model.graph.initializer)  # copies the (small, data-less) placeholders
    del model.graph.initializer[:]
    graph_body = model.graph.SerializeToString()
    model.ClearField("graph")
    head = model.SerializeToString()

    # each top-level initializer: (serialized metadata without raw_data, array to append as raw_data or None)
    items = []
    for t in inits.initializer:
        if _is_placeholder(t):
            name = _placeholder_name(t)
            meta = onnx.TensorProto()
            meta.CopyFrom(t)
            del meta.external_data[:]
            meta.ClearField("data_location")
            items.append((meta.SerializeToString(), _raw_array(meta, _lookup(tensors, name), name)))
        else:
            items.append((t.SerializeToString(), None))

    def body_len(meta: bytes, arr) -> int:
        if arr is None:
            return len(meta)
        return len(meta) + 1 + len(_varint(arr.nbytes)) + arr.nbytes

    graph_len = len(graph_body) + sum(1 + len(_varint(body_len(m, a))) + body_len(m, a) for m, a in items)
    total = len(head) + 1 + len(_varint(graph_len)) + graph_len
    if total > _PROTO_LIMIT:
        raise ModelFormatError(f"the rebuilt ONNX model would be {total} bytes, over protobuf's 2 GiB limit; "
                               "save it as .safetensors instead")
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(head)
            f.write(_GRAPH_TAG + _varint(graph_len))
            f.write(graph_body)
            for meta, arr in items:
                f.write(_INITIALIZER_TAG + _varint(body_len(meta, arr)))
                f.write(meta)
                if arr is not None:
                    f.write(_RAW_TAG + _varint(arr.nbytes))
                    data = arr.stored()
                    f.write(data.reshape(-1).view(np.uint8))
                    del data


_RAW_TAG = bytes([(9 << 3) | 2])  # TensorProto.raw_data


class _RawPayload:
    """A decoded array to be written as the raw_data of a TensorProto of ``data_type``."""

    def __init__(self, arr: np.ndarray, data_type: int):
        self.arr = arr
        self.dname, self.storage = _float_types()[data_type]
        self.nbytes = arr.size * np.dtype(self.storage).itemsize

    def stored(self) -> np.ndarray:
        if self.dname == "bfloat16":
            return float32_to_bf16_bits(np.asarray(self.arr))
        return np.ascontiguousarray(self.arr, dtype=self.storage)


def _raw_array(t, arr: np.ndarray, name: str) -> _RawPayload:
    dims = [int(d) for d in t.dims]
    arr = np.asarray(arr)
    if arr.size != int(np.prod(dims, dtype=np.int64)):
        raise ModelFormatError(f"tensor {name!r}: decoded size {arr.size} does not fit ONNX shape {dims}")
    return _RawPayload(arr, t.data_type)
