"""Rate control: targets instead of raw QPs.

* ``max_rel_error``: per float tensor, the coarsest qp (bisection over integer qps) whose relative RMS error
  ``||w - w_hat|| / ||w||`` is at most the target.
* ``target_bits_per_param``: equal-slope allocation. Each tensor's rate R_i(qp) (actual CABAC bits, measured
  on a row sample for large tensors) and distortion D_i(qp) are measured on a grid of qps; the distortion is
  the squared error, optionally weighted per tensor by ``EncoderConfig.tensor_weights`` (task sensitivities
  measured on calibration data with :func:`sensitivities`). A Lagrange multiplier is bisected so that the
  tensors' choices ``argmin w_i D_i + lambda R_i`` add up to the bit budget. Rate tables can be measured once
  (:func:`measure_rd`) and reused for many budgets (:func:`allocate_from_table`).

Only qps are chosen; everything else (DQ, row skipping, codebook...) follows the config, and the stream is a
standard one that any NNC decoder reads.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ... import deepcabac
from ..quant import qp_for_step, quantize_tensor, reconstruct_uniform

__all__ = ["allocate_qps", "qp_for_rel_error", "rd_points", "measure_rd", "allocate_from_table", "sensitivities"]

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


def measure_rd(tensors: Mapping[str, np.ndarray], cfg, *, center_bits: float = 5.0, points: int = 25
               ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per float tensor (not all zero): (qps, bits, squared error) on a grid of ``points`` qps (half-octave
    spacing is too coarse: consecutive qps 2 apart) centred where a uniform quantiser spends about
    ``center_bits`` bits per parameter."""
    k = 1 << cfg.qp_density
    lo_lim, hi_lim = _qp_limits(cfg.qp_density)
    rel0 = 2.0 ** (-center_bits)
    table = {}
    for name, a in tensors.items():
        x = _coded(a)
        if not x.any():
            continue
        q0 = _start_qp(x, rel0, cfg.qp_density)
        step = max(k // 2, 1)
        half = (points // 2) * step
        qps = sorted({min(max(q0 + d, lo_lim), hi_lim) for d in range(-half, half + 1, step)})
        bits, err = rd_points(x, qps, cfg)
        table[name] = (np.array(qps), bits, err)
    return table


def allocate_from_table(table, budget_bits: float, weights: Mapping[str, float] | None = None
                        ) -> dict[str, int]:
    """Equal-slope choice: per tensor ``argmin w_i * D_i(qp) + lambda * R_i(qp)`` with lambda bisected so that
    the total rate fits ``budget_bits`` (the cheapest choices if even the coarsest grid point does not)."""
    weights = weights or {}

    def choose(lam):
        pick, total = {}, 0.0
        for name, (qps, bits, dist) in table.items():
            i = int(np.argmin(float(weights.get(name, 1.0)) * dist + lam * bits))
            pick[name] = int(qps[i])
            total += bits[i]
        return pick, total

    lo, hi = 1e-30, 1e30
    for _ in range(300):
        mid = math.sqrt(lo * hi)
        _, total = choose(mid)
        if total > budget_bits:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.00001:
            break
    pick, total = choose(hi)
    # spend what the discrete hull left of the budget: finer steps with the best distortion drop per bit
    idx = {n: int(np.flatnonzero(table[n][0] == q)[0]) for n, q in pick.items()}
    while True:
        best = None
        for n, i in idx.items():
            qps, bits, dist = table[n]
            if i == 0:
                continue
            d_bits = bits[i - 1] - bits[i]
            gain = float(weights.get(n, 1.0)) * (dist[i] - dist[i - 1])
            if d_bits > 0 and total + d_bits <= budget_bits and gain > 0:
                if best is None or gain / d_bits > best[0]:
                    best = (gain / d_bits, n, d_bits)
        if best is None:
            break
        idx[best[1]] -= 1
        total += best[2]
    return {n: int(table[n][0][i]) for n, i in idx.items()}


def allocate_qps(tensors: Mapping[str, np.ndarray], cfg, *, table=None) -> dict[str, int]:
    """qp per float tensor for ``cfg.max_rel_error`` or ``cfg.target_bits_per_param`` (see module doc).

    For a bit target only weight tensors (rank > 1) are allocated; the others keep ``cfg.qp_for`` (their
    measured rate is subtracted from the budget). ``cfg.tensor_weights`` scales each tensor's distortion
    (e.g. from :func:`sensitivities`)."""
    out: dict[str, int] = {}
    if cfg.max_rel_error is not None:
        for name, a in tensors.items():
            q = qp_for_rel_error(a, cfg.max_rel_error, cfg)
            if q is not None:
                out[name] = q
        return out
    budget = cfg.target_bits_per_param * sum(int(np.asarray(a).size) for a in tensors.values())
    weights = {k: v for k, v in tensors.items() if np.asarray(v).ndim > 1}
    for name, a in tensors.items():
        if name not in weights:
            x = _coded(a)
            if x.any():
                budget -= _bits(x, cfg.qp_for(name, np.asarray(a).ndim), cfg)
    if table is None:
        table = measure_rd(weights, cfg, center_bits=cfg.target_bits_per_param)
    out.update(allocate_from_table(table, budget, dict(cfg.tensor_weights)))
    return out


def sensitivities(tensors: Mapping[str, np.ndarray], distortion, *, names=None, rel_noise: float = 0.01,
                  seed: int = 0) -> dict[str, float]:
    """Distortion weights for :attr:`EncoderConfig.tensor_weights`: for each tensor, the task distortion
    ``distortion(perturbed_tensors)`` caused by Gaussian noise of ``rel_noise`` times the tensor's RMS, divided
    by the squared error of that noise. ``distortion`` is the caller's task measure (lower is better, 0 for
    the original), evaluated on calibration data."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in (names if names is not None else [k for k, v in tensors.items() if np.asarray(v).ndim > 1]):
        x = np.asarray(tensors[name], dtype=np.float32)
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        if rms == 0:
            continue
        noise = (rng.standard_normal(x.shape) * rel_noise * rms).astype(np.float32)
        t = dict(tensors)
        t[name] = x + noise
        sse = float(np.sum(np.square(noise, dtype=np.float64)))
        out[name] = max(float(distortion(t)), 0.0) / sse
    return out
