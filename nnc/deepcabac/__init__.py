"""DeepCABAC entropy coding and the encoder-side quantizers of MPEG NNC (ISO/IEC 15938-17).

This module is the Python face of a C++ core (``nnc/deepcabac/src``, bound in ``_core``). It codes the
CABAC payload of one NNR compressed data unit: one or more tensors in one arithmetic-coder session,
ending with the terminating bin and the flush. The output is bit-exact with NNCodec 2.1.3.

Everything is described in ``NNC_BITSTREAM.md`` §1.10, §1.11, §2 and §3.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from nnc.errors import BitstreamError, ConfigError, InputError, TruncatedBitstreamError

from . import _core

__all__ = [
    "TensorCoding",
    "EncodeOptions",
    "EntryPoint",
    "DecodedPayload",
    "encode_payload",
    "encode_payloads",
    "decode_payload",
    "decode_payloads",
    "decode_levels",
    "quantize",
    "QuantizationOverflowError",
    "block_row_count",
    "effective_scan",
    "effective_scan_order",
]

# The core reports a failure as _core.CoreError carrying its status and location; _raise maps it onto nnc.errors.
_S = _core.Status


@dataclass(frozen=True)
class TensorCoding:
    """Everything the CABAC layer needs to code one tensor.

    ``shape`` are the header dims: H = shape[0], W = prod(shape[1:]) (1 for rank 1). Rank 0 is not allowed
    (NNC codes scalars as shape ``(1,)``).
    """

    shape: tuple[int, ...]
    profile: int = 1
    unary_length: int = 11
    qp_bits: int | None = 8
    scan_order: int = 0
    dq: bool = False
    parent_present: bool = False
    codebook_size: int = 0
    codebook_zero: int = 0
    tca_base: np.ndarray | None = None
    hdsp_history: np.ndarray | None = None  # history mask; a nonzero entry marks an HDSP-active position

    @property
    def height(self) -> int:
        return int(self.shape[0])

    @property
    def width(self) -> int:
        return int(math.prod(self.shape[1:])) if len(self.shape) > 1 else 1

    @property
    def size(self) -> int:
        return self.height * self.width


@dataclass(frozen=True)
class EncodeOptions:
    """Encoder choices that are not implied by the tensor's coding parameters.

    ``allow_dq_mismatch`` (extension): by default an integer q whose parity does not match the DQ state
    at its position raises :class:`nnc.errors.InputError`; with True it is coded the way NNCodec codes it
    (the decoder will then reconstruct a different value, §6 item 25).
    """

    param_opt: bool = True
    row_skipping: bool = False
    hdsp: bool = False
    allow_dq_mismatch: bool = False


@dataclass(frozen=True)
class EntryPoint:
    """Entry point of block row r+1: V >> 7 after the range reset, the DQ state, and t_{r+1} - t_r."""

    value: int
    dq_state: int
    bit_offset: int


@dataclass
class DecodedPayload:
    levels: list[np.ndarray]
    qp_offsets: list[int | None]
    hdsp_flags: list[bool]
    row_skip_flags: list[bool]
    entry_points: list[list[EntryPoint]]
    consumed: int
    parallel: list[bool] = field(default_factory=list)  # block rows decoded in parallel (extension)


# ----------------------------------------------------------------------------------------------------
def effective_scan(shape: Sequence[int], scan_order: int) -> int:
    """The scan order the coder uses for header dims ``shape`` (§3.9): 0 when the tensor has one row or one
    column (rank < 2 included), else ``scan_order``. The one statement of this rule in Python (the core has
    its own for the coder)."""
    if len(shape) < 2 or int(shape[0]) <= 1 or math.prod(int(d) for d in shape[1:]) <= 1:
        return 0
    return int(scan_order)


def effective_scan_order(coding: TensorCoding) -> int:
    """Scan order actually used by the coder for ``coding`` (:func:`effective_scan`)."""
    return effective_scan(coding.shape, coding.scan_order)


def block_row_count(coding: TensorCoding) -> int:
    """Number of block rows of the effective scan (1 for scan order 0)."""
    s = effective_scan_order(coding)
    if s == 0:
        return 1
    b = 4 << s
    return -(-coding.height // b)


# ----------------------------------------------------------------------------------------------------
def _spec(i: int, c: TensorCoding) -> _core.TensorSpec:
    """The core's typed spec for ``c`` (tensor ``i`` of the session). The core checks the ranges again
    (``check_spec``); these checks give the Python-side messages before any array is allocated. The scan order's
    range is the core's alone (its message is the same)."""
    if not isinstance(c, TensorCoding):
        raise ConfigError(f"tensor {i}: expected TensorCoding, got {type(c).__name__}")
    try:
        shape = c.shape
        if len(shape) == 0:
            raise ConfigError(f"tensor {i}: rank-0 shapes are not allowed (code scalars as shape (1,))")
        if min(shape) < 1:
            raise ConfigError(f"tensor {i}: every dimension must be >= 1, got {shape}")
        profile, qp_bits = c.profile, c.qp_bits
        if profile != 0 and profile != 1:
            raise ConfigError(f"tensor {i}: profile must be 0 or 1")
        if not 1 <= c.unary_length <= 256:
            raise ConfigError(f"tensor {i}: unary_length must be in 1..256")
        if qp_bits is not None and not 1 <= qp_bits <= 32:
            raise ConfigError(f"tensor {i}: qp_bits must be None or 1..32")
        if c.codebook_size < 0 or (c.codebook_size > 0 and not 0 <= c.codebook_zero < c.codebook_size):
            raise ConfigError(f"tensor {i}: codebook_zero must be in 0..codebook_size-1")
        tca = hist = None
        if c.tca_base is not None:
            if profile != 1 or not c.parent_present:
                raise ConfigError(f"tensor {i}: TCA needs profile 1 and parent_present "
                                  "(temporal_context_modeling_flag)")
            tca = _tca_base(i, c)
        if c.hdsp_history is not None:
            hist = _hdsp_history(i, c)
        return _core.TensorSpec(shape[0], math.prod(shape[1:]), profile=profile, unary_length=c.unary_length,
                                qp_bits=qp_bits or 0, scan_order=c.scan_order, dq=bool(c.dq),
                                parent_present=bool(c.parent_present), codebook_size=c.codebook_size,
                                codebook_zero=c.codebook_zero, tca_base=tca, hdsp_history=hist)
    except TypeError:  # the binding takes ints and bools only: name the field of the wrong type
        raise ConfigError(f"tensor {i}: {_wrong_field(c)}") from None


