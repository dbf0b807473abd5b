"""ONNX: split a ModelProto into coded tensors + a weightless graph (NNR_TPL_ONNX), and rebuild it.

Which tensors are coded: every float initializer (FLOAT, FLOAT16, DOUBLE, BFLOAT16) of rank >= 1 with at least
``small_tensor_elements`` elements, in any graph (subgraphs of If/Loop/Scan included), and the float ``value``
tensors of Constant nodes with at least ``constant_min_elements`` elements, unless the tensor must be exact: it
reaches a shape-like input (Resize scales/sizes, Reshape shape, Slice starts/ends, Pad pads, Expand, Tile,
ConstantOfShape, TopK k, axes, Clip bounds...; :data:`SHAPE_LIKE_INPUTS`, followed back through Cast, Identity,
Concat and other shape arithmetic) or it is a quantisation scale or zero point. Integer weights of quantised
models (the int8/uint8/int16/int32 inputs of DequantizeLinear, QLinearConv, QLinearMatMul, MatMulInteger,
ConvInteger, QGemm...; :data:`QUANT_WEIGHT_INPUTS`) are coded as NNC integers (lossless) with their zero point
subtracted (per tensor or per channel; recorded in the placeholder and added back on decode). Everything else
(shapes and indices, small tensors, float scalars) stays inside the graph and is restored bit-exactly.

Each coded tensor is left in the graph as a placeholder TensorProto: name, dims and data_type are kept, the data
is removed, ``data_location`` is EXTERNAL and ``external_data`` holds ``location = "nnc:bitstream"`` and
``nnc_tensor = <name of the tensor in the bitstream>``. Integer weights with fewer than
:data:`INTEGER_GROUP_BELOW` elements are coded together: concatenated into group tensors, each member's
placeholder recording ``nnc_group = {"tensor": <group tensor>, "offset": <first element>}`` (plus
``"low": <tensor>, "bits": k`` when the group's ``k`` low bits are coded as a tensor of their own).
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Mapping

import numpy as np

from ..coding.tools.ratecontrol import payload_bits
from ..config import EncoderConfig
from ..errors import ModelFormatError
from ..topology import Topology, TopologyCompressionFormat, TopologyStorageFormat
from ._common import (atomic_path, bf16_from_bits, deflate, float32_to_bf16_bits, topology_payload)

PLACEHOLDER_LOCATION = "nnc:bitstream"
PLACEHOLDER_KEY = "nnc_tensor"
PLACEHOLDER_ZERO_POINT = "nnc_zero_point"
PLACEHOLDER_GROUP = "nnc_group"
#: integer weights with fewer elements are coded together, concatenated into group tensors (one NDU per group):
#: a tensor of a few thousand 8-bit levels otherwise pays its own NDU header, context-parameter signalling and
#: context warm-up, which together cost more than deflate's overhead on the same bytes (docs/converters.md)
INTEGER_GROUP_BELOW = 1 << 16
#: most elements of one group tensor (groups are coded in parallel with the other tensors)
INTEGER_GROUP_MAX = 1 << 20
DEFAULT_CONSTANT_MIN_ELEMENTS = 16
#: float tensors with fewer elements (epsilons, clip bounds, tiny biases) stay in the graph, exact
DEFAULT_SMALL_TENSOR_ELEMENTS = 16


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


def _int_types():
    """Integer element types whose initializers may be coded as NNC integers (they fit int32)."""
    TP = _onnx().TensorProto
    return {TP.INT8: ("int8", "<i1"), TP.UINT8: ("uint8", "<u1"), TP.INT16: ("int16", "<i2"),
            TP.UINT16: ("uint16", "<u2"), TP.INT32: ("int32", "<i4")}


def _coded_types():
    return {**_float_types(), **_int_types()}


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
    """The tensor's own name: the bitstream tensor, or its name inside a group tensor (:func:`_group_of`)."""
    for e in t.external_data:
        if e.key == PLACEHOLDER_KEY:
            return e.value
    raise ModelFormatError(f"ONNX topology placeholder {t.name!r} names no bitstream tensor")


