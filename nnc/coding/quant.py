"""Step sizes, the encoder's quantiser front end and the decoder's reconstruction rules (spec §2)."""
from __future__ import annotations

import math

import numpy as np

from .. import deepcabac
from ..errors import InputError

__all__ = ["step_size", "qp_for_step", "quantize_tensor", "reconstruct_uniform", "reconstruct_codebook"]

# Largest |q| the URQ and DQ quantisers accept before the QP is raised (spec §2.8, "overflow guard").
_URQ_LIMITS = (-(1 << 31), (1 << 31) - 1)
_DQ_LIMITS = (-((1 << 31) - 2), (1 << 31) - 3)


def step_size(qp: int, qp_density: int) -> np.float32:
    """Quantisation step for ``qp`` (spec §2.1), as the float32 both codecs use."""
    k = 1 << qp_density
    mul = k + (qp & (k - 1))
    shift = qp >> qp_density
    return np.float32(mul * 2.0 ** (shift - qp_density))


def qp_for_step(step: float, qp_density: int) -> float:
    """Inverse of :func:`step_size` on its piecewise-linear segments (a real number; round as needed)."""
    k = 1 << qp_density
    base = math.floor(math.log2(step)) * k
    return base + (step * k / 2.0 ** (base / k) - k)


def _overflows(x: np.ndarray, step: np.float32, dq: bool) -> bool:
    if x.size == 0:
        return False
    scale = np.float32(1.0) / step
    # the products are computed in float32 like the reference; beyond 2**24 every float32 is an integer,
    # so rounding cannot move a value across the limits checked here
    hi = float(np.max(x)) * float(scale)
    lo = float(np.min(x)) * float(scale)
    with np.errstate(over="ignore"):
        hi, lo = float(np.float32(hi)), float(np.float32(lo))
    if not (math.isfinite(hi) and math.isfinite(lo)):
        return True
    lim_lo, lim_hi = _DQ_LIMITS if dq else _URQ_LIMITS
    return round(hi) > lim_hi or round(lo) < lim_lo or round(lo) > lim_hi or round(hi) < lim_lo


def _guard_qp(x: np.ndarray, qp_density: int) -> int:
    """The QP the reference switches to when quantising at the requested QP would overflow int32."""
    k = 1 << qp_density
    max_abs = float(np.max(np.abs(x)))
    min_step = max_abs / float((1 << 31) - 3)
    base = np.float32(math.floor(math.log2(min_step)) * k)
    new_qp = np.float32(float(base) + ((min_step * k) / 2.0 ** (float(base) / k) - k))
    return int(math.ceil(float(new_qp)))


def quantize_tensor(x: np.ndarray, qp: int, qp_density: int, *, dq: bool, scan_order: int = 0, name: str | None = None
                    ) -> tuple[np.ndarray, int]:
    """Quantise float32 ``x`` at ``qp`` and return ``(q, qp_used)``.

    ``q`` are the stored integers (for DQ the reconstruction indices). ``qp_used`` differs from ``qp`` only
    when the levels would not fit int32; then, like the reference, the smallest QP that fits is used.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    step = step_size(qp, qp_density)
    if _overflows(x, step, dq):
        qp = _guard_qp(x, qp_density)
        step = step_size(qp, qp_density)
        # the guard's float32 formula can land one qp short of what fits (e.g. max|w| = 2 at qp -128 gives qp
        # -120, whose levels reach 2**31): the reference stops there; nnc takes the next qp that fits
        while _overflows(x, step, dq):
            qp += 1
            step = step_size(qp, qp_density)
        top = (1 << (5 + qp_density)) - 1
        if qp > top:
            raise InputError(("" if name is None else f"tensor {name!r}: ") + f"values up to "
                             f"{float(np.max(np.abs(x))):.4g} need qp {qp} to fit int32 levels, above {top}, the "
                             f"largest qp that qp_density {qp_density} can signal; scale the tensor or use a lower "
                             "qp_density")
    q = deepcabac.quantize(x, float(step), dq=dq, scan_order=scan_order)
    return q, qp


def reconstruct_uniform(q: np.ndarray, qp: int, qp_density: int) -> np.ndarray:
    """``float32(step) * float32(q)`` evaluated in float32 (spec §2.3; also DQ, §2.4)."""
    return q.astype(np.float32) * step_size(qp, qp_density)


def reconstruct_codebook(c: np.ndarray, codebook: np.ndarray, zero_offset: int, qp: int, qp_density: int
                         ) -> np.ndarray:
    """``codebook[c + Z] * step`` (spec §2.5), computed in float64 like the reference."""
    idx = c.astype(np.int64) + zero_offset
    table = np.asarray(codebook, dtype=np.float64) * float(step_size(qp, qp_density))
    return table[idx]