def _tca_base(i: int, c: TensorCoding) -> np.ndarray:
    b = np.asarray(c.tca_base)
    if b.dtype != np.int32:
        raise ConfigError(f"tensor {i}: tca_base must be int32, got {b.dtype}")
    if b.size != c.size:
        raise ConfigError(f"tensor {i}: tca_base has {b.size} elements, the tensor {c.size}")
    return np.ascontiguousarray(b).reshape(-1)


def _hdsp_history(i: int, c: TensorCoding) -> np.ndarray:
    h = np.asarray(c.hdsp_history)
    if h.size != c.size:
        raise ConfigError(f"tensor {i}: hdsp_history has {h.size} elements, the tensor {c.size}")
    if h.dtype in (np.bool_, np.int8, np.uint8):
        return np.ascontiguousarray(h).reshape(-1).view(np.uint8)
    return (np.ascontiguousarray(h).reshape(-1) != 0).view(np.uint8)


_INT_FIELDS = ("profile", "unary_length", "qp_bits", "scan_order", "codebook_size", "codebook_zero")


def _wrong_field(c: TensorCoding) -> str:
    for d in c.shape:
        if not isinstance(d, (int, np.integer)):
            return f"shape entries must be integers, got {type(d).__name__} in {c.shape!r}"
    for name in _INT_FIELDS:
        v = getattr(c, name)
        if not isinstance(v, (int, np.integer)) and not (name == "qp_bits" and v is None):
            return f"TensorCoding.{name} must be an integer, got {type(v).__name__} {v!r}"
    return "a TensorCoding field has the wrong type or does not fit the core's integer types"