def _group_of(t) -> tuple[str, int, str | None, int] | None:
    """(group tensor, element offset, low-bits tensor or None, low bits) of a placeholder coded inside a group
    tensor, or None. With low bits ``k``, the levels are ``group << k | low`` (:func:`_group_integer_weights`)."""
    for e in t.external_data:
        if e.key == PLACEHOLDER_GROUP:
            try:
                obj = json.loads(e.value)
                name, offset = obj["tensor"], obj["offset"]
                low, bits = obj.get("low"), obj.get("bits", 0)
                if not isinstance(name, str) or isinstance(offset, bool) or not isinstance(offset, int) \
                        or offset < 0:
                    raise ValueError("tensor must be a string and offset an int >= 0")
                if (low is None) != (bits == 0) or low is not None and (
                        not isinstance(low, str) or isinstance(bits, bool) or not isinstance(bits, int)
                        or not 1 <= bits <= 7):
                    raise ValueError("low must be a tensor name with bits 1..7, or absent")
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise ModelFormatError(f"ONNX topology placeholder {t.name!r}: bad group record: {err}") from None
            return name, offset, low, bits
    return None


def _bitstream_names(t) -> list[str]:
    """The bitstream tensors that hold placeholder ``t``'s data (its group tensors when it is grouped)."""
    g = _group_of(t)
    if g is None:
        return [_placeholder_name(t)]
    return [g[0]] if g[2] is None else [g[0], g[2]]


def _bitstream_name(t) -> str:
    """The bitstream tensor that holds placeholder ``t``'s data (its group tensor when it is grouped)."""
    return _bitstream_names(t)[0]


def _group_part(tensors: Mapping[str, np.ndarray], t, name: str, offset: int, count: int) -> np.ndarray:
    whole = np.asarray(_lookup(tensors, name)).reshape(-1)
    if offset + count > whole.size:
        raise ModelFormatError(f"tensor {_placeholder_name(t)!r}: elements {offset}..{offset + count - 1} of group "
                               f"tensor {name!r} are needed, it has {whole.size}")
    if whole.dtype.kind not in "iu":
        raise ModelFormatError(f"group tensor {name!r}: the ONNX graph expects integers, decoded {whole.dtype}")
    return whole[offset:offset + count]


def _slot_value(tensors: Mapping[str, np.ndarray], t) -> np.ndarray:
    """The decoded array of placeholder ``t``: its own bitstream tensor, or its slice of a group tensor."""
    g = _group_of(t)
    if g is None:
        return _lookup(tensors, _placeholder_name(t))
    name, offset, low, bits = g
    dims = [int(d) for d in t.dims]
    count = int(np.prod(dims, dtype=np.int64))
    part = _group_part(tensors, t, name, offset, count)
    if low is not None:
        lo = _group_part(tensors, t, low, offset, count).astype(np.int64)
        if lo.size and (lo.min() < 0 or lo.max() >= 1 << bits):
            raise ModelFormatError(f"tensor {_placeholder_name(t)!r}: low-bits tensor {low!r} holds values outside "
                                   f"0..{(1 << bits) - 1}")
        part = (part.astype(np.int64) << bits) | lo
    return part.reshape(dims)


# --------------------------------------------------------------------------------------------------
# TensorProto <-> numpy for the float types

def _read_external(t, base_dir: str | None, storage: str, count: int) -> np.ndarray:
    info = {e.key: e.value for e in t.external_data}
    if base_dir is None:
        raise ModelFormatError(f"initializer {t.name!r} keeps its data in an external file ({info.get('location')}); "
                               "load the model from its path (nnc.converters.load_model('model.onnx')) so the "
                               "external data can be found")
    loc = info.get("location", "")
    path = _external_path(t.name, base_dir, loc)
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise ModelFormatError(f"initializer {t.name!r}: external data offset/length are not integers") from None
    itemsize = np.dtype(storage).itemsize
    length = count * itemsize if length is None else length
    if offset < 0:
        raise ModelFormatError(f"initializer {t.name!r}: negative external data offset {offset}")
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


def _external_path(name: str, base_dir: str, loc: str) -> str:
    """The external data file of initializer ``name``, symlinks resolved; refused unless it lies inside the
    model's folder (as onnx's own loader does), whatever the links say."""
    path = os.path.normpath(os.path.join(base_dir, loc))
    if not loc or os.path.isabs(loc) or "\x00" in loc or \
            not os.path.abspath(path).startswith(os.path.abspath(base_dir) + os.sep):
        raise ModelFormatError(f"initializer {name!r}: external data location {loc!r} escapes the model directory")
    real, real_base = os.path.realpath(path), os.path.realpath(base_dir)
    if not real.startswith(real_base + os.sep):
        raise ModelFormatError(f"initializer {name!r}: external data location {loc!r} is a symbolic link (or under "
                               f"one) that leads outside the model directory, to {real!r}")
    return real


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


