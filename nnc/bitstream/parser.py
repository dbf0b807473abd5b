"""Splitting a bitstream into NNR units and parsing their headers (spec §1.1, §1.2, §1.13).

Only the high-level syntax is bit-parsed. An NDU's payload (CABAC bytes or raw float32) is handed out as a
``memoryview`` slice of the input, so parsing cost does not depend on the payload size.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
from typing import Iterator

from ..config import DecoderConfig
from ..errors import (BitstreamError, LimitExceededError, NNCError, TruncatedBitstreamError,
                      UnsupportedFeatureError)
from .bits import BitReader
from .enums import NNRUnitType, PayloadType
from . import syntax as _syntax
from .compiled import compile_items
from .syntax import BUDGET_KEY, LIMITS_KEY, Scope, _read_items, read_struct
from .model import Context, ParsedBitstream, Unit
from .units import BODY_CLASSES, UNIT_HEADER_ITEMS, UnitHeader, _type_name

__all__ = ["parse", "iter_units", "MemoryBudget", "paused_gc"]

#: Memory a parsed unit holds apart from its arrays (Unit, header and body objects, dicts, memoryviews);
#: measured with tracemalloc on NDU headers (about 2.5 KB) and rounded up.
UNIT_BYTES = 4096
#: Parsed-syntax memory that is not charged against ``max_total_bytes``: a few thousand units of ordinary
#: header objects fit in it, so limits derived from a tiny model still leave room for its headers.
HEADER_ALLOWANCE = 16 << 20
#: Units every bitstream may hold whatever its size (``DecoderConfig.min_unit_bytes`` bounds the ones beyond).
UNIT_ALLOWANCE = 2048


class MemoryBudget:
    """One running account of what decoding a bitstream holds: parsed headers (beyond
    :data:`HEADER_ALLOWANCE`) plus decoded data, checked against ``max_total_bytes`` *before* the memory is
    taken. Shared by the parser, the decoder, :func:`nnc.inspect`, :func:`nnc.check` and topology inflation."""

    def __init__(self, limits=None):
        if limits is None:
            limits = DecoderConfig()
        self.limits = limits
        self.header = 0       # parsed syntax (Python objects)
        self.data = 0         # arrays held (outputs, levels kept)

    @property
    def limit(self) -> int:
        return self.limits.max_total_bytes

    @property
    def used(self) -> int:
        return self.data + max(0, self.header - HEADER_ALLOWANCE)

    def charge(self, nbytes: int, what: str, byte_offset: int | None = None, path: str | None = None) -> None:
        """Charge parsed-header memory."""
        if self.data + max(0, self.header + nbytes - HEADER_ALLOWANCE) > self.limit:
            raise LimitExceededError(f"parsing {what} would hold more than max_total_bytes={self.limit} "
                                     f"(headers so far {self.header} bytes, data {self.data} bytes)",
                                     byte_offset=byte_offset, syntax_path=path)
        self.header += nbytes

    def check(self, held: int, transient: int = 0) -> bool:
        """Whether ``held`` more bytes kept plus ``transient`` bytes in use for a moment fit."""
        return self.used + held + transient <= self.limit

    def take(self, held: int, transient: int, what: str, *, unit_index=None, syntax_path=None) -> None:
        """Take ``held`` bytes for good and check that ``transient`` more fit at the same time."""
        if not self.check(held, transient):
            raise LimitExceededError(f"{what} would need {held + transient} more bytes: more than "
                                     f"max_total_bytes={self.limit} (already held {self.used})",
                                     unit_index=unit_index, syntax_path=syntax_path)
        self.data += held

    def release(self, nbytes: int) -> None:
        self.data = max(0, self.data - nbytes)




def _locate(exc: NNCError, unit_index: int, byte_offset: int | None, path: str | None):
    if isinstance(exc, BitstreamError):
        return exc.located(unit_index=unit_index, byte_offset=byte_offset, syntax_path=path)
    for k, v in (("unit_index", unit_index), ("byte_offset", byte_offset), ("syntax_path", path)):
        if getattr(exc, k, None) is None:
            setattr(exc, k, v)
    base = exc.args[0] if exc.args else type(exc).__name__
    where = ", ".join(x for x in (f"unit {exc.unit_index}", f"byte {exc.byte_offset}" if exc.byte_offset is not None
                                  else "", exc.syntax_path or "") if x)
    if "(unit " not in str(base):
        exc.args = (f"{base} ({where})",)
    return exc


_TYPE_NAMES = {int(t): t.name for t in NNRUnitType}
_BODY_PATHS = {int(t): f"{t.name}.{cls.SYNTAX.path}" for t, cls in BODY_CLASSES.items()}
_NDU = int(NNRUnitType.NNR_NDU)
_HEADER_READER: list = []


def _read_unit_header():
    """The compiled reader of nnr_unit_header() (the size field before it is read by hand)."""
    if not _HEADER_READER:
        _HEADER_READER.append(compile_items(UnitHeader, UNIT_HEADER_ITEMS, ("nnr_unit_size_flag", "nnr_unit_size")))
    return _HEADER_READER[0]


class _State:
    __slots__ = ("ctx", "seen_str", "seen_mps", "others_before_mps", "explicit_ctx", "budget", "scope", "scope_ctx",
                 "raw")

    def __init__(self, ctx: Context | None, budget: MemoryBudget | None = None):
        self.scope = self.scope_ctx = None
        self.budget = budget
        self.explicit_ctx = ctx is not None
        self.ctx = ctx or Context()
        self.seen_str = False
        self.seen_mps = ctx is not None
        self.others_before_mps = False
        #: what the headers are read from: the caller's ``bytes`` when it passed bytes (a slice of bytes reads
        #: faster than a slice of a memoryview, and headers are read in slices of a few bytes), else the view
        self.raw = None


def _order_errors(t: int, index: int, st: _State) -> list[tuple[str, str]]:
    errs = []
    T = NNRUnitType
    if index == 0 and t != T.NNR_STR and not st.explicit_ctx:
        errs.append(("STR_NOT_FIRST", "the first unit must be NNR_STR"))
    if t == T.NNR_STR and (index > 0 or st.explicit_ctx):
        errs.append(("STR_DUPLICATE", "NNR_STR may only be the first unit"))
    if t == T.NNR_MPS:
        if st.seen_mps:
            errs.append(("MPS_DUPLICATE", "a second NNR_MPS (at most one is allowed)"))
        elif st.others_before_mps:
            errs.append(("MPS_MISPLACED", "NNR_MPS must directly follow NNR_STR (the reference decoder rejects "
                                          "it after any other unit)"))
    if t in (T.NNR_NDU, T.NNR_TPL) and not st.seen_mps:
        errs.append(("MPS_MISSING", f"{T(t).name} before any NNR_MPS (an NNR_MPS must precede every NNR_TPL "
                                    "and NNR_NDU)"))
    return errs


def _parse_unit(mv: memoryview, pos: int, index: int, st: _State, strict: bool) -> tuple[Unit, int | None]:
    """Parse the unit at ``pos``. Returns the unit and the offset of the next one (``None``: cannot go on)."""
    n = len(mv)
    unit = Unit(index=index, offset=pos, size=None, header=None, context=st.ctx)

    def fail(exc, byte_offset=None, path=None):
        exc = _locate(exc, index, byte_offset, path)
        if strict:
            raise exc
        # kept without its traceback: the frames it holds (a reader's locals) would stay alive with the error
        # and give the collector cycles to walk, one per damaged unit of a hostile stream
        unit.errors.append(exc.with_traceback(None))

    # -- nnr_unit_size() --------------------------------------------------------------------------
    flag = mv[pos] >> 7
    field_len = 4 if flag else 2
    if pos + field_len <= n:
        size = int.from_bytes(mv[pos:pos + field_len], "big") & (0x7FFFFFFF if flag else 0x7FFF)
    else:                                   # cut short: the bit reader's error
        r = BitReader(mv, pos, n)
        try:
            flag = r.u(1)
            size = r.u(31 if flag else 15)
        except BitstreamError as exc:
            fail(exc, pos, "nnr_unit_size")
            return unit, None
    unit.size = size
    if size < field_len + 1:
        fail(BitstreamError(f"nnr_unit_size {size} is smaller than its own size field plus the unit type byte",
                            code="UNIT_SIZE_INVALID"),
             pos, "nnr_unit_size")
        return unit, (pos + size if size >= field_len else None)
    if size > n - pos:
        fail(TruncatedBitstreamError(f"unit of {size} bytes (nnr_unit_size) runs past the end of the data: "
                                     f"only {n - pos} byte(s) left", code="TRUNCATED_UNIT"), pos, "nnr_unit_size")
        return unit, None
    end = pos + size
    unit.data = mv[pos:end]

    # -- nnr_unit_header() ------------------------------------------------------------------------
    r = BitReader(st.raw, pos + field_len, end)
    hdr = None
    if _syntax.USE_COMPILED:
        try:
            hdr = _read_unit_header()(r, None, "nnr_unit_header", flag, size)
        except BitstreamError:
            r = BitReader(st.raw, pos + field_len, end)    # the interpreter below gives the error and partial header
    if hdr is None:
        values = {"nnr_unit_size_flag": flag, "nnr_unit_size": size}
        try:
            _read_items(UNIT_HEADER_ITEMS, r, Scope(values), "nnr_unit_header")
        except BitstreamError as exc:
            unit.header = UnitHeader(**values) if "nnr_unit_type" in values else None
            fail(exc)
            return unit, end
        hdr = UnitHeader(**values)
    unit.header = hdr
    t = hdr.nnr_unit_type
    name = _TYPE_NAMES.get(t) or _type_name(t)
    if not (t == _NDU and st.seen_mps and (index or st.explicit_ctx)):     # an NDU after the MPS is in order
        for code, msg in _order_errors(t, index, st):
            fail(BitstreamError(msg, code=code), pos, f"{name}.nnr_unit_header.nnr_unit_type")
    if t > NNRUnitType.NNR_AGG:
        fail(BitstreamError(f"reserved nnr_unit_type {t}", code="RESERVED_UNIT_TYPE"), pos + field_len,
             "nnr_unit_header.nnr_unit_type")
        st.others_before_mps = True
        return unit, end
    if t == NNRUnitType.NNR_AGG:
        fail(UnsupportedFeatureError("NNR_AGG (aggregate) units are not supported"), pos, name)
        st.others_before_mps = True
        return unit, end

    # -- type-specific header (and payload syntax) ------------------------------------------------
    cls = BODY_CLASSES[t]
    path = _BODY_PATHS[t]
    if st.scope_ctx is not st.ctx:      # the readers never write to their parent scope: one per context
        st.scope = st.ctx.scope()
        st.scope_ctx = st.ctx
        if st.budget is not None:
            st.scope.values[BUDGET_KEY] = st.budget
            st.scope.values[LIMITS_KEY] = st.budget.limits
    scope = st.scope
    try:
        body = read_struct(cls, r, scope, path)
    except (BitstreamError, UnsupportedFeatureError) as exc:
        fail(exc)
        body = None
    header_size = (r.pos >> 3) - pos
    if body is not None:
        if t == NNRUnitType.NNR_NDU:
            unit.payload = mv[pos + header_size:end]
            if body.nnr_compressed_data_unit_payload_type == PayloadType.NNR_PT_RAW_FLOAT:
                want = 4
                for d in body.tensor_dimensions:
                    want *= d
                if want != len(unit.payload):
                    fail(BitstreamError(f"NNR_PT_RAW_FLOAT payload has {len(unit.payload)} bytes but the tensor "
                                        f"dimensions need {want}", code="PAYLOAD_SIZE_MISMATCH"), pos + header_size,
                         f"{name}.raw_float32_parameter")
        elif header_size != size:
            fail(BitstreamError(f"{name}: nnr_unit_size is {size} bytes but the unit's syntax ends after "
                                f"{header_size} bytes", code="UNIT_SIZE_MISMATCH"), pos + header_size, path)
        unit.header_size = header_size
        unit.body = body

    # -- context for the following units ----------------------------------------------------------
    if t == NNRUnitType.NNR_STR:
        st.seen_str = True
        if body is not None and index == 0:
            st.ctx = dataclasses.replace(st.ctx, general_profile_idc=body.general_profile_idc)
    else:
        if t == NNRUnitType.NNR_MPS and not st.seen_mps:
            st.seen_mps = True
            if body is not None:
                st.ctx = st.ctx.with_mps(body)
        elif t == NNRUnitType.NNR_LPS and body is not None:
            st.ctx = dataclasses.replace(st.ctx, lps=body)
        if t != NNRUnitType.NNR_MPS:
            st.others_before_mps = True
    return unit, end


def _as_bytes_view(data) -> memoryview:
    mv = memoryview(data)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


def _unit_cap(n: int, max_units: int | None, budget) -> tuple[int | None, str, str]:
    """The most units a stream of ``n`` bytes may hold, and the error's message and code: ``max_units``, or the
    limits' ``min_unit_bytes`` density bound (:data:`UNIT_ALLOWANCE` + one unit per that many bytes) when lower
    (code UNIT_DENSITY: a limit of the reader's, not a property of the stream, so check reports it as
    LIMIT_EXCEEDED)."""
    per = getattr(budget.limits, "min_unit_bytes", 0) if budget is not None else 0
    if per:
        dense = UNIT_ALLOWANCE + n // per
        if max_units is None or dense < max_units:
            return dense, (f"more than {dense} NNR units in {n} bytes: at most {UNIT_ALLOWANCE} + one per {per} "
                           f"bytes of input (min_unit_bytes={per}, a flood of tiny units)"), "UNIT_DENSITY"
    return max_units, f"more than {max_units} NNR units", "TOO_MANY_UNITS"


def _iterate(mv: memoryview, st: _State, strict: bool, max_units: int | None, data=None) -> Iterator[Unit]:
    st.raw = data if type(data) is bytes else mv
    pos = 0
    index = 0
    n = len(mv)
    max_units, too_many, code = _unit_cap(n, max_units, st.budget)
    while pos < n:
        if max_units is not None and index >= max_units:
            exc = LimitExceededError(too_many, unit_index=index, byte_offset=pos, code=code)
            if strict:
                raise exc
            yield Unit(index=index, offset=pos, size=None, header=None, context=st.ctx, errors=[exc])
            return
        b = st.budget
        if b is not None and b.data + max(0, b.header + UNIT_BYTES - HEADER_ALLOWANCE) <= b.limit:
            b.header += UNIT_BYTES           # MemoryBudget.charge's check, inline
        elif b is not None:
            try:
                b.charge(UNIT_BYTES, f"unit {index}", pos)
            except LimitExceededError as exc:
                exc.located(unit_index=index)
                if strict:
                    raise
                yield Unit(index=index, offset=pos, size=None, header=None, context=st.ctx, errors=[exc])
                return
        unit, nxt = _parse_unit(mv, pos, index, st, strict)
        yield unit
        if unit.errors and st.budget is not None and any(isinstance(e, LimitExceededError) for e in unit.errors):
            return      # the budget is spent: every later unit would fail the same way
        if nxt is None:
            return
        pos = nxt
        index += 1


def iter_units(data, *, strict: bool = True, max_units: int | None = None,
               context: Context | None = None, limits=None, budget: MemoryBudget | None = None) -> Iterator[Unit]:
    """Yield the units of ``data`` one by one.

    With ``strict=True`` the first problem raises (a :class:`BitstreamError` subclass, or
    :class:`UnsupportedFeatureError`), located by unit index, byte offset and syntax path. With
    ``strict=False`` problems are collected in ``unit.errors`` and iteration goes on at the next unit
    whenever the unit's size field could be read and fits the data; it stops after a unit whose size field
    is unusable. ``context`` starts parsing mid-stream (the STR-first rule is then not applied).

    ``limits`` (a :class:`nnc.DecoderConfig`) makes the parser check ``max_rank`` and ``max_codebook_size``
    before it reads the arrays they bound, and charge every unit and array to a :class:`MemoryBudget`
    (``budget``, or a new one) against ``max_total_bytes`` before reading it; ``max_units`` defaults to the
    limits' value. Without either, nothing is charged."""
    budget = _budget(limits, budget)
    if max_units is None and budget is not None:
        max_units = budget.limits.max_units
    return _iterate(_as_bytes_view(data), _State(context, budget), strict, max_units, data)