def _raise(e: Exception, *, encoding: bool = False) -> None:
    """Raise the nnc.errors exception for the core's CoreError ``e``, with the core's location as attributes:
    ``tensor_index`` (tensor of the session), ``position`` (element or row) and, for bitstream errors,
    ``payload_bit_offset`` (the decoder's read position in the payload)."""
    st, msg = e.status, str(e)
    loc = {"tensor_index": e.tensor, "position": e.position}
    err: Exception
    if st == _S.TRUNCATED:
        err = TruncatedBitstreamError(msg, code="PAYLOAD_TRUNCATED", payload_bit_offset=e.bit_position, **loc)
    elif st == _S.TRAILING:
        err = BitstreamError(msg, code="PAYLOAD_SIZE_MISMATCH", payload_bit_offset=e.bit_position, **loc)
    elif st == _S.CORRUPT:
        err = BitstreamError(msg, code="PAYLOAD_CORRUPT", payload_bit_offset=e.bit_position, **loc)
    elif st == _S.OVERFLOW:
        err = QuantizationOverflowError(msg)
    elif st == _S.BAD_INPUT:
        err = InputError(msg, **loc)
    elif st == _S.BAD_CONFIG:
        err = ConfigError(msg, **loc)
    else:
        raise RuntimeError(f"DeepCABAC {'encoder' if encoding else 'core'} failed ({st.name}): {msg}") from None
    raise err from None


def _entry_points(raw) -> list[EntryPoint]:
    return [EntryPoint(e.value, e.dq_state, e.bit_offset) for e in raw]


def encode_payload(
    items: Sequence[tuple[np.ndarray, TensorCoding, int, EncodeOptions]], *, threads: int = 1,
) -> tuple[bytes, list[list[EntryPoint]]]:
    """Code the tensors of one NDU into one CABAC payload (terminating bin and flush included).

    ``items``: (q, coding, qp_offset, options) per tensor in coding order; q are the stored integers
    (int32, any shape with ``coding.size`` elements, read in C order, not copied when C-contiguous int32).
    ``qp_offset`` is ignored when ``coding.qp_bits`` is None; otherwise it is masked to qp_bits bits.

    Returns the payload bytes and, per tensor, the entry points to signal (empty unless the tensor has
    two or more block rows). Errors the core finds (:class:`nnc.errors.InputError`, e.g. a DQ parity mismatch)
    carry ``tensor_index`` and ``position`` (the element).

    ``threads`` > 1 (extension): the block rows of a tensor with two or more of them (scan order > 0, at
    least 65,536 elements) are coded on that many threads, each run of rows by a coder of its own, joined
    into the one payload afterwards: the same bytes and entry points as on one thread.
    """
    specs, settings, levels = [], [], []
    for i, (q, c, qp, opt) in enumerate(items):
        specs.append(_spec(i, c))
        a = np.asarray(q)
        if a.dtype != np.int32:
            if a.dtype.kind not in "iu" and a.dtype != np.bool_:
                raise InputError(f"tensor {i}: levels must be integers, got {a.dtype}")
            if a.size and (a.min() < -(2**31) + 1 or a.max() > 2**31 - 1):
                raise InputError(f"tensor {i}: levels do not fit in int32")
            a = a.astype(np.int32)
        if a.size != c.size:
            raise InputError(f"tensor {i}: {a.size} levels for shape {c.shape}")
        levels.append(np.ascontiguousarray(a).reshape(-1))
        opt = opt if opt is not None else EncodeOptions()
        qp_offset = _wrap32(int(qp or 0)) if c.qp_bits is not None else 0
        settings.append(_core.EncodeSettings(param_opt=bool(opt.param_opt), row_skipping=bool(opt.row_skipping),
                                             hdsp=bool(opt.hdsp), qp_offset=qp_offset,
                                             allow_dq_mismatch=bool(opt.allow_dq_mismatch)))
    try:
        payload, eps = _core.encode(levels, specs, settings, int(max(1, threads)))
    except _core.CoreError as e:
        _raise(e, encoding=True)
    return payload, [_entry_points(e) for e in eps]