def _zero_point_of(t) -> tuple[int | str, np.ndarray] | None:
    """(axis, zero points) recorded in an integer placeholder, or None."""
    for e in t.external_data:
        if e.key == PLACEHOLDER_ZERO_POINT:
            try:
                obj = json.loads(e.value)
                axis = obj["axis"]
                values = np.asarray(obj["values"], dtype=np.int64)
                if values.ndim != 1 or not (isinstance(axis, int) and not isinstance(axis, bool)):
                    raise ValueError("axis must be an int and values a list of ints")
            except (ValueError, KeyError, TypeError) as err:
                raise ModelFormatError(f"ONNX topology placeholder {t.name!r}: bad zero point record: {err}") from None
            return axis, values
    return None


def _with_zero_point(t, arr: np.ndarray, name: str) -> np.ndarray:
    """Decoded integer levels + the placeholder's zero point, checked against t's integer type."""
    dname, storage = _int_types()[t.data_type]
    dims = [int(d) for d in t.dims]
    arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise ModelFormatError(f"tensor {name!r}: the ONNX graph expects integers ({dname}), decoded {arr.dtype}")
    arr = arr.reshape(dims).astype(np.int64)
    zp = _zero_point_of(t)
    if zp is not None:
        axis, values = zp
        if values.size == 1:
            arr = arr + values[0]
        else:
            if not -len(dims) <= axis < len(dims) or dims[axis] != values.size:
                raise ModelFormatError(f"tensor {name!r}: {values.size} zero points do not fit axis {axis} of "
                                       f"shape {dims}")
            shape = [1] * len(dims)
            shape[axis] = values.size
            arr = arr + values.reshape(shape)
    info = np.iinfo(np.dtype(storage))
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ModelFormatError(f"tensor {name!r}: decoded values {int(arr.min())}..{int(arr.max())} do not fit "
                               f"{dname}")
    return arr.astype(np.dtype(storage).newbyteorder("<"))


def _fill_tensor(t, arr: np.ndarray, name: str) -> None:
    """Put ``arr`` into placeholder ``t`` as raw_data in t's own data_type."""
    if t.data_type in _int_types():
        data = _with_zero_point(t, arr, name)
        del t.external_data[:]
        t.ClearField("data_location")
        t.raw_data = data.tobytes()
        return
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


def _make_placeholder(t, bitstream_name: str, zero_point: tuple[int, np.ndarray] | None = None,
                      group: tuple | None = None) -> None:
    onnx = _onnx()
    for f in ("raw_data", "float_data", "int32_data", "double_data", "int64_data", "uint64_data", "string_data"):
        t.ClearField(f)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", PLACEHOLDER_LOCATION
    e = t.external_data.add()
    e.key, e.value = PLACEHOLDER_KEY, bitstream_name
    if zero_point is not None:
        e = t.external_data.add()
        e.key = PLACEHOLDER_ZERO_POINT
        e.value = json.dumps({"axis": int(zero_point[0]), "values": [int(v) for v in zero_point[1].reshape(-1)]},
                             separators=(",", ":"))
    if group is not None:
        e = t.external_data.add()
        e.key = PLACEHOLDER_GROUP
        rec = {"tensor": group[0], "offset": int(group[1])}
        if len(group) > 2 and group[2] is not None:
            rec.update(low=group[2], bits=int(group[3]))
        e.value = json.dumps(rec, separators=(",", ":"))


# --------------------------------------------------------------------------------------------------
# tensors that must come back exactly (shape-like inputs, quantisation parameters) and integer weights

#: inputs (by position) of standard operators that are shapes, sizes, axes, indices, counts or thresholds:
#: a tensor reaching one of them is kept in the graph (exact), never quantised
SHAPE_LIKE_INPUTS: dict[str, tuple[int, ...]] = {
    "Resize": (1, 2, 3), "Upsample": (1,), "Reshape": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
    "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "TopK": (1,), "Unsqueeze": (1,), "Squeeze": (1,),
    "Split": (1,), "Range": (0, 1, 2), "OneHot": (1, 2), "Gather": (1,), "GatherElements": (1,),
    "GatherND": (1,), "ScatterND": (1,), "ScatterElements": (1,), "Scatter": (1,), "NonMaxSuppression": (2, 3, 4),
    "CumSum": (1,), "Trilu": (1,), "RoiAlign": (1, 2), "MaxUnpool": (1, 2), "ReduceSum": (1,), "ReduceMean": (1,),
    "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,),
    "ReduceLogSum": (1,), "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,), "Clip": (1, 2), "Dropout": (1, 2),
    "DFT": (1, 2), "STFT": (1, 3), "Col2Im": (1, 2), "CenterCropPad": (1,), "Loop": (0, 1), "If": (0,),
    "AffineGrid": (1,), "BitShift": (1,), "Pow": (1,),
    "Compress": (1,), "ReverseSequence": (1,),
}

