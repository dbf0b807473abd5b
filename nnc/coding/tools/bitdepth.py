"""Integer-aligned bit-depth mode (spec §2.7): every tensor gets the qp whose step maps the 99.95th
percentile of |w| onto the largest level of a b-bit integer, and levels are clipped to that range.

Nothing is signalled; the result is an ordinary uniform (or DQ) stream. Non-weight tensors (rank <= 1) use at
least 8 bits, as NNCodec does.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["effective_bits", "intaligned_qp", "clip_levels", "level_range"]


def effective_bits(bits: int, is_weight: bool) -> int:
    """Bits used for a tensor: ``bits`` for weights (rank > 1) or when ``bits`` > 7, otherwise 8."""
    return bits if (bits > 7 or is_weight) else 8


def _unsigned(x: np.ndarray) -> bool:
    return not bool((x < 0).any())


def level_range(x: np.ndarray, bits: int) -> tuple[int, int]:
    """Levels allowed for ``x`` at ``bits``: unsigned if no value is negative, else two's complement."""
    if _unsigned(x):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def intaligned_qp(x: np.ndarray, bits: int, qp_density: int) -> int:
    """The qp NNCodec derives for ``x`` at ``bits`` (spec §2.7); 0 for an all-zero tensor."""
    a = np.abs(np.asarray(x, dtype=np.float64)).reshape(-1)
    if a.size == 0 or not a.any():
        return 0
    denom = (1 << bits) - 1 if _unsigned(np.asarray(x)) else (1 << (bits - 1)) - 1
    # numpy 1.x (the reference's) computes the percentile of a float32 array in float64
    step = float(np.percentile(a, 99.95)) / denom
    if step == 0:
        step = float(a.max()) / denom
    k = 1 << qp_density
    base = math.floor(math.log2(step)) * k
    qp = base + ((step * k) / 2.0 ** (base / k) - k)
    max_qp = 1 << (5 + qp_density)
    qp = min(max(qp, -max_qp), max_qp - 1)
    return int(np.round(qp))


def clip_levels(q: np.ndarray, x: np.ndarray, bits: int) -> np.ndarray:
    """Clip quantised levels ``q`` of ``x`` to the ``bits``-bit range (NNCodec clips DQ values q the same
    way, ignoring the DQ parity rule, spec §6 item 30)."""
    lo, hi = level_range(x, bits)
    return np.clip(q, lo, hi).astype(np.int32, copy=False)