def _wrap32(v: int) -> int:
    """``v`` as the core's int32 qp offset (the core masks it to qp_bits bits; the table kept the low 32 bits)."""
    return ((v + 2**31) & 0xFFFFFFFF) - 2**31


def decode_payload(data, tensors: Sequence[TensorCoding], *, entry_points=None,
                   threads: int | None = None) -> DecodedPayload:
    """Decode the CABAC payload of one NDU holding ``tensors`` (in coding order).

    ``data`` must be exactly the CABAC bytes (the NDU payload after the header); a payload that is too
    short raises :class:`nnc.errors.TruncatedBitstreamError`, one that is inconsistent or has trailing
    bytes raises :class:`nnc.errors.BitstreamError`. Both carry where the core found the problem:
    ``tensor_index`` (the tensor of ``tensors``, None after the last one), ``position`` (the element, or None)
    and ``payload_bit_offset`` (the arithmetic decoder's read position in ``data`` in bits, which runs up to
    16 bits ahead of the bin being decoded); the caller adds the unit and byte (:meth:`BitstreamError.located`).

    Optional (extension): ``entry_points`` = per tensor the entry points signalled in the NDU header (or
    None). Tensors with two or more block rows are then decoded with their block rows in parallel on
    ``threads`` threads (default: all CPUs). Entry points that do not join up exactly with the payload are
    ignored (the tensor is decoded sequentially, which is what a sequential decoder would produce).
    """
    outs, info, consumed = _decode(data, tensors, entry_points, threads)
    res = DecodedPayload([], [], [], [], [], consumed, [])
    for o, c, t in zip(outs, tensors, info):
        res.levels.append(o.reshape(c.shape))
        res.qp_offsets.append(t.qp_offset)
        res.hdsp_flags.append(t.hdsp_flag)
        res.row_skip_flags.append(t.row_skip_flag)
        eps = t.entry_points
        res.entry_points.append([EntryPoint(e.value, e.dq_state, e.bit_offset) for e in eps] if eps else [])
        res.parallel.append(t.parallel)
    return res


def decode_levels(data, tensors: Sequence[TensorCoding], *, entry_points=None,
                  threads: int | None = None) -> tuple[list[np.ndarray], list[int | None], int]:
    """:func:`decode_payload` reduced to what a decoder of NDUs uses: the levels of each tensor (in its shape),
    each tensor's qp offset, and the bytes consumed (the same checks and errors, without the per-tensor
    records that cost more than decoding a tiny tensor)."""
    outs, info, consumed = _decode(data, tensors, entry_points, threads)
    return [o.reshape(c.shape) for o, c in zip(outs, tensors)], [t.qp_offset for t in info], consumed


def _decode(data, tensors, entry_points, threads):
    t = type(data)
    if t is bytes or t is bytearray or (t is memoryview and data.format == "B" and data.c_contiguous):
        buf = data  # to the core as it is (buffer protocol: no copy, and cheaper than a numpy view)
    elif isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(data, dtype=np.uint8)
    specs = [_spec_of(i, c) for i, c in enumerate(tensors)]
    outs = [np.empty(s.height * s.width, dtype=np.int32) for s in specs]
    if entry_points is not None:
        if len(entry_points) != len(tensors):
            raise ConfigError("entry_points needs one entry (list or None) per tensor")
        for i, e in enumerate(entry_points):
            if e and any(int(p.value) < 0 or int(p.dq_state) < 0 or int(p.bit_offset) < 0 for p in e):
                raise BitstreamError(f"negative entry-point field for tensor {i}", tensor_index=i)
    if threads is None:
        threads = _CPUS
    try:
        info, consumed = _core.decode(buf, specs, outs, entry_points, max(1, int(threads)))
    except _core.CoreError as e:
        _raise(e)
    return outs, info, consumed