#: operators of quantised models: their scale and zero-point inputs are kept exact, and their integer weight
#: inputs are coded as NNC integers with the zero point at ``zero point input`` removed along ``axis``
#: (``None``: the axis attribute of the node, default 1; ``"last"``: the last dimension)
QUANT_WEIGHT_INPUTS: dict[str, tuple[tuple[int, int | None, object], ...]] = {
    # (weight input, its zero-point input or None, axis rule)
    "DequantizeLinear": ((0, 2, None),),
    "QLinearConv": ((3, 5, 0), (8, None, 0)),
    "QLinearMatMul": ((0, 2, 0), (3, 5, "last")),
    "MatMulInteger": ((0, 2, 0), (1, 3, "last")),
    "ConvInteger": ((1, 3, 0),),
    "QGemm": ((0, 2, 0), (3, 5, "gemm_b"), (6, None, 0)),
    "MatMulIntegerToFloat": ((1, 5, "last"),),
    "DynamicQuantizeMatMul": ((1, 3, "last"),),
    "DynamicQuantizeLSTM": ((1, 9, "last"), (2, 11, "last")),
    "QAttention": ((1, 7, "last"),),
    "Gather": ((0, None, 0),),        # an int8 embedding table (dequantized after the lookup)
}
_QUANT_OPS = set(QUANT_WEIGHT_INPUTS) | {"QuantizeLinear", "DynamicQuantizeLinear"}

#: operators through which a shape-like value is followed back to the constants it is computed from
_SHAPE_ARITHMETIC = {
    "Cast", "CastLike", "Identity", "Concat", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Gather",
    "GatherElements", "Slice", "Mul", "Add", "Sub", "Div", "Mod", "Floor", "Ceil", "Round", "Max", "Min", "Abs",
    "Neg", "Sqrt", "Pow", "Range", "Expand", "Tile", "Where", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "Not", "And", "Or", "Sign", "Clip", "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin",
    "ConstantOfShape", "Transpose", "Split", "Sum", "Mean", "Reciprocal", "Exp", "Log", "SequenceAt",
    "SequenceConstruct", "ConcatFromSequence", "Optional", "OptionalGetElement", "If",
}
#: outputs that do not depend on their inputs' values: the walk stops there
_VALUE_FREE = {"Shape", "Size", "EyeLike", "RandomNormalLike", "RandomUniformLike"}


class _Scope:
    """Value name -> producing node, for one graph and the graphs around it."""

    def __init__(self, graph, parent: "_Scope | None"):
        self.parent = parent
        self.producer = {o: n for n in graph.node for o in n.output if o}

    def find(self, name: str):
        s = self
        while s is not None:
            n = s.producer.get(name)
            if n is not None:
                return n, s
            s = s.parent
        return None, None


def _subgraphs(node):
    onnx = _onnx()
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _walk_scopes(graph, parent=None):
    scope = _Scope(graph, parent)
    yield graph, scope
    for node in graph.node:
        for g in _subgraphs(node):
            yield from _walk_scopes(g, scope)


def exact_value_names(model) -> set[str]:
    """Names of the values (initializers, Constant outputs, graph inputs) that reach a shape-like input
    (:data:`SHAPE_LIKE_INPUTS`) or a quantisation parameter, followed back through shape arithmetic
    (:data:`_SHAPE_ARITHMETIC`; Cast, Identity, Concat, ...) and If branches. Names from all graph scopes."""
    exact: set[str] = set()
    seen: set[tuple[int, str]] = set()
    stack: list[tuple[str, _Scope]] = []
    for graph, scope in _walk_scopes(model.graph):
        for node in graph.node:
            slots = SHAPE_LIKE_INPUTS.get(node.op_type, ())
            if node.op_type in _QUANT_OPS:
                weights = {w for w, _, _ in QUANT_WEIGHT_INPUTS.get(node.op_type, ())}
                slots = tuple(i for i in range(len(node.input)) if i not in weights and i > 0
                              or node.op_type == "QuantizeLinear" and i > 0)
            for i in slots:
                if i < len(node.input) and node.input[i]:
                    stack.append((node.input[i], scope))
    while stack:
        name, scope = stack.pop()
        key = (id(scope), name)
        if key in seen:
            continue
        seen.add(key)
        node, where = scope.find(name)
        if node is None:                       # an initializer, a graph input or an outer value
            exact.add(name)
            continue
        if node.op_type == "Constant" or node.op_type in _VALUE_FREE:
            exact.add(name)
            continue
        if node.op_type not in _SHAPE_ARITHMETIC:
            continue
        if node.op_type == "If":
            k = list(node.output).index(name)
            for g in _subgraphs(node):
                sub = _Scope(g, where)
                if k < len(g.output):
                    stack.append((g.output[k].name, sub))
            stack.append((node.input[0], where))
            continue
        for inp in node.input:
            if inp:
                stack.append((inp, where))
    return exact


