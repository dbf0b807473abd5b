"""Conformance checking of NNC bitstreams, shaped like ``onnx.checker``.

>>> report = nnc.check(data)                  # never raises for bad input; collects every violation
>>> report.ok, [v.code for v in report.errors]
>>> nnc.check(data, raise_on_error=True)      # raises ConformanceError(report=...) if not ok

:func:`check` parses every unit (continuing after a broken unit whenever its ``nnr_unit_size`` is sane),
validates every syntax element against the constraints of the specification (``NNC_BITSTREAM.md`` §0, §1,
§3, §6), checks the unit order rules, and decodes the CABAC payload of every NDU to verify that it consumes
exactly the bytes ``nnr_unit_size`` gives it and that the entry points written in the header are the ones
measured while decoding. Each :class:`Violation` carries a stable ``code`` (see :data:`CODES`), the unit
index, the byte offset from the start of the bitstream and the syntax path of the element.

Severity ``"error"`` makes the bitstream non-conforming; ``"warning"`` marks valid syntax that could not be
fully verified (features nnc does not implement, incremental NDUs whose parent state is unknown).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import bitstream as B
from .. import deepcabac as dc
from ..bitstream.source import as_bytes
from ..coding.ndu import plan_ndu
from ..coding.quant import step_size
from ..config import DecoderConfig, active_decoder_limits
from ..errors import (BitstreamError, ConfigError, ConformanceError, LimitExceededError, TruncatedBitstreamError,
                      UnsupportedFeatureError)

__all__ = ["CODES", "Violation", "Report", "check"]

ERROR, WARNING = "error", "warning"

#: Every violation code :func:`check` can report, with its meaning.
CODES: dict[str, str] = {
    # framing
    "EMPTY_BITSTREAM": "the input holds no bytes",
    "TRAILING_BYTES": "bytes at the end are too few to hold an nnr_unit_size field (incomplete unit)",
    "TRUNCATED_UNIT": "nnr_unit_size runs past the end of the data (incomplete last unit / truncated file)",
    "UNIT_SIZE_INVALID": "nnr_unit_size is smaller than its own size field plus the unit type byte",
    "UNIT_SIZE_MISMATCH": "the unit's syntax does not end exactly at nnr_unit_size (§1.1 rule 3)",
    "TOO_MANY_UNITS": "more units than the checker's limit",
    # unit order (§1.1)
    "STR_NOT_FIRST": "the first unit is not NNR_STR",
    "STR_DUPLICATE": "NNR_STR appears after the first unit",
    "MPS_DUPLICATE": "more than one NNR_MPS",
    "MPS_MISPLACED": "NNR_MPS is not the unit directly after NNR_STR (after a TPL/NDU/other unit)",
    "MPS_MISSING": "an NNR_TPL or NNR_NDU comes before any NNR_MPS",
    # reserved values
    "RESERVED_UNIT_TYPE": "nnr_unit_type 7..63",
    "RESERVED_PAYLOAD_TYPE": "nnr_compressed_data_unit_payload_type > 3",
    "RESERVED_PARENT_NODE_ID_TYPE": "parent_node_id_type 3",
    "RESERVED_SCAN_ORDER": "scan_order > 4",
    "RESERVED_PROFILE": "general_profile_idc other than 0 or 1",
    "RESERVED_BITS_NONZERO": "an nnr_reserved_zero_* field is not 0",
    "RESERVED_VALUE": "an enumerated field holds a value the specification does not define",
    # NDU header semantics
    "BLOCK_WITHOUT_ELEMENT_LIST": "NNR_PT_BLOCK with nnr_multiple_topology_elements_present_flag = 0",
    "CODEBOOK_INVALID": "codebook_size 0 or CbZeroOffset outside the codebook",
    "DIMENSIONS_INVALID": "count_tensor_dimensions 0 or a tensor dimension of 0",
    "DIMENSIONS_EXCEED_PAYLOAD": "the payload is too small to code the number of elements the dimensions claim",
    "DUPLICATE_TENSOR_NAME": "a tensor name is coded by two NDUs (or twice in one block)",
    "QUANT_PARAMS_ABSENT": "a quantized NDU but the MPS signals no quantization method (no qp_density / qp)",
    "QP_OUT_OF_RANGE": "the tensor's qp gives a step size that is 0 or infinite in float32",
    "INVALID_UTF8": "a string is not valid UTF-8",
    "SYNTAX_ERROR": "any other syntax violation found while parsing",
    # payload (CABAC) verification
    "PAYLOAD_SIZE_MISMATCH": "the NDU payload is not exactly consumed: bytes left after the terminating bin, "
                             "or a RAW_FLOAT payload of the wrong length",
    "PAYLOAD_TRUNCATED": "the CABAC decoder runs out of payload bytes before the terminating bin",
    "PAYLOAD_CORRUPT": "the CABAC payload cannot be decoded (inconsistent data)",
    "CODEBOOK_INDEX_RANGE": "a decoded codebook index falls outside the codebook",
    "ENTRY_POINT_MISMATCH": "cabac_entry_point_list differs from the entry points measured while decoding",
    # warnings
    "UNSUPPORTED_FEATURE": "valid syntax nnc (and NNCodec) does not implement; not verified further",
    "PAYLOAD_NOT_VERIFIED": "the payload could not be verified (parent state for TCA/HDSP unknown, limits)",
    "LIMIT_EXCEEDED": "checking further would take more memory than the DecoderConfig allows (max_total_bytes, "
                      "max_rank, max_codebook_size); the rest was not checked",
    "SCAN_ORDER_INEFFECTIVE": "scan_order > 0 for a tensor whose effective scan is 0 (W = 1 or H = 1, §6 item 12)",
    # completeness (the topology's list of tensors: nnc encode's JSON record, an ONNX graph)
    "TENSOR_MISSING": "the topology lists a tensor that no NDU carries (e.g. a file cut at a unit boundary)",
}

_NDU = "NNR_NDU.nnr_compressed_data_unit_header"


@dataclass(frozen=True)
class Violation:
    """One finding: ``code`` (a key of :data:`CODES`), a message, and where it is."""

    code: str
    message: str
    unit_index: int | None = None
    byte_offset: int | None = None
    syntax_path: str | None = None
    severity: str = ERROR

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = ", ".join(x for x in (None if self.unit_index is None else f"unit {self.unit_index}",
                                      None if self.byte_offset is None else f"byte {self.byte_offset}",
                                      self.syntax_path) if x)
        return f"{self.severity} {self.code}: {self.message}" + (f" [{where}]" if where else "")


@dataclass
class Report:
    """Result of :func:`check`. ``ok`` is True when no violation of severity ``"error"`` was found."""

    size: int
    units: list[dict] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    payloads_verified: int = 0
    readable: bool = True
    #: "verified" (the topology lists the tensors and every one is present), "incomplete" (TENSOR_MISSING),
    #: "not verifiable" (the topology lists no tensors: a file cut at a unit boundary cannot be told from a
    #: whole one) or None (no units to judge)
    completeness: str | None = None
    #: the parser's findings (exceptions, in stream order) as the lenient parse of the check raised them
    parse_errors: list = field(default_factory=list, repr=False, compare=False)
    #: how many tensors the topology lists, and which of them no NDU holds (None: it lists none)
    listed: int | None = None
    missing: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == ERROR]

    @property
    def warnings(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == WARNING]

    def codes(self) -> list[str]:
        return [v.code for v in self.violations]

    def find(self, code: str) -> list[Violation]:
        return [v for v in self.violations if v.code == code]

    def raise_if_errors(self) -> "Report":
        if not self.ok:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            raise ConformanceError(f"bitstream is not conforming: {first}{more}", report=self)
        return self

    def to_dict(self) -> dict:
        return {"ok": self.ok, "readable": self.readable, "size": self.size, "units": self.units,
                "payloads_verified": self.payloads_verified, "completeness": self.completeness,
                "errors": len(self.errors),
                "warnings": len(self.warnings), "violations": [v.to_dict() for v in self.violations]}

    def to_text(self) -> str:
        verdict = "CONFORMING" if self.ok else ("UNREADABLE" if not self.readable else "NOT CONFORMING")
        lines = [f"{verdict}: {self.size} bytes, {len(self.units)} units, {self.payloads_verified} NDU payloads "
                 f"verified, {len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        if self.completeness == "not verifiable":
            lines.append("  completeness cannot be verified: the stream does not list its tensors (NNCodec's layout, "
                         "nnc.encode without a topology or nnc encode --reference-layout), so a file cut at a unit "
                         "boundary would look whole")
        elif self.completeness == "verified":
            lines.append("  complete: every tensor the topology lists is present")
        lines += [f"  {v}" for v in self.violations]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


# ----------------------------------------------------------------------------------------------------------
class _Checker:
    def __init__(self, data, max_units: int, max_tensor_elements: int, verify_payloads: bool, config=None,
                 units=None):
        self.data = data
        self.parsed = units
        self.max_units = max_units
        self.max_elements = max_tensor_elements
        self.verify = verify_payloads
        self.config = config if config is not None else DecoderConfig(max_units=max(1, max_units) if max_units
                                                                      else 1, max_tensor_elements=max(
                                                                          1, min(max_tensor_elements, (1 << 31) - 1)))
        self.budget = B.MemoryBudget(self.config)
        self.report = Report(size=len(data))
        self.names: dict[str, int] = {}

    def add(self, code, message, unit=None, byte_offset=None, path=None, severity=ERROR):
        idx = unit.index if unit is not None and not isinstance(unit, int) else unit
        self.report.violations.append(Violation(code, message, idx, byte_offset, path, severity))

    # -- parser findings ------------------------------------------------------------------------------
    def parser_error(self, unit, exc) -> None:
        """A finding of the parser (syntax, framing and unit order, §1.1): classified by its ``code``."""
        msg = getattr(exc, "reason", None) or str(exc)
        path = getattr(exc, "syntax_path", None)
        off = getattr(exc, "byte_offset", None)
        off = off if off is not None else unit.offset
        code = getattr(exc, "code", None)
        if isinstance(exc, UnsupportedFeatureError):
            self.add(code, msg, unit, off, path or unit.type_name, WARNING)
            return
        if isinstance(exc, LimitExceededError) and code != "TOO_MANY_UNITS":
            self.add("LIMIT_EXCEEDED", msg, unit, off, path, WARNING)
            return
        if code is None and isinstance(exc, TruncatedBitstreamError):
            if path == "nnr_unit_size":
                code = "TRAILING_BYTES"
                msg = f"{len(self.data) - unit.offset} trailing byte(s) cannot hold a unit: {msg}"
            else:
                code = "UNIT_SIZE_MISMATCH"
                msg = f"the unit's syntax runs past nnr_unit_size ({unit.size} bytes): {msg}"
        self.add(code or "SYNTAX_ERROR", msg, unit, off, path)

    # -- per-unit semantics ---------------------------------------------------------------------------
    def body_offset(self, u) -> int:
        return u.offset + (4 if u.header.nnr_unit_size_flag else 2) + 1 + \
            (1 if u.header.partial_data_counter_present_flag else 0)

    def semantics(self, u) -> None:
        T = B.NNRUnitType
        t, b = u.nnr_unit_type, u.body
        if t == T.NNR_NDU and u.header.partial_data_counter_present_flag:
            self.add("UNSUPPORTED_FEATURE", "partial_data_counter in an NDU (partial data units) is not supported",
                     u, u.offset, "NNR_NDU.nnr_unit_header.partial_data_counter_present_flag", WARNING)
        if b is None:
            return
        base = self.body_offset(u)
        if t == T.NNR_STR:
            if b.general_profile_idc not in (0, 1):
                self.add("RESERVED_PROFILE", f"general_profile_idc {b.general_profile_idc} (only 0 and 1 exist)",
                         u, base, "NNR_STR.nnr_start_unit_header.general_profile_idc")
        elif t == T.NNR_MPS:
            p = "NNR_MPS.nnr_model_parameter_set_unit_payload"
            for name in ("nnr_reserved_zero_1bit", "nnr_reserved_zero_2bits", "nnr_reserved_zero_7bits"):
                v = getattr(b, name, None)
                if v:
                    self.add("RESERVED_BITS_NONZERO", f"{name} = {v}", u, base + 1, f"{p}.{name}")
            if b.mps_quantization_method_flags & ~3:
                self.add("RESERVED_VALUE", f"mps_quantization_method_flags {b.mps_quantization_method_flags:#x} "
                         "sets an undefined bit (only NNR_QSU 0x1, NNR_QCB 0x2)", u, base,
                         f"{p}.mps_quantization_method_flags")
            if b.mps_topology_indexed_reference_flag:
                self.add("UNSUPPORTED_FEATURE", "mps_topology_indexed_reference_flag = 1 (indexed topology "
                         "references) is not implemented by nnc or NNCodec", u, base + 1,
                         f"{p}.mps_topology_indexed_reference_flag", WARNING)
        elif t == T.NNR_LPS:
            p = "NNR_LPS.nnr_layer_parameter_set_unit"
            for name, off in (("nnr_reserved_zero_7bits", 0), ("nnr_reserved_zero_1_bits", 1),
                              ("nnr_reserved_zero_1bit", 1)):
                v = getattr(b, name, None)
                if v:
                    self.add("RESERVED_BITS_NONZERO", f"{name} = {v}", u, base + off, f"{p}.{name}")
            if b.lps_quantization_method_flags & ~3:
                self.add("RESERVED_VALUE", "lps_quantization_method_flags sets an undefined bit", u, base + 1,
                         f"{p}.lps_quantization_method_flags")
            self.add("UNSUPPORTED_FEATURE", "NNR_LPS: nnc does not decode streams with layer parameter sets "
                     "(NNCodec fails on them, spec §6 item 7)", u, u.offset, p, WARNING)
        elif t == T.NNR_TPL:
            p = "NNR_TPL.nnr_topology_unit"
            if b.topology_storage_format > B.TopologyStorageFormat.NNR_TPL_REFLIST:
                self.add("RESERVED_VALUE", f"topology_storage_format {b.topology_storage_format} (0..6 defined)",
                         u, base, f"{p}.topology_storage_format")
            if b.topology_compression_format > B.TopologyCompressionFormat.NNR_DFL:
                self.add("RESERVED_VALUE", f"topology_compression_format {b.topology_compression_format} "
                         "(0..1 defined)", u, base + 1, f"{p}.topology_compression_format")
        elif t == T.NNR_QNT:
            self.add("UNSUPPORTED_FEATURE", "NNR_QNT units are not implemented (NNCodec raises on them)", u,
                     u.offset, "NNR_QNT", WARNING)
        elif t == T.NNR_NDU:
            self.ndu(u)

    # -- NDU ------------------------------------------------------------------------------------------
    def ndu(self, u) -> None:
        h = u.body
        PT = B.PayloadType
        pt = h.nnr_compressed_data_unit_payload_type
        base = self.body_offset(u)
        names = [n for n in h.element_names if n is not None]
        for n in names:
            key = str(n)
            if key in self.names:
                self.add("DUPLICATE_TENSOR_NAME", f"tensor {n!r} is already coded by unit {self.names[key]}", u,
                         base + 1, f"{_NDU}.topology_elem_id")
            else:
                self.names[key] = u.index
        if h.nnr_decompressed_data_format_present_flag and h.nnr_decompressed_data_format > 9:
            self.add("RESERVED_VALUE", f"nnr_decompressed_data_format {h.nnr_decompressed_data_format} (0..9 "
                     "defined)", u, base, f"{_NDU}.nnr_decompressed_data_format")
        dims = list(h.tensor_dimensions or [])
        if h.count_tensor_dimensions == 0 or any(d == 0 for d in dims):
            self.add("DIMENSIONS_INVALID", f"tensor dimensions {dims} (every tensor has rank >= 1 and no zero "
                     "dimension)", u, base, f"{_NDU}.tensor_dimensions")
            return
        scan = h.scan_order or 0
        if scan > 4:
            self.add("RESERVED_SCAN_ORDER", f"scan_order {scan} (0..4 defined)", u, base, f"{_NDU}.scan_order")
            return
        if pt == PT.NNR_PT_RAW_FLOAT:
            return  # the parser already compared the payload length with the dimensions
        if h.nnr_multiple_topology_elements_present_flag and names and len(set(map(str, names))) != len(names):
            self.add("DUPLICATE_TENSOR_NAME", f"a name appears twice in topology_elem_id_list {names}", u, base,
                     f"{_NDU}.topology_elem_id_list")
        ctx = u.context
        mps = ctx.mps if ctx is not None else None
        quantized = pt in (PT.NNR_PT_FLOAT, PT.NNR_PT_BLOCK)
        qd, qp0 = 0, 0
        if mps is not None and mps.mps_qp_density is not None:
            qd, qp0 = mps.mps_qp_density, mps.mps_quantization_parameter
        elif quantized and mps is not None:
            self.add("QUANT_PARAMS_ABSENT", "a quantized NDU but mps_quantization_method_flags signals no "
                     "quantization (no mps_qp_density / mps_quantization_parameter)", u, base,
                     f"{_NDU}.nnr_compressed_data_unit_payload_type")
        if ctx is not None and ctx.lps is not None:
            return  # LPS qp override: already reported as unsupported
        if not self.verify:
            return
        try:
            codings, kinds = self.codings(u, h, dims, qd)
        except _Skip as s:
            self.add(s.code, s.message, u, s.offset if s.offset is not None else u.offset, s.path, s.severity)
            return
        self.verify_payload(u, h, codings, kinds, qd, qp0)

    def codings(self, u, h, dims, qd):
        profile = u.context.general_profile_idc if u.context is not None else 0
        try:
            plan = plan_ndu(h, profile=profile, qp_density=qd, unit_index=u.index)
        except UnsupportedFeatureError as e:
            raise _Skip(e.code, f"{e}; payload not verified", None, f"{_NDU}.compressed_parameter_types", WARNING)
        except BitstreamError as e:
            raise _Skip(e.code or "SYNTAX_ERROR", e.reason, None, e.syntax_path, ERROR)
        n = math.prod(dims)
        cb1 = profile == 1 and h.codebook_present_flag and h.codebook.codebook_size == 1
        h0, w0 = dims[0], n // dims[0]
        need = 0 if cb1 else (h0 if profile == 1 and h0 > 1 and w0 > 1 else n)
        need += sum(math.prod(m.shape) for m in plan.members if m.role not in ("tensor", "weight"))
        # an arithmetic decoder consumes at least one bit per 128 context-coded bins (rLPS >= 2)
        capacity = 128 * 8 * (len(u.payload) + 2)
        if need > capacity:
            raise _Skip("DIMENSIONS_EXCEED_PAYLOAD", f"tensor dimensions {dims} need at least {need} coded bins "
                        f"but a {len(u.payload)}-byte payload holds at most {capacity}", self.body_offset(u),
                        f"{_NDU}.tensor_dimensions", ERROR)
        if n > self.max_elements:
            raise _Skip("LIMIT_EXCEEDED",
                        f"tensor of {n} elements exceeds the checker's limit (max_tensor_elements="
                        f"{self.max_elements}); payload not decoded", None, f"{_NDU}.tensor_dimensions", WARNING)
        # decoding a payload costs its int32 levels, row flags and entry points; they are freed after each NDU
        # but counted as held, so the total decode work of a stream is bounded by max_total_bytes as in decode()
        cost = sum(4 * m.coding.size + m.coding.height + 160 * (-(-m.coding.height // 8)) for m in plan.members)
        if not self.budget.check(cost):
            raise _Skip("LIMIT_EXCEEDED", f"decoding this payload ({n} elements, ~{cost} bytes) would bring the "
                        f"memory and work of the check past max_total_bytes={self.budget.limit}; payload not "
                        "decoded", None, f"{_NDU}.tensor_dimensions", WARNING)
        self.budget.data += cost
        return [m.coding for m in plan.members], [m.kind for m in plan.members]

    def verify_payload(self, u, h, codings, kinds, qd, qp0) -> None:
        payload = u.payload
        pay_off = u.offset + u.header_size
        parent = bool(getattr(h, "parent_node_id_present_flag", 0))
        tca = bool(getattr(h, "temporal_context_modeling_flag", 0))
        if tca:
            self.add("PAYLOAD_NOT_VERIFIED", "temporal_context_modeling_flag = 1: the payload depends on the parent "
                     "tensor, which a single bitstream does not carry", u, pay_off, "NNR_NDU.payload", WARNING)
            return
        try:
            res = dc.decode_payload(payload, codings, threads=1)   # no entry points: one thread
        except (BitstreamError, ConfigError) as e:
            msg = getattr(e, "reason", str(e))
            off = pay_off + (e.byte_offset if getattr(e, "byte_offset", None) is not None else len(payload))
            sub = (getattr(e, "syntax_path", None) or "").removeprefix("deepcabac").lstrip(".")
            path = "NNR_NDU.payload" + (f".{sub}" if sub else "")
            if parent:
                self.add("PAYLOAD_NOT_VERIFIED", f"{msg} (the NDU has a parent: the HDSP history it may use is not "
                         "in this bitstream)", u, off, path, WARNING)
            elif e.code == "PAYLOAD_TRUNCATED":
                self.add(e.code, f"{msg} (nnr_unit_size {u.size})", u, off, path)
            elif e.code == "PAYLOAD_SIZE_MISMATCH":
                self.add(e.code, f"{msg}: nnr_unit_size {u.size} does not match the coded data", u, off, path)
            else:
                self.add(e.code or "PAYLOAD_CORRUPT", msg, u, off, path)
            return
        self.report.payloads_verified += 1
        if parent and any(res.hdsp_flags):
            self.add("PAYLOAD_NOT_VERIFIED", "hist_dep_sig_prob_enabled_flag = 1: decoded without the HDSP history "
                     "(not in this bitstream)", u, pay_off, "NNR_NDU.payload", WARNING)
        for i, (kind, qoff, q) in enumerate(zip(kinds, res.qp_offsets, res.levels)):
            if qoff is not None:
                qp = qoff + qp0
                step = float(step_size(qp, qd)) if -4200 < qp < 4200 else 0.0
                if not (0.0 < step < _F32_MAX):
                    self.add("QP_OUT_OF_RANGE", f"tensor {i}: qp {qp} with qp_density {qd} gives step size {step}",
                             u, pay_off, f"NNR_NDU.payload.tensor[{i}].qp_offset")
            if kind == "codebook" and q.size:
                cb = h.codebook
                lo, hi = int(q.min()) + cb.CbZeroOffset, int(q.max()) + cb.CbZeroOffset
                if lo < 0 or hi >= cb.codebook_size:
                    self.add("CODEBOOK_INDEX_RANGE", f"tensor {i}: codebook indices {lo}..{hi} outside "
                             f"0..{cb.codebook_size - 1}", u, pay_off, f"NNR_NDU.payload.tensor[{i}]")
        self.entry_points(u, h, codings, res)

    def entry_points(self, u, h, codings, res) -> None:
        signalled = list(h.cabac_entry_point_list or [])
        scan = h.scan_order or 0
        weight = codings[-1]
        if scan > 0 and dc.effective_scan_order(weight) == 0:
            if signalled:
                self.add("SCAN_ORDER_INEFFECTIVE", f"scan_order {scan} for a {weight.height}x{weight.width} tensor "
                         f"is coded with scan 0; its {len(signalled)} signalled entry point(s) are unused", u,
                         u.offset, f"{_NDU}.scan_order", WARNING)
            return
        measured = [ep for eps in res.entry_points for ep in eps]
        p = f"{_NDU}.cabac_entry_point_list"
        if len(signalled) != len(measured):
            self.add("ENTRY_POINT_MISMATCH", f"{len(signalled)} entry points signalled, {len(measured)} block-row "
                     "starts measured", u, u.offset, p)
            return
        dq = bool(h.dq_flag)
        for j, (s, m) in enumerate(zip(signalled, measured)):
            for fld in ("value", "dq_state", "bit_offset"):
                if fld == "dq_state" and not dq:
                    continue
                if getattr(s, fld) != getattr(m, fld):
                    self.add("ENTRY_POINT_MISMATCH", f"entry point {j}: {fld} is {getattr(s, fld)} in the header, "
                             f"{getattr(m, fld)} measured while decoding", u, u.offset, f"{p}[{j}].{fld}")

    # -- completeness -------------------------------------------------------------------------------
    def completeness(self, units) -> None:
        """Compare the tensors the topology lists with those the NDUs carry."""
        tpl = next((u for u in units if u.nnr_unit_type == B.NNRUnitType.NNR_TPL and u.body is not None), None)
        if not any(u.nnr_unit_type == B.NNRUnitType.NNR_NDU for u in units) and tpl is None:
            return
        expected = None
        if tpl is not None:
            try:
                from ..converters.manifest import expected_names
                expected = expected_names(tpl.body.to_topology())
            except Exception:  # noqa: BLE001 - an unreadable topology lists nothing
                expected = None
        if not expected:
            self.report.completeness = "not verifiable"
            return
        missing = [n for n in expected if n not in self.names]
        self.report.listed, self.report.missing = len(expected), missing
        self.report.completeness = "incomplete" if missing else "verified"
        if missing:
            self.add("TENSOR_MISSING", f"the topology lists {len(expected)} tensors, {len(missing)} are missing "
                     f"(first {missing[0]!r})", len(units), len(self.data), "NNR_TPL.topology_data")

    # -- driver ---------------------------------------------------------------------------------------
    def run(self) -> Report:
        rep = self.report
        if len(self.data) == 0:
            rep.readable = False
            self.add("EMPTY_BITSTREAM", "the input holds no bytes", None, 0, None)
            return rep
        units = []
        with B.paused_gc():     # parsed units are acyclic: no collector passes over them
            for u in (self.parsed if self.parsed is not None else
                      B.iter_units(self.data, strict=False, max_units=self.max_units, budget=self.budget)):
                units.append(u)
                rep.units.append({"index": u.index, "offset": u.offset, "size": u.size, "type": u.type_name})
                for e in u.errors:
                    rep.parse_errors.append(e)
                    self.parser_error(u, e)
                if u.header is not None:
                    try:
                        self.semantics(u)
                    except Exception as e:  # noqa: BLE001 - a checker bug must not hide the other findings
                        self.add("SYNTAX_ERROR", f"internal checker error on this unit: {type(e).__name__}: {e}", u,
                                 u.offset, u.type_name)
        self.completeness(units)
        first = units[0] if units else None
        if first is None or first.header is None or first.nnr_unit_type is None or \
                first.nnr_unit_type > B.NNRUnitType.NNR_AGG or any(
                    v.code in ("TRAILING_BYTES", "TRUNCATED_UNIT", "UNIT_SIZE_INVALID") and v.unit_index == 0
                    for v in rep.violations):
            rep.readable = False
        rep.violations.sort(key=lambda v: (v.unit_index if v.unit_index is not None else -1,
                                           v.byte_offset if v.byte_offset is not None else -1))
        return rep


_F32_MAX = float(np.finfo(np.float32).max)


class _Skip(Exception):
    def __init__(self, code, message, offset, path, severity):
        super().__init__(message)
        self.code, self.message, self.offset, self.path, self.severity = code, message, offset, path, severity


def check(bitstream, raise_on_error: bool = False, *, verify_payloads: bool = True, max_units: int = 1 << 20,
          max_tensor_elements: int = 1 << 28, config=None, units=None) -> Report:
    """Check an NNC bitstream (bytes-like or a file path) for conformance; return a :class:`Report`.

    Every violation found is listed (the check continues after a broken unit whenever its size field is
    sane). With ``raise_on_error=True`` a non-conforming bitstream raises :class:`nnc.ConformanceError`
    whose ``report`` attribute is the report. ``verify_payloads=False`` skips CABAC decoding of NDU payloads
    (header-only check). NDUs with more than ``max_tensor_elements`` elements are not decoded (a warning).

    ``config`` (a :class:`nnc.DecoderConfig`; its ``max_units`` and ``max_tensor_elements`` then replace the two
    keywords) bounds the memory and work of the check as it bounds decoding: parsed headers and every payload
    decoded are charged against ``max_total_bytes``; what does not fit is reported as ``LIMIT_EXCEEDED``
    (a warning: not verified) and the check goes on with the next unit.

    ``units``: the units of ``bitstream`` as a lenient parse with the same limits gave them (e.g. the ``parsed``
    list of :func:`nnc.inspect`, or :attr:`nnc.Decoder.failed_units`): checked without parsing the stream again
    (on a flood of units, or megabytes of codebooks, the parse is most of the check's work).
    """
    if config is None:
        config = active_decoder_limits()   # the CLI's --max-memory / --strict (decoder_limits)
    if config is not None:
        max_units, max_tensor_elements = config.max_units, config.max_tensor_elements
    rep = _Checker(as_bytes(bitstream, allow_path=True), max_units, max_tensor_elements, verify_payloads,
                   config, units).run()
    if raise_on_error:
        rep.raise_if_errors()
    return rep
