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
    "quantize",
    "QuantizationOverflowError",
    "step_size",
    "block_row_count",
    "effective_scan_order",
    "entry_point_count",
]

# Status codes of the C++ core.
_OK, _TRUNCATED, _CORRUPT, _BAD_CONFIG, _BAD_INPUT, _OVERFLOW, _INTERNAL, _TRAILING = range(8)


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
def effective_scan_order(coding: TensorCoding) -> int:
    """Scan order actually used by the coder (0 for W = 1 or H = 1), §3.9."""
    if coding.width <= 1 or coding.height <= 1:
        return 0
    return int(coding.scan_order)


def block_row_count(coding: TensorCoding) -> int:
    """Number of block rows of the effective scan (1 for scan order 0)."""
    s = effective_scan_order(coding)
    if s == 0:
        return 1
    b = 4 << s
    return -(-coding.height // b)


def entry_point_count(shape: Sequence[int], scan_order: int) -> int:
    """Number of entries in cabac_entry_point_list for header dims ``shape`` (§1.11), from d0 only."""
    if len(shape) <= 1 or scan_order <= 0:
        return 0
    b = 4 << scan_order
    return -(-int(shape[0]) // b) - 1


def step_size(qp: int, qp_density: int) -> float:
    """Quantization step for integer qp and qp_density (§2.1), as a float32-exact Python float."""
    k = 1 << qp_density
    mul = k + (qp & (k - 1))
    shift = qp >> qp_density
    return float(np.float32(mul * 2.0 ** (shift - qp_density)))


# ----------------------------------------------------------------------------------------------------
def _check_coding(i: int, c: TensorCoding) -> None:
    if not isinstance(c, TensorCoding):
        raise ConfigError(f"tensor {i}: expected TensorCoding, got {type(c).__name__}")
    if len(c.shape) == 0:
        raise ConfigError(f"tensor {i}: rank-0 shapes are not allowed (code scalars as shape (1,))")
    if any(int(d) < 1 for d in c.shape):
        raise ConfigError(f"tensor {i}: every dimension must be >= 1, got {c.shape}")
    if c.profile not in (0, 1):
        raise ConfigError(f"tensor {i}: profile must be 0 or 1")
    if not 1 <= c.unary_length <= 256:
        raise ConfigError(f"tensor {i}: unary_length must be in 1..256")
    if c.qp_bits is not None and not 1 <= c.qp_bits <= 32:
        raise ConfigError(f"tensor {i}: qp_bits must be None or 1..32")
    if not 0 <= c.scan_order <= 4:
        raise ConfigError(f"tensor {i}: scan_order must be in 0..4")
    if c.codebook_size < 0 or (c.codebook_size > 0 and not 0 <= c.codebook_zero < c.codebook_size):
        raise ConfigError(f"tensor {i}: codebook_zero must be in 0..codebook_size-1")
    if c.tca_base is not None and (c.profile != 1 or not c.parent_present):
        raise ConfigError(f"tensor {i}: TCA needs profile 1 and parent_present (temporal_context_modeling_flag)")


def _spec_table(codings: Sequence[TensorCoding]) -> tuple[np.ndarray, list, list]:
    table = np.zeros((len(codings), 10), dtype=np.int64)
    tca: list = []
    hist: list = []
    for i, c in enumerate(codings):
        _check_coding(i, c)
        table[i] = (c.height, c.width, c.profile, c.unary_length, c.qp_bits or 0, c.scan_order,
                    int(bool(c.dq)), int(bool(c.parent_present)), c.codebook_size, c.codebook_zero)
        if c.tca_base is None:
            tca.append(None)
        else:
            b = np.asarray(c.tca_base)
            if b.dtype != np.int32:
                raise ConfigError(f"tensor {i}: tca_base must be int32, got {b.dtype}")
            if b.size != c.size:
                raise ConfigError(f"tensor {i}: tca_base has {b.size} elements, the tensor {c.size}")
            tca.append(np.ascontiguousarray(b).reshape(-1))
        if c.hdsp_history is None:
            hist.append(None)
        else:
            h = np.asarray(c.hdsp_history)
            if h.size != c.size:
                raise ConfigError(f"tensor {i}: hdsp_history has {h.size} elements, the tensor {c.size}")
            if h.dtype in (np.bool_, np.int8, np.uint8):
                h = np.ascontiguousarray(h).reshape(-1).view(np.uint8)
            else:
                h = (np.ascontiguousarray(h).reshape(-1) != 0).view(np.uint8)
            hist.append(h)
    return table, tca, hist


def _entry_points(raw) -> list[EntryPoint]:
    return [EntryPoint(int(v), int(s), int(o)) for (v, s, o) in raw]


def encode_payload(
    items: Sequence[tuple[np.ndarray, TensorCoding, int, EncodeOptions]], *, threads: int = 1,
) -> tuple[bytes, list[list[EntryPoint]]]:
    """Code the tensors of one NDU into one CABAC payload (terminating bin and flush included).

    ``items``: (q, coding, qp_offset, options) per tensor in coding order; q are the stored integers
    (int32, any shape with ``coding.size`` elements, read in C order, not copied when C-contiguous int32).
    ``qp_offset`` is ignored when ``coding.qp_bits`` is None; otherwise it is masked to qp_bits bits.

    Returns the payload bytes and, per tensor, the entry points to signal (empty unless the tensor has
    two or more block rows).

    ``threads`` > 1 (extension): the block rows of a tensor with two or more of them (scan order > 0, at
    least 65,536 elements) are coded on that many threads, each run of rows by a coder of its own, joined
    into the one payload afterwards: the same bytes and entry points as on one thread.
    """
    codings = [it[1] for it in items]
    table, tca, hist = _spec_table(codings)
    settings = np.zeros((len(items), 5), dtype=np.int64)
    levels = []
    for i, (q, c, qp, opt) in enumerate(items):
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
        settings[i] = (int(opt.param_opt), int(opt.row_skipping), int(opt.hdsp),
                       int(qp or 0) if c.qp_bits is not None else 0, int(opt.allow_dq_mismatch))
    st, ti, pos, msg, payload, eps = _core.encode(levels, table, settings, tca, hist, int(max(1, threads)))
    if st == _BAD_INPUT:
        raise InputError(msg)
    if st == _BAD_CONFIG:
        raise ConfigError(msg)
    if st != _OK:
        raise RuntimeError(f"DeepCABAC encoder failed ({st}): {msg}")
    return payload, [_entry_points(e) for e in eps]


def decode_payload(data, tensors: Sequence[TensorCoding], *, entry_points=None,
                   threads: int | None = None) -> DecodedPayload:
    """Decode the CABAC payload of one NDU holding ``tensors`` (in coding order).

    ``data`` must be exactly the CABAC bytes (the NDU payload after the header); a payload that is too
    short raises :class:`nnc.errors.TruncatedBitstreamError`, one that is inconsistent or has trailing
    bytes raises :class:`nnc.errors.BitstreamError`.

    Optional (extension): ``entry_points`` = per tensor the entry points signalled in the NDU header (or
    None). Tensors with two or more block rows are then decoded with their block rows in parallel on
    ``threads`` threads (default: all CPUs). Entry points that do not join up exactly with the payload are
    ignored (the tensor is decoded sequentially, which is what a sequential decoder would produce).
    """
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(data, dtype=np.uint8)
    table, tca, hist = _spec_table(tensors)
    outs = [np.empty(c.size, dtype=np.int32) for c in tensors]
    eps: list = [None] * len(tensors)
    if entry_points is not None:
        if len(entry_points) != len(tensors):
            raise ConfigError("entry_points needs one entry (list or None) per tensor")
        for i, e in enumerate(entry_points):
            if e:
                eps[i] = [(int(p.value), int(p.dq_state), int(p.bit_offset)) for p in e]
                if any(v < 0 or d < 0 or o < 0 for v, d, o in eps[i]):
                    raise BitstreamError(f"negative entry-point field for tensor {i}")
    if threads is None:
        threads = os.cpu_count() or 1
    st, ti, pos, msg, consumed, info = _core.decode(buf, table, tca, hist, outs, eps, int(max(1, threads)))
    if st != _OK:
        # The message names the tensor and element; location fields are left to the caller (which knows
        # where the payload sits in the bitstream), see BitstreamError.located().
        if st == _TRUNCATED:
            raise TruncatedBitstreamError(msg, code="PAYLOAD_TRUNCATED")
        if st == _BAD_CONFIG:
            raise ConfigError(msg)
        if st == _TRAILING:
            raise BitstreamError(msg, code="PAYLOAD_SIZE_MISMATCH")
        raise BitstreamError(msg, code="PAYLOAD_CORRUPT")
    levels = [o.reshape(tuple(int(d) for d in c.shape)) for o, c in zip(outs, tensors)]
    return DecodedPayload(
        levels=levels,
        qp_offsets=[int(t[0]) if t[1] else None for t in info],
        hdsp_flags=[bool(t[2]) for t in info],
        row_skip_flags=[bool(t[3]) for t in info],
        entry_points=[_entry_points(t[4]) for t in info],
        consumed=int(consumed),
        parallel=[bool(t[5]) for t in info],
    )


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
    if not 0 <= scan_order <= 4:
        raise ConfigError("scan_order must be in 0..4")
    step32 = float(np.float32(step))
    if step > 0 and step32 == 0.0:
        raise QuantizationOverflowError(f"step size {step!r} underflows float32")
    flat = np.ascontiguousarray(a).reshape(-1)
    q = np.empty(flat.size, dtype=np.int32)
    if flat.size == 0:
        return q.reshape(a.shape)
    st, pos, msg = _core.quantize(flat, q, h, w, step32, bool(dq), int(scan_order))
    if st == _OVERFLOW:
        raise QuantizationOverflowError(msg)
    if st == _BAD_INPUT:
        raise InputError(msg)
    if st != _OK:
        raise ConfigError(msg)
    return q.reshape(a.shape)