def _spec_of(i: int, c: TensorCoding) -> _core.TensorSpec:
    """:func:`_spec`, kept per ``TensorCoding`` object without arrays (the core's spec is read-only): a decoder's
    plans share one coding among the NDUs whose headers differ only in the tensor's name. Bounded; a spec
    names no tensor index (``i`` only words the error of a coding that is refused, and that is never kept)."""
    hit = _SPECS.get(id(c))
    if hit is not None and hit[0] is c:
        return hit[1]
    spec = _spec(i, c)
    if type(c) is TensorCoding and c.tca_base is None and c.hdsp_history is None:
        if len(_SPECS) >= 4096:
            _SPECS.clear()
        _SPECS[id(c)] = (c, spec)     # the coding is kept alive with its entry: its id stays its own
    return spec


_SPECS: dict = {}


_CPUS = os.cpu_count() or 1


def _run_parallel(fn, jobs, weights, max_workers):
    if max_workers is None:
        max_workers = min(len(jobs), os.cpu_count() or 1)
    if max_workers <= 1 or len(jobs) <= 1:
        return [fn(*j) for j in jobs]
    # Largest jobs first keeps the workers busy; results are returned in job order and the first error in
    # job order is raised.
    order = sorted(range(len(jobs)), key=lambda i: -weights[i])
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = {i: pool.submit(fn, *jobs[i]) for i in order}
        return [futures[i].result() for i in range(len(jobs))]


def encode_payloads(jobs, *, max_workers: int | None = None) -> list[tuple[bytes, list[list[EntryPoint]]]]:
    """Encode several independent NDU payloads concurrently (the C++ encoder releases the GIL).

    ``jobs``: sequence of ``items`` lists as taken by :func:`encode_payload`; results in job order.
    """
    jobs = [(list(items),) for items in jobs]
    weights = [sum(int(np.size(it[0])) for it in j[0]) for j in jobs]
    return _run_parallel(encode_payload, jobs, weights, max_workers)


def decode_payloads(jobs, *, max_workers: int | None = None) -> list[DecodedPayload]:
    """Decode several independent CABAC payloads (e.g. the NDUs of one bitstream) concurrently.

    ``jobs``: sequence of (data, tensors) as for :func:`decode_payload`. The C++ decoder releases the GIL,
    so the payloads are decoded in parallel threads; results are returned in job order and the first
    error (in job order) is raised.
    """
    jobs = [(d, list(t)) for d, t in jobs]
    weights = [sum(c.size for c in j[1]) for j in jobs]
    return _run_parallel(decode_payload, jobs, weights, max_workers)


class QuantizationOverflowError(OverflowError):
    """A quantized value would not fit in int32 (NNCodec then re-derives a larger qp, §2.8)."""


def quantize(x: np.ndarray, step: float, *, dq: bool, scan_order: int = 0) -> np.ndarray:
    """Reference-exact quantization with lambda 0 (§2.8).

    ``x`` float32 array (H = shape[0], W = prod(shape[1:])); ``step`` is rounded to float32 as NNCodec does.
    URQ (dq=False): q = roundf(x * float32(1/step)). DQ: 8-state trellis in the scan order of ``scan_order``.
    Returns int32 q with the shape of x. Raises :class:`QuantizationOverflowError` (an OverflowError) when a
    value does not fit, and :class:`nnc.errors.InputError` for NaN.
    """
    a = np.asarray(x)
    if a.dtype != np.float32:
        raise InputError(f"quantize expects float32, got {a.dtype}")
    if a.ndim == 0:
        a = a.reshape(1)
    h = int(a.shape[0])
    w = int(math.prod(a.shape[1:])) if a.ndim > 1 else 1
    step32 = float(np.float32(step))
    if step > 0 and step32 == 0.0:
        raise QuantizationOverflowError(f"step size {step!r} underflows float32")
    flat = np.ascontiguousarray(a).reshape(-1)
    q = np.empty(flat.size, dtype=np.int32)
    if flat.size == 0:
        return q.reshape(a.shape)
    try:
        _core.quantize(flat, q, h, w, step32, bool(dq), int(scan_order))
    except _core.CoreError as e:
        _raise(e)
    return q.reshape(a.shape)