def _budget(limits, budget):
    if budget is not None:
        return budget
    if limits is not None:
        return MemoryBudget(limits)
    return None


@contextlib.contextmanager
def paused_gc():
    """Pause the cyclic garbage collector while a bitstream's units are parsed (and re-enable it after, if it
    was enabled). Parsing makes only acyclic objects, several per unit; with the collector running, its
    repeated passes over them cost a quarter of the parse time on a flood of small units."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def parse(data, *, max_units: int | None = None, strict: bool = True,
          context: Context | None = None, limits=None, budget: MemoryBudget | None = None) -> ParsedBitstream:
    """Parse a whole bitstream into a :class:`ParsedBitstream` (see :func:`iter_units` for ``strict``,
    ``limits`` and ``budget``).

    ``ParsedBitstream.context`` is the context after the last unit (profile, MPS, latest LPS)."""
    mv = _as_bytes_view(data)
    budget = _budget(limits, budget)
    if max_units is None and budget is not None:
        max_units = budget.limits.max_units
    st = _State(context, budget)
    units: list[Unit] = []
    errors: list = []
    with paused_gc():
        for u in _iterate(mv, st, strict, max_units, data):
            units.append(u)
            errors.extend(u.errors)
    return ParsedBitstream(mv, units, errors, st.ctx)