def integer_weight_slots(model) -> dict[str, list[tuple[str | None, object, tuple]]]:
    """Integer weight value name -> [(zero-point value name or None, axis rule, (op_type, input index))] over
    the quantisation operators that consume it (:data:`QUANT_WEIGHT_INPUTS`)."""
    out: dict[str, list] = {}
    for graph, _ in _walk_scopes(model.graph):
        for node in graph.node:
            for w, zp, axis in QUANT_WEIGHT_INPUTS.get(node.op_type, ()):
                if w >= len(node.input) or not node.input[w]:
                    continue
                zname = node.input[zp] if zp is not None and zp < len(node.input) and node.input[zp] else None
                if axis is None:
                    attrs = {a.name: a for a in node.attribute}
                    if "block_size" in attrs and attrs["block_size"].i:
                        axis = "blocked"
                    else:
                        axis = attrs["axis"].i if "axis" in attrs else 1
                elif axis == "gemm_b":
                    attrs = {a.name: a for a in node.attribute}
                    axis = 0 if ("transB" in attrs and attrs["transB"].i) else "last"
                out.setdefault(node.input[w], []).append((zname, axis, (node.op_type, w)))
    return out


# --------------------------------------------------------------------------------------------------
# split

def split_model(model, *, base_dir: str | None = None, constant_min_elements: int = DEFAULT_CONSTANT_MIN_ELEMENTS,
                tensors: dict[str, np.ndarray] | None = None, skip_top_initializers: bool = False,
                small_tensor_elements: int = DEFAULT_SMALL_TENSOR_ELEMENTS, exact: set[str] | None = None
                ) -> tuple[dict[str, np.ndarray], Topology]:
    """Move the coded tensors out of ``model`` (modified in place) and return (tensors, topology).

    ``tensors`` may already hold the top-level float initializers extracted by :func:`load_onnx_file`.
    """
    onnx = _onnx()
    TP = onnx.TensorProto
    floats = _float_types()
    if not model.HasField("graph") or not model.opset_import:
        raise ModelFormatError("not a valid ONNX model: no graph or no opset_import (truncated or not ONNX?)")
    tensors = {} if tensors is None else tensors
    used: set[str] = set(tensors)
    exact = exact_value_names(model) if exact is None else exact
    for t, suggested, is_const in _tensor_slots(model, skip_top_initializers=skip_top_initializers):
        if _is_placeholder(t):
            raise ModelFormatError(f"tensor {t.name!r} is already an nnc placeholder (model was split before)")
        if t.data_type not in floats or len(t.dims) == 0 or not _codes_float(
                t, suggested, is_const, exact, constant_min_elements, small_tensor_elements):
            if t.data_location == TP.EXTERNAL:  # keep non-coded tensors self-contained in the topology
                _load_external_inplace(t, base_dir)
            continue
        name = _unique(suggested or "tensor", used)
        tensors[name] = _float_tensor_to_numpy(t, base_dir)
        _make_placeholder(t, name)  # drops the weight bytes held by the proto
    _split_integer_weights(model, tensors, used, exact, small_tensor_elements, base_dir)
    _check_stripped(model)
    data = model.SerializeToString()
    return tensors, Topology(int(TopologyStorageFormat.NNR_TPL_ONNX), int(TopologyCompressionFormat.NNR_DFL),
                             deflate(data))


def _codes_float(t, value_name: str, is_const: bool, exact: set[str], constant_min_elements: int,
                 small_tensor_elements: int) -> bool:
    """Whether a float tensor of rank >= 1 is coded (quantised) rather than kept exact in the graph."""
    count = int(np.prod([int(d) for d in t.dims], dtype=np.int64))
    if is_const and count < constant_min_elements:
        return False
    return count >= small_tensor_elements and value_name not in exact and t.name not in exact


def _slot_array(t, base_dir) -> np.ndarray:
    from onnx import numpy_helper
    if t.data_location == _onnx().TensorProto.EXTERNAL:
        _load_external_inplace(t, base_dir)
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 - any malformed tensor is a format error
        raise ModelFormatError(f"tensor {t.name!r}: cannot read its data: {e}") from None


