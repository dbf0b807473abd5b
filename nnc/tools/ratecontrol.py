"""Rate control: targets instead of raw QPs.

* ``max_rel_error``: per float tensor, the coarsest qp (bisection over integer qps) whose relative RMS error
  ``||w - w_hat|| / ||w||`` is at most the target.
* ``target_bits_per_param``: equal-slope allocation. Each tensor's rate R_i(qp) (actual CABAC bits, measured
  on a row sample for large tensors) and distortion D_i(qp) are measured on a grid of qps; the distortion is
  the squared error relative to the tensor's mean square (so every tensor's relative error counts, which is
  what layer-normalised networks are sensitive to; ``weighting="mse"`` uses the plain squared error). A
  Lagrange multiplier is bisected so that the tensors' choices ``argmin D_i + lambda R_i`` add up to the
  bit budget.

Only qps are chosen; everything else (DQ, row skipping, codebook...) follows the config, and the stream is a
standard one that any NNC decoder reads.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .. import deepcabac
from ..quant import qp_for_step, quantize_tensor, reconstruct_uniform

__all__ = ["allocate_qps", "qp_for_rel_error", "rd_points"]

_SAMPLE = 1 << 17   # elements measured per tensor when estimating rates/errors of large tensors


def _coded(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x.reshape(1) if x.ndim == 0 else x


def _sample_rows(x: np.ndarray, limit: int = _SAMPLE, seed: int = 0) -> np.ndarray:
    """A subset of rows (d0) with about ``limit`` elements, keeping the row structure (row skipping)."""
    if x.size <= limit or x.ndim < 2 or x.shape[0] < 2:
        return x
    per_row = x.size // x.shape[0]
    n = max(1, min(x.shape[0], limit // max(per_row, 1)))
    idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], n, replace=False))
    return np.ascontiguousarray(x[idx])


def _qp_limits(qp_density: int) -> tuple[int, int]:
    half = 1 << (5 + qp_density)
    return -half, half - 1


def _error(x: np.ndarray, qp: int, cfg) -> float:
    q, qp_used = quantize_tensor(x, qp, cfg.qp_density, dq=cfg.dq, scan_order=0)
    d = reconstruct_uniform(q, qp_used, cfg.qp_density).astype(np.float64) - x
    return float(np.dot(d.reshape(-1), d.reshape(-1)))


def _bits(x: np.ndarray, qp: int, cfg) -> int:
    q, qp_used = quantize_tensor(x, qp, cfg.qp_density, dq=cfg.dq, scan_order=0)
    coding = deepcabac.TensorCoding(shape=tuple(x.shape), profile=cfg.profile,
                                    unary_length=cfg.unary_length_minus1 + 1, qp_bits=6 + cfg.qp_density,
                                    dq=cfg.dq)
    payload, _ = deepcabac.encode_payload([(q, coding, qp_used, deepcabac.EncodeOptions(
        param_opt=cfg.param_opt, row_skipping=cfg.row_skipping and cfg.profile == 1))])
    return 8 * len(payload)


def _start_qp(x: np.ndarray, rel: float, qp_density: int) -> int:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    step = max(rel * math.sqrt(12.0) * rms, 1e-30)
    lo, hi = _qp_limits(qp_density)
    return int(min(max(round(qp_for_step(step, qp_density)), lo), hi))


def qp_for_rel_error(x: np.ndarray, max_rel_error: float, cfg) -> int | None:
    """Coarsest qp with relative RMS error <= ``max_rel_error`` (None for an all-zero tensor)."""
    x = _sample_rows(_coded(x))
    energy = float(np.dot(x.reshape(-1).astype(np.float64), x.reshape(-1).astype(np.float64)))
    if energy == 0.0:
        return None
    target = max_rel_error ** 2 * energy
    lo_lim, hi_lim = _qp_limits(cfg.qp_density)
    q0 = _start_qp(x, max_rel_error, cfg.qp_density)
    k = 1 << cfg.qp_density
    good, bad = q0 - 2 * k, q0 + 2 * k          # widen until good satisfies and bad does not
    while good > lo_lim and _error(x, good, cfg) > target:
        good = max(lo_lim, good - 4 * k)
    while bad < hi_lim and _error(x, bad, cfg) <= target:
        bad = min(hi_lim, bad + 4 * k)
    if _error(x, bad, cfg) <= target:
        return bad
    while bad - good > 1:
        mid = (good + bad) // 2
        if _error(x, mid, cfg) <= target:
            good = mid
        else:
            bad = mid
    return good


def rd_points(x: np.ndarray, qps, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(bits, squared error) of the whole tensor at each qp, estimated from a row sample."""
    x = _coded(x)
    s = _sample_rows(x)
    scale = x.size / s.size
    bits = np.array([_bits(s, q, cfg) * scale for q in qps])
    err = np.array([_error(s, q, cfg) * scale for q in qps])
    return bits, err


def allocate_qps(tensors: Mapping[str, np.ndarray], cfg, *, weighting: str = "relative",
                 grid: int = 13) -> dict[str, int]:
    """qp per float tensor for ``cfg.max_rel_error`` or ``cfg.target_bits_per_param`` (see module doc)."""
    out: dict[str, int] = {}
    if cfg.max_rel_error is not None:
        for name, a in tensors.items():
            q = qp_for_rel_error(a, cfg.max_rel_error, cfg)
            if q is not None:
                out[name] = q
        return out
    budget = cfg.target_bits_per_param * sum(int(np.asarray(a).size) for a in tensors.values())
    k = 1 << cfg.qp_density
    lo_lim, hi_lim = _qp_limits(cfg.qp_density)
    table = {}
    fixed_bits = 0.0
    rel0 = 2.0 ** (-cfg.target_bits_per_param)     # a relative error in the right region for the start qp
    for name, a in tensors.items():
        x = _coded(a)
        energy = float(np.dot(x.reshape(-1).astype(np.float64), x.reshape(-1).astype(np.float64)))
        if energy == 0.0:
            fixed_bits += 8.0 * x.shape[0] / 8 + 64
            continue
        q0 = _start_qp(x, rel0, cfg.qp_density)
        span = (grid // 2) * k // 2
        qps = sorted({min(max(q0 + d, lo_lim), hi_lim) for d in range(-2 * span, 2 * span + 1, k // 2 or 1)})
        bits, err = rd_points(x, qps, cfg)
        w = (x.size / energy) if weighting == "relative" else 1.0
        table[name] = (np.array(qps), bits, err * w)
    budget -= fixed_bits

    def choose(lam):
        pick, total = {}, 0.0
        for name, (qps, bits, dist) in table.items():
            i = int(np.argmin(dist + lam * bits))
            pick[name] = int(qps[i])
            total += bits[i]
        return pick, total

    lo, hi = 1e-30, 1e30
    pick, total = choose(math.sqrt(lo * hi))
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        pick, total = choose(mid)
        if total > budget:
            lo = mid          # too many bits: weigh rate more
        else:
            hi = mid
        if hi / lo < 1.0001:
            break
    pick, _ = choose(hi)      # the cheapest choice that fits the budget
    out.update(pick)
    return out
