"""``nnc info`` / :func:`nnc.inspect`: a unit-by-unit description of an NNC bitstream (like ffprobe for NNC).

>>> info = nnc.inspect(data)
>>> print(info.to_text())          # tree: units, offsets, sizes, tensors, shapes, dtypes, QP, tools
>>> info.to_dict()                 # the same as JSON-ready data

Only the high-level syntax is needed for most fields; per-tensor QP, row skipping, HDSP and level statistics
come from decoding the NDU payloads (``decode=True``, the default). Problems are recorded per unit
(``UnitInfo.errors``) instead of raised, so damaged bitstreams can be inspected too; use :func:`nnc.check`
for a conformance verdict.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import bitstream as B
from . import deepcabac as dc
from .bitstream.source import as_bytes
from .coding.ndu import plan_ndu
from .coding.quant import step_size
from .config import default_decoder_config
from .errors import LimitExceededError, NNCError

__all__ = ["TensorInfo", "UnitInfo", "BitstreamInfo", "inspect"]

_MAX_DESCRIBED_ELEMENTS = 1 << 28    # payloads of larger NDUs are described from their headers only
_DTYPE_NAMES = {0: "int32", 1: "float32", 2: "int8 (INT2)", 3: "int8 (INT3)", 4: "int8 (INT4)", 5: "int8",
                6: "int16", 7: "int64", 8: "float16", 9: "float64"}


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str
    elements: int
    coding: str                       # "int" | "uniform" | "dq" | "codebook" | "raw"
    qp: int | None = None
    step_size: float | None = None
    codebook: dict | None = None
    row_skipping: bool | None = None
    skipped_rows: int | None = None
    hdsp: bool | None = None
    nonzero: int | None = None
    min_level: int | None = None
    max_level: int | None = None
    source_dtype: str | None = None   # the model's dtype when the topology records one (e.g. bfloat16)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class UnitInfo:
    index: int
    type: str
    offset: int
    size: int | None
    header_size: int | None = None
    payload_size: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["tensors"] = [t.to_dict() for t in self.tensors]
        return d


@dataclass
class BitstreamInfo:
    size: int
    profile: int | None
    units: list[UnitInfo]
    topology_format: str | None = None
    qp_density: int | None = None
    #: tensor names the topology lists (nnc encode's record, an ONNX graph); None when it lists none
    listed: list[str] | None = None
    #: messages of the DecoderConfig limits that stopped parsing or decoding part of the stream
    limits_hit: list[str] = field(default_factory=list)

    @property
    def tensors(self) -> list[TensorInfo]:
        return [t for u in self.units for t in u.tensors]

    def summary(self) -> dict:
        ts = self.tensors
        n = sum(t.elements for t in ts)
        counts: dict[str, int] = {}
        for u in self.units:
            counts[u.type] = counts.get(u.type, 0) + 1
        return {"bytes": self.size, "units": len(self.units), "unit_types": counts, "profile": self.profile,
                "tensors": len(ts), "parameters": n, "bits_per_parameter": (8 * self.size / n) if n else None,
                "topology_format": self.topology_format, "qp_density": self.qp_density,
                "tensors_listed": None if self.listed is None else len(self.listed),
                "missing_tensors": self.missing,
                "errors": sum(len(u.errors) for u in self.units)}

    @property
    def missing(self) -> list[str] | None:
        """Listed tensors no unit holds (a file cut at a unit boundary); None when the topology lists none."""
        if self.listed is None:
            return None
        present = {t.name for t in self.tensors}
        return [n for n in self.listed if n not in present]

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "units": [u.to_dict() for u in self.units]}

    def to_text(self) -> str:
        s = self.summary()
        bpp = f", {s['bits_per_parameter']:.3f} bits/parameter" if s["bits_per_parameter"] else ""
        lines = [f"NNC bitstream: {s['bytes']} bytes, {s['units']} units, profile {s['profile']}, "
                 f"{s['tensors']} tensors, {s['parameters']:,} parameters{bpp}"]
        missing = self.missing
        if missing is None:
            lines.append("completeness: not verifiable (the topology does not list the tensors)")
        elif missing:
            lines.append(f"INCOMPLETE: the topology lists {len(self.listed)} tensors, {len(missing)} missing: "
                         + ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else ""))
        else:
            lines.append(f"complete: all {len(self.listed)} tensors the topology lists are present")
        for u in self.units:
            sz = "?" if u.size is None else u.size
            extra = ""
            if u.header_size is not None and u.payload_size:
                extra = f"  (header {u.header_size} + payload {u.payload_size})"
            lines.append(f"#{u.index:<3} {u.type:<8} offset {u.offset:<8} size {sz}{extra}")
            if u.fields:
                lines.append("       " + ", ".join([f"{k}={v}" if type(v) is int or type(v) is str else f"{k}={_fmt(v)}"
                                                       for k, v in u.fields.items()]))
            for t in u.tensors:
                src = f" (source {t.source_dtype})" if t.source_dtype and t.source_dtype != t.dtype else ""
                lines.append(f"       tensor {t.name!r}  shape {t.shape}  {t.dtype}{src}  {t.elements:,} elements")
                tools = [t.coding]
                if t.qp is not None:
                    tools.append(f"qp {t.qp} (step {t.step_size:.6g})")
                if t.codebook:
                    tools.append(f"codebook size {t.codebook['size']} egk {t.codebook['egk']} "
                                 f"zero_offset {t.codebook['zero_offset']}")
                if t.row_skipping:
                    tools.append(f"row skipping ({t.skipped_rows} rows skipped)")
                if t.hdsp:
                    tools.append("hdsp")
                if t.nonzero is not None:
                    tools.append(f"nonzero {t.nonzero:,} levels {t.min_level}..{t.max_level}")
                lines.append("         " + ", ".join(tools))
            for e in u.errors:
                lines.append(f"       ! {e}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return "[" + ", ".join(map(str, v[:8])) + f", ... ({len(v)})]"
    return str(v)


@functools.lru_cache(maxsize=256)
def _enum_name(enum, v) -> str:
    try:
        return enum(v).name
    except ValueError:
        return f"reserved({v})"


@functools.lru_cache(maxsize=1024)
def _step(qp: int, qd: int) -> float:
    try:
        return float(step_size(qp, qd))
    except (OverflowError, ValueError):
        return float("nan")


_DEFAULT_DTYPES = {"int": "int32", "codebook": "float64"}


def _unit_fields(u) -> dict:
    b = u.body
    T = B.NNRUnitType
    t = u.nnr_unit_type
    f: dict[str, Any] = {}
    if u.header is not None and u.header.partial_data_counter_present_flag:
        f["partial_data_counter"] = u.header.partial_data_counter
    if b is None:
        return f
    if t == T.NNR_STR:
        f["general_profile_idc"] = b.general_profile_idc
    elif t in (T.NNR_MPS, T.NNR_LPS):
        p = "mps" if t == T.NNR_MPS else "lps"
        for k, v in b.__dict__.items():
            if v is None or (k.endswith("_map") and v is None):
                continue
            if k.endswith("quantization_method_flags"):
                v = "|".join(m.name for m in B.QuantizationMethodFlags if v & m) or "none"
            if hasattr(v, "__dataclass_fields__"):
                v = "present"
            f[k.replace(f"{p}_", "") if k.startswith(f"{p}_") else k] = v
    elif t == T.NNR_TPL:
        f["topology_storage_format"] = _enum_name(B.TopologyStorageFormat, b.topology_storage_format)
        f["topology_compression_format"] = _enum_name(B.TopologyCompressionFormat, b.topology_compression_format)
        d = b.topology_data
        if d is not None:
            f["topology_data_bytes"] = len(d.encode() if isinstance(d, str) else bytes(d))
        if b.topology_elem_id_list is not None:
            f["topology_elem_id_list"] = list(b.topology_elem_id_list)
    elif t == T.NNR_QNT:
        f.update(quantization_storage_format=b.quantization_storage_format,
                 quantization_compression_format=b.quantization_compression_format)
    elif t == T.NNR_NDU:
        f["payload_type"] = _enum_name(B.PayloadType, b.nnr_compressed_data_unit_payload_type)
        for k in ("device_id", "parameter_id", "put_node_depth", "parent_node_id_present_flag", "parent_node_id_type",
                  "temporal_context_modeling_flag", "parent_device_id", "dq_flag", "codebook_present_flag",
                  "compressed_parameter_types", "cabac_unary_length_minus1", "scan_order"):
            v = getattr(b, k, None)
            if v is not None:
                f[k] = v
        if b.nnr_decompressed_data_format_present_flag:
            f["nnr_decompressed_data_format"] = _enum_name(B.DecompressedDataFormat, b.nnr_decompressed_data_format)
        eps = b.cabac_entry_point_list
        if eps:
            f["entry_points"] = len(eps)
    return f


def _ndu_tensors(u, qd: int, qp0: int, decode: bool, budget=None,
                 limits_hit: list | None = None) -> tuple[list[TensorInfo], list[str]]:
    h = u.body
    profile = u.context.general_profile_idc if u.context is not None else 0
    try:
        plan = plan_ndu(h, profile=profile, qp_density=qd, unit_index=u.index)
    except NNCError as e:   # the header names its tensors but does not describe a decodable payload
        return ([TensorInfo(name=str(n), shape=[], dtype="unknown", elements=0, coding="unknown")
                 for n in h.element_names], [f"payload not decoded: {e}"])
    fmt = h.nnr_decompressed_data_format if h.nnr_decompressed_data_format_present_flag else None
    cb = h.codebook if getattr(h, "codebook_present_flag", 0) else None
    errors: list[str] = []
    infos = []
    for m in plan.members:                  # coding order: a block's LS/bias/BN vectors, then its weight
        kind = "dq" if m.kind == "uniform" and plan.dq else m.kind
        default = _DEFAULT_DTYPES.get(kind, "float32")
        dtype = _DTYPE_NAMES.get(fmt, f"reserved({fmt})") if fmt is not None else default
        ti = TensorInfo(name=m.name, shape=list(m.shape), dtype=dtype, elements=math.prod(m.shape), coding=kind)
        if kind == "codebook" and cb is not None:
            arr = cb.values_array(bound=1 << 62)       # numpy cumulative sums, not a per-entry Python loop
            ti.codebook = {"size": cb.codebook_size, "egk": cb.codebook_egk, "zero_offset": cb.CbZeroOffset,
                           "values": _fmt(cb.values if arr is None else arr.tolist())}
        infos.append(ti)
    if not decode or any(m.coding is None for m in plan.members):
        return infos, errors
    if plan.elements > (budget.limits.max_tensor_elements if budget is not None else _MAX_DESCRIBED_ELEMENTS):
        limit = budget.limits.max_tensor_elements if budget is not None else _MAX_DESCRIBED_ELEMENTS
        msg = f"payload not decoded: {plan.elements} elements, more than max_tensor_elements={limit}"
        errors.append(msg)
        if limits_hit is not None and budget is not None:
            limits_hit.append(f"unit {u.index}: {msg}")
        return infos, errors
    if budget is not None:
        # levels, row flags and entry points of this payload; counted as held so that the decode work of the
        # whole stream stays within max_total_bytes, as for nnc.decode
        cost = sum(4 * m.coding.size + m.coding.height + 160 * (-(-m.coding.height // 8)) for m in plan.members)
        if not budget.check(cost):
            msg = (f"payload not decoded: it would bring the memory and work of inspecting past "
                   f"max_total_bytes={budget.limit}")
            errors.append(msg)
            if limits_hit is not None:
                limits_hit.append(f"unit {u.index}: {msg}")
            return infos, errors
        budget.data += cost
    if plan.tca:
        errors.append("payload not decoded: TCA needs the parent tensor")
        return infos, errors
    try:
        res = dc.decode_payload(u.payload, [m.coding for m in plan.members], threads=1)   # no entry points: one thread
    except NNCError as e:
        errors.append(f"payload: {e}")
        return infos, errors
    for ti, q, qoff, row_skip, hdsp in zip(infos, res.levels, res.qp_offsets, res.row_skip_flags, res.hdsp_flags):
        if qoff is not None:
            ti.qp = qoff + qp0
            ti.step_size = _step(ti.qp, qd)
        ti.row_skipping = row_skip
        if ti.row_skipping:
            q2 = q.reshape(q.shape[0], -1)
            ti.skipped_rows = int((~q2.any(axis=1)).sum())
        ti.hdsp = hdsp or None
        if 0 < q.size <= 64:                # a few levels: Python is cheaper than three numpy reductions
            lv = q.ravel().tolist()
            ti.nonzero = len(lv) - lv.count(0)
            ti.min_level, ti.max_level = min(lv), max(lv)
            continue
        ti.nonzero = int(np.count_nonzero(q))
        if q.size:
            ti.min_level, ti.max_level = int(q.min()), int(q.max())
    return infos, errors


#: most units :func:`inspect` hands back in ``parsed`` (the limit of ``DecoderConfig.strict()``)
_KEEP_UNITS = 1 << 16


def inspect(bitstream, *, decode: bool = True, max_units: int | None = None, config=None,
            parsed: list | None = None) -> BitstreamInfo:
    """Describe an NNC bitstream (bytes-like or a file path) unit by unit; see :class:`BitstreamInfo`.

    ``config`` (a :class:`nnc.DecoderConfig`, default :func:`nnc.config.default_decoder_config`) bounds what
    inspecting holds and decodes, as for :func:`nnc.decode`: parsed headers and every payload decoded for its
    statistics are charged against ``max_total_bytes``; a payload that does not fit is described from its header
    only, and the messages are listed in ``BitstreamInfo.limits_hit``.

    ``parsed``: a list that receives the parsed units (:func:`nnc.check` with ``units=`` then checks them without
    parsing the stream again); left empty for a stream of more than 65,536 units, whose headers would weigh
    more than a second parse costs."""
    cfg = config if config is not None else default_decoder_config()
    data = as_bytes(bitstream, allow_path=True)
    budget = B.MemoryBudget(cfg)
    keep = parsed is not None
    units: list[UnitInfo] = []
    limits_hit: list[str] = []
    profile = None
    topo = None
    topology = None
    qd = None
    with B.paused_gc():     # units and their descriptions are acyclic: no collector passes over them
        for u in B.iter_units(data, strict=False, max_units=max_units if max_units is not None else cfg.max_units,
                              budget=budget):
            if keep:
                if len(parsed) < _KEEP_UNITS:
                    parsed.append(u)
                else:       # a stream this long: held units would outweigh one more parse
                    parsed.clear()
                    keep = False
            ui = UnitInfo(index=u.index, type=u.type_name, offset=u.offset, size=u.size, header_size=u.header_size,
                          payload_size=None if u.payload is None else len(u.payload))
            ui.errors += [str(e) for e in u.errors]
            limits_hit += [f"unit {u.index}: {e}" for e in u.errors if isinstance(e, LimitExceededError)]
            ui.fields = _unit_fields(u)
            t = u.nnr_unit_type
            if t == B.NNRUnitType.NNR_STR and u.body is not None and profile is None:
                profile = u.body.general_profile_idc
            elif t == B.NNRUnitType.NNR_TPL and u.body is not None and topo is None:
                topo = ui.fields.get("topology_storage_format")
                with contextlib.suppress(Exception):  # an unreadable topology lists nothing
                    topology = u.body.to_topology()
            elif t == B.NNRUnitType.NNR_MPS and u.body is not None and qd is None:
                qd = u.body.mps_qp_density
            elif t == B.NNRUnitType.NNR_NDU and u.body is not None:
                mps = u.context.mps if u.context is not None else None
                d = mps.mps_qp_density if mps is not None and mps.mps_qp_density is not None else 0
                q0 = mps.mps_quantization_parameter if mps is not None and mps.mps_quantization_parameter is not None \
                    else 0
                try:
                    ui.tensors, errs = _ndu_tensors(u, d, q0, decode, budget, limits_hit)
                    ui.errors += errs
                except Exception as e:  # noqa: BLE001 - describe what can be described
                    ui.errors.append(f"cannot describe tensors: {type(e).__name__}: {e}")
            units.append(ui)
    listed = None
    if topology is not None:
        from .converters.manifest import expected_names, source_dtypes
        with contextlib.suppress(Exception):
            listed = expected_names(topology)
            dtypes = source_dtypes(topology)
            for ui in units:
                for ti in ui.tensors:
                    ti.source_dtype = dtypes.get(ti.name)
    return BitstreamInfo(size=len(data), profile=profile, units=units, topology_format=topo, qp_density=qd,
                         listed=listed, limits_hit=limits_hit)