def _zero_point_for(arr: np.ndarray, uses: list, values: Mapping[str, object],
                    base_dir) -> tuple[int, np.ndarray] | None:
    """The zero point (axis, values) shared by every consumer of an integer weight, or None (none, unknown,
    blocked or disagreeing between consumers)."""
    found = None
    for zname, axis, _ in uses:
        if zname is None:
            zp = (0, np.zeros(1, np.int64))
        else:
            zt = values.get(zname)
            if zt is None or _is_placeholder(zt) or zt.data_type not in _int_types() or axis == "blocked":
                return None
            z = _slot_array(zt, base_dir).astype(np.int64).reshape(-1)
            if z.size == 1:
                zp = (0, z)
            else:
                ax = arr.ndim - 1 if axis == "last" else axis
                if not isinstance(ax, int) or not -arr.ndim <= ax < arr.ndim or arr.shape[ax] != z.size:
                    return None
                zp = (ax % arr.ndim, z)
        if found is None:
            found = zp
        elif found[0] != zp[0] or not np.array_equal(found[1], zp[1]):
            return None
    if found is None or not found[1].any():
        return None
    return found


def _split_integer_weights(model, tensors: dict, used: set, exact: set[str], small_tensor_elements: int,
                           base_dir) -> None:
    """Integer weights of quantised models (int8/uint8/int16/uint16/int32 inputs of QUANT_WEIGHT_INPUTS) become
    placeholders coded as NNC integers, zero point removed."""
    uses = integer_weight_slots(model)
    if not uses:
        return
    ints = _int_types()
    values = {}
    for t, vname, _ in _tensor_slots(model):
        values.setdefault(vname, t)
    pending: list = []
    for t, vname, _ in _tensor_slots(model):
        if (vname not in uses or vname in exact or t.data_type not in ints or len(t.dims) == 0
                or _is_placeholder(t)):
            continue
        count = int(np.prod([int(d) for d in t.dims], dtype=np.int64))
        if count < small_tensor_elements:
            continue
        arr = _slot_array(t, base_dir)
        zp = _zero_point_for(arr, uses[vname], values, base_dir)
        if zp is not None:
            shape = [1] * arr.ndim
            if zp[1].size > 1:
                shape[zp[0]] = zp[1].size
            coded = arr.astype(np.int64) - zp[1].reshape(shape)
            if coded.min() <= -(1 << 31) or coded.max() > (1 << 31) - 1:
                zp, coded = None, arr
            else:   # the smallest signed type that holds the levels (uint8 - 128 fits int8)
                lo, hi = (int(coded.min()), int(coded.max())) if coded.size else (0, 0)
                small = next(d for d in (np.int8, np.int16, np.int32)
                             if np.iinfo(d).min <= lo and hi <= np.iinfo(d).max)
                coded = coded.astype(small)
        else:
            coded = arr
        if coded.dtype.itemsize >= 4 and coded.size and int(coded.min()) <= -(1 << 31):
            continue            # NNR_PT_INT cannot carry -2**31: the tensor stays in the graph
        name = _unique(vname or "tensor", used)
        if coded.size < INTEGER_GROUP_BELOW:
            pending.append((len(pending), t, name, zp, coded))
            continue
        _place_alone(t, name, zp, coded, tensors, used)
    _group_integer_weights(pending, tensors, used)


def _place_alone(t, name: str, zp, coded: np.ndarray, tensors: dict, used: set) -> None:
    """An integer weight coded as a tensor of its own; its low bits apart (a group of one) when a trial on its
    first elements says that codes smaller."""
    bits = _choose_low_bits(_trial_sample(coded.reshape(-1)))
    if not bits:
        tensors[name] = np.ascontiguousarray(coded)
        _make_placeholder(t, name, zp)
        return
    lname = _unique(name + "_low", used)
    wide = coded.astype(np.int64)
    tensors[name] = _smallest_int(wide >> bits)
    tensors[lname] = (wide & ((1 << bits) - 1)).astype(np.int8)
    _make_placeholder(t, name, zp, group=(name, 0, lname, bits))


def _group_integer_weights(small: list, tensors: dict, used: set) -> None:
    """Code small integer weights together: in graph order, 8/16-bit levels and 32-bit ones (quantised biases)
    apart, concatenated (flattened) into group tensors of at most INTEGER_GROUP_MAX elements. A group of one
    stays a tensor of its own."""
    groups: dict[bool, list] = {}
    sizes: dict[bool, int] = {}
    done: list[list] = []
    for item in small:
        wide = item[4].dtype.itemsize >= 4
        g = groups.setdefault(wide, [])
        if g and sizes[wide] + item[4].size > INTEGER_GROUP_MAX:
            done.append(g)
            g = groups[wide] = []
        sizes[wide] = (sizes[wide] if g else 0) + item[4].size
        g.append(item)
    done.extend(groups.values())
    for g in sorted((g for g in done if g), key=lambda g: g[0][0]):
        if len(g) == 1:
            _place_alone(*g[0][1:], tensors, used)
            continue
        gname = _unique("nnc_int_group", used)
        flat = np.concatenate([x[4].reshape(-1).astype(np.int64) for x in g])
        bits = _choose_low_bits(_trial_sample(flat))
        lname = None
        if bits:
            lname = _unique(gname + "_low", used)
            tensors[gname] = _smallest_int(flat >> bits)
            tensors[lname] = (flat & ((1 << bits) - 1)).astype(np.int8)
        else:
            tensors[gname] = _smallest_int(flat)
        offset = 0
        for _, t, name, zp, coded in g:
            _make_placeholder(t, name, zp, group=(gname, offset, lname, bits))
            offset += coded.size


def _smallest_int(a: np.ndarray) -> np.ndarray:
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    return a.astype(next(d for d in (np.int8, np.int16, np.int32) if np.iinfo(d).min <= lo and hi <= np.iinfo(d).max))


#: low-bit splits tried for a group tensor (0 = none); the smallest coding wins
LOW_BITS_CANDIDATES = (0, 2, 3)
#: groups with fewer elements are not split (the trial encodes would cost more than they can save)
LOW_BITS_MIN_ELEMENTS = 1 << 14
#: elements the trial codes: 8 runs of consecutive elements spread over the tensor
LOW_BITS_SAMPLE = 1 << 15


def _trial_sample(flat: np.ndarray) -> np.ndarray:
    if flat.size <= LOW_BITS_SAMPLE:
        return flat.astype(np.int64)
    run = LOW_BITS_SAMPLE // 8
    starts = np.linspace(0, flat.size - run, 8).astype(np.int64)
    return np.concatenate([flat[i:i + run] for i in starts]).astype(np.int64)


def _choose_low_bits(flat: np.ndarray) -> int:
    """How many low bits to code apart from the rest, by trial: ``flat >> k`` and ``flat & (2**k - 1)`` as two
    NNC integer tensors, with nnc's default coding settings. Wide 8-bit levels (dynamically quantised weights
    span all 256 values) put most of their information into DeepCABAC's Exp-Golomb remainder, whose suffix bits
    are bypass-coded as if uniform; with the low bits apart, the high part stays within the context-coded
    greater-than flags and the low bits are close to uniform, which CABAC codes at about their entropy."""
    if flat.size < LOW_BITS_MIN_ELEMENTS or len(LOW_BITS_CANDIDATES) < 2:
        return 0
    cfg = EncoderConfig()
    best = None
    for k in LOW_BITS_CANDIDATES:
        bits = payload_bits(flat >> k, None, cfg)
        if k:   # the low bits' own NDU: its payload and a header's worth of bytes
            bits += payload_bits(flat & ((1 << k) - 1), None, cfg) + 8 * _NDU_HEADER_BYTES
        if best is None or bits < best[0]:
            best = (bits, k)
    return best[1]


_NDU_HEADER_BYTES = 32   # about what an NDU header of a group tensor costs (unit header, name, shape, flags)


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


def _top_initializer(b: bytes, base_dir: str, tensors: dict, used: set, exact: set[str], small_tensor_elements: int):
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
    if t.data_type not in floats or len(t.dims) == 0 or not _codes_float(
            t, t.name, False, exact, 0, small_tensor_elements):
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


def load_onnx_file(path: str, *, constant_min_elements: int = DEFAULT_CONSTANT_MIN_ELEMENTS,
                   small_tensor_elements: int = DEFAULT_SMALL_TENSOR_ELEMENTS):
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
            exact = exact_value_names(model)
            for vs, ve in inits:
                model.graph.initializer.append(_top_initializer(read(vs, ve - vs), base_dir, tensors, used, exact,
                                                                small_tensor_elements))
    except _Truncated as e:
        raise ModelFormatError(f"{path!r} is not a valid ONNX model: malformed or truncated protobuf near byte "
                               f"{e.args[0]}") from None
    except (DecodeError, RuntimeError) as e:
        raise ModelFormatError(f"{path!r} is not a valid ONNX model (truncated or corrupt?): {e}") from None
    except OSError as e:
        raise ModelFormatError(f"cannot read {path!r}: {e}") from None
    return split_model(model, base_dir=base_dir, constant_min_elements=constant_min_elements, tensors=tensors,
                       skip_top_initializers=True, small_tensor_elements=small_tensor_elements, exact=exact)


def from_onnx(model, *, constant_min_elements: int = DEFAULT_CONSTANT_MIN_ELEMENTS,
              small_tensor_elements: int = DEFAULT_SMALL_TENSOR_ELEMENTS):
    """Split an in-memory ModelProto (left unchanged) into (tensors, topology)."""
    onnx = _onnx()
    if not isinstance(model, onnx.ModelProto):
        raise ModelFormatError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return split_model(copy, constant_min_elements=constant_min_elements, small_tensor_elements=small_tensor_elements)


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


def tensor_dtypes(topology: Topology, *, restored: bool = False) -> dict[str, str]:
    """Bitstream tensor name -> original dtype name, from the placeholders of an ONNX topology. A group tensor
    is listed with the widest dtype of its members. ``restored=True``: the names :func:`with_zero_points`
    gives instead (every placeholder by its own name, no group tensors)."""
    model = parse_topology(topology)
    types = _coded_types()
    out = {}
    for t, _, _ in _tensor_slots(model):
        if _is_placeholder(t):
            if t.data_type not in types:
                raise ModelFormatError(f"ONNX topology placeholder {t.name!r} has data_type {t.data_type}, which "
                                       "nnc does not code")
            dname = types[t.data_type][0]
            for name in [_placeholder_name(t)] if restored else _bitstream_names(t):
                prev = out.get(name)
                if prev is None or np.dtype(types[t.data_type][1]).itemsize > np.dtype(_storage_of(prev)).itemsize:
                    out[name] = dname
    return out


def _storage_of(dname: str) -> str:
    return next(storage for name, storage in _coded_types().values() if name == dname)


def with_zero_points(tensors: Mapping[str, np.ndarray], topology: Topology) -> dict[str, np.ndarray]:
    """Decoded tensors with the zero points of integer weights added back, in their ONNX integer dtype."""
    model = parse_topology(topology)
    out = dict(tensors)
    ints = _int_types()
    groups, restored = set(), {}
    for t, _, _ in _tensor_slots(model):
        if _is_placeholder(t) and t.data_type in ints:
            name = _placeholder_name(t)
            if _group_of(t) is not None:
                groups.update(_bitstream_names(t))
            restored[name] = _with_zero_point(t, _slot_value(tensors, t), name)
    for g in groups:            # a split large tensor's high part may carry the tensor's own name
        out.pop(g, None)
    out.update(restored)
    return out


def coded_levels(tensors: Mapping[str, np.ndarray], topology: Topology) -> dict[str, np.ndarray]:
    """Every integer placeholder's coded levels (zero point removed) by its own name, cut out of group tensors."""
    model = parse_topology(topology)
    ints = _int_types()
    return {_placeholder_name(t): _slot_value(tensors, t) for t, _, _ in _tensor_slots(model)
            if _is_placeholder(t) and t.data_type in ints}


def tensor_shapes(topology: Topology) -> dict[str, list[int]]:
    """Each placeholder's own name -> its ONNX dims (the names :func:`with_zero_points` gives)."""
    model = parse_topology(topology)
    return {_placeholder_name(t): [int(d) for d in t.dims] for t, _, _ in _tensor_slots(model) if _is_placeholder(t)}


def _lookup(tensors: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    try:
        return tensors[name]
    except KeyError:
        raise ModelFormatError(f"the ONNX topology needs tensor {name!r}, which is not among the decoded "
                               "tensors") from None


def to_onnx(tensors: Mapping[str, np.ndarray], topology: Topology):
    """Rebuild a complete in-memory ModelProto."""
    model = parse_topology(topology)
    for t, _, _ in _tensor_slots(model):
        if _is_placeholder(t):
            name = _placeholder_name(t)
            _fill_tensor(t, _slot_value(tensors, t), name)
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
            _fill_tensor(t, _slot_value(tensors, t), name)
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
            items.append((meta.SerializeToString(), _raw_array(t, _slot_value(tensors, t), name)))
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
        self.dname, self.storage = _coded_types()[data_type]
        self.nbytes = arr.size * np.dtype(self.storage).itemsize

    def stored(self) -> np.ndarray:
        if self.dname == "bfloat16":
            return float32_to_bf16_bits(np.asarray(self.arr))
        return np.ascontiguousarray(self.arr, dtype=self.storage)


def _raw_array(t, arr: np.ndarray, name: str) -> _RawPayload:
    dims = [int(d) for d in t.dims]
    if t.data_type in _int_types():
        return _RawPayload(_with_zero_point(t, arr, name), t.data_type)
    arr = np.asarray(arr)
    if arr.size != int(np.prod(dims, dtype=np.int64)):
        raise ModelFormatError(f"tensor {name!r}: decoded size {arr.size} does not fit ONNX shape {dims}")
    return _RawPayload(arr, t.data_type)
