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

import json
import math
from typing import Mapping

import numpy as np

from ... import deepcabac
from ..._atomic import write_bytes_atomic
from ...errors import ConfigError
from ..quant import qp_for_step, quantize_tensor, reconstruct_uniform

__all__ = ["allocate_qps", "qp_for_rel_error", "rd_points", "measure_rd", "allocate_from_table", "sensitivities",
           "RateTable", "EdgeWarning", "payload_bits", "cached_table", "load_sensitivities", "save_sensitivities"]

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
    if table is None:   # measured once per model and coding settings, reused for the next budgets
        rt = cached_table(tensors, cfg)
        out.update(rt.allocate(cfg.target_bits_per_param))
        return out
    budget = cfg.target_bits_per_param * sum(int(np.asarray(a).size) for a in tensors.values())
    weights = {k: v for k, v in tensors.items() if np.asarray(v).ndim > 1}
    for name, a in tensors.items():
        if name not in weights:
            x = _coded(a)
            if x.any():
                budget -= _bits(x, cfg.qp_for(name, np.asarray(a).ndim), cfg)
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


# --------------------------------------------------------------------------------------------------
# public API: a rate table built once, reused across budgets, whose QP range adapts

class EdgeWarning(UserWarning):
    """A tensor's chosen qp sits at the edge of its rate table (and the table could not be extended)."""


def payload_bits(x: np.ndarray, qp: int | None, cfg) -> int:
    """CABAC payload bits of one tensor at ``qp`` with ``cfg``'s coding settings (integer tensors: lossless,
    ``qp`` ignored). The public form of the accounting the allocation uses."""
    a = np.asarray(x)
    if a.dtype.kind in "iub":
        q = np.ascontiguousarray(a, dtype=np.int32).reshape(a.shape or (1,))
        coding = deepcabac.TensorCoding(shape=tuple(q.shape), profile=cfg.profile,
                                        unary_length=cfg.unary_length_minus1 + 1, qp_bits=None, dq=False)
        payload, _ = deepcabac.encode_payload([(q, coding, 0, deepcabac.EncodeOptions(
            param_opt=cfg.param_opt, row_skipping=cfg.row_skipping and cfg.profile == 1))])
        return 8 * len(payload)
    xc = _coded(a)
    return _bits(xc, cfg.qp_for("", a.ndim) if qp is None else qp, cfg) if xc.any() else 0


class RateTable:
    """Per weight tensor (qps, bits, squared error) measured once; :meth:`allocate` answers any budget from it.

    >>> table = RateTable.measure(tensors, EncoderConfig(), weights=sens)   # the expensive step, once
    >>> qps = table.allocate(bits_per_param=4.0)                            # milliseconds per budget
    >>> cfg = EncoderConfig(qp_per_tensor=qps)                              # then encode as usual

    The qp range of each tensor adapts: when an allocation picks a tensor's finest or coarsest measured qp and
    the qp range allows more, the table is extended there (``extend_step`` qps at a time, up to
    ``max_extensions`` times per call) and the allocation repeated; a tensor still at an edge afterwards raises
    an :class:`EdgeWarning` and is listed in :attr:`last_edges`.

    Budgets count every float tensor's payload: the non-weight tensors (rank <= 1) keep ``cfg.qp_for`` and their
    measured bits are subtracted (:attr:`fixed_bits`). Integer tensors are not counted.
    """

    def __init__(self, table: dict, cfg, fixed_bits: int, n_params: int, weights: Mapping[str, float] | None,
                 sizes: Mapping[str, int], tensors: Mapping[str, np.ndarray] | None = None):
        self.table = table
        self.cfg = cfg
        self.fixed_bits = int(fixed_bits)
        self.n_params = int(n_params)
        self.weights = dict(weights or {})
        self.sizes = dict(sizes)
        self._tensors = tensors
        self.last_edges: list[str] = []
        self.measure_calls = 0

    @classmethod
    def measure(cls, tensors: Mapping[str, np.ndarray], cfg, *, weights: Mapping[str, float] | None = None,
                center_bits: float = 4.5, points: int = 25) -> "RateTable":
        """Measure the table for the float tensors of ``tensors`` (rank > 1 allocated, the rest fixed)."""
        floats = {k: v for k, v in tensors.items() if np.asarray(v).dtype.kind == "f"}
        alloc = {k: v for k, v in floats.items() if np.asarray(v).ndim > 1}
        fixed = 0
        for k, v in floats.items():
            if k not in alloc:
                x = _coded(v)
                if x.any():
                    fixed += _bits(x, cfg.qp_for(k, np.asarray(v).ndim), cfg)
        table = measure_rd(alloc, cfg, center_bits=center_bits, points=points)
        n = sum(int(np.asarray(v).size) for v in floats.values())
        w = dict(weights if weights is not None else cfg.tensor_weights)
        out = cls(table, cfg, fixed, n, w, {k: int(np.asarray(v).size) for k, v in alloc.items()}, alloc)
        out.measure_calls = 1
        return out

    def budget_bits(self, bits_per_param: float) -> float:
        """The payload budget in bits for ``bits_per_param`` over all float parameters."""
        return float(bits_per_param) * self.n_params

    def allocate(self, bits_per_param: float | None = None, *, budget_bits: float | None = None,
                 extend: bool = True, max_extensions: int = 4, extend_step: int | None = None) -> dict[str, int]:
        """qp per weight tensor for the budget (give ``bits_per_param`` or ``budget_bits``)."""
        import warnings
        if (bits_per_param is None) == (budget_bits is None):
            raise ValueError("give either bits_per_param or budget_bits")
        total = self.budget_bits(bits_per_param) if budget_bits is None else float(budget_bits)
        k = 1 << self.cfg.qp_density
        step = extend_step or k
        lo_lim, hi_lim = _qp_limits(self.cfg.qp_density)
        for _ in range(max_extensions + 1):
            qps = allocate_from_table(self.table, total - self.fixed_bits, self.weights)
            edges = []
            for n, q in qps.items():
                grid = self.table[n][0]
                if q == grid[0] and grid[0] > lo_lim:
                    edges.append((n, -1))
                elif q == grid[-1] and grid[-1] < hi_lim:
                    edges.append((n, +1))
            self.last_edges = [n for n, _ in edges]
            if not edges or not extend or self._tensors is None:
                break
            for n, side in edges:
                self._extend(n, side, step)
        if self.last_edges:
            warnings.warn(f"{len(self.last_edges)} tensor(s) sit at the edge of their rate table ("
                          f"{', '.join(self.last_edges[:4])}{'...' if len(self.last_edges) > 4 else ''}); the "
                          "allocation may be off for them", EdgeWarning, stacklevel=2)
        return qps

    def _extend(self, name: str, side: int, step: int) -> None:
        qps, bits, err = self.table[name]
        lo_lim, hi_lim = _qp_limits(self.cfg.qp_density)
        spacing = max(int(qps[1] - qps[0]) if len(qps) > 1 else 1, 1)
        if side < 0:
            new = [q for q in range(int(qps[0]) - step * spacing, int(qps[0]), spacing) if q >= lo_lim]
        else:
            new = [q for q in range(int(qps[-1]) + spacing, int(qps[-1]) + step * spacing + 1, spacing) if q <= hi_lim]
        if not new:
            return
        nb, ne = rd_points(self._tensors[name], new, self.cfg)
        order = np.argsort(np.concatenate([qps, new]))
        self.table[name] = (np.concatenate([qps, new])[order], np.concatenate([bits, nb])[order],
                            np.concatenate([err, ne])[order])
        self.measure_calls += 1

    def bits(self, qps: Mapping[str, int]) -> float:
        """Estimated payload bits of all float tensors when the weight tensors use ``qps`` (from the table; the
        nearest measured qp for a qp outside it)."""
        total = float(self.fixed_bits)
        for n, (grid, bits, _) in self.table.items():
            q = qps.get(n, self.cfg.qp)
            total += float(bits[int(np.argmin(np.abs(grid - q)))])
        return total

    def distortion(self, qps: Mapping[str, int], weighted: bool = True) -> float:
        """Estimated (task-weighted) squared error of the weight tensors at ``qps``."""
        total = 0.0
        for n, (grid, _, err) in self.table.items():
            q = qps.get(n, self.cfg.qp)
            w = float(self.weights.get(n, 1.0)) if weighted else 1.0
            total += w * float(err[int(np.argmin(np.abs(grid - q)))])
        return total


_TABLE_CACHE: "dict[tuple, RateTable]" = {}
_TABLE_CACHE_SIZE = 2


def _fingerprint(tensors: Mapping[str, np.ndarray], cfg) -> tuple:
    import zlib
    parts = []
    for k, v in tensors.items():
        a = np.ascontiguousarray(v)
        parts.append((k, a.shape, a.dtype.str, zlib.crc32(memoryview(a).cast("B"))))
    coding = (cfg.qp_density, cfg.dq, cfg.row_skipping, cfg.param_opt, cfg.profile, cfg.unary_length_minus1,
              cfg.nonweight_qp, tuple(sorted(cfg.qp_per_tensor.items())))
    return tuple(parts), coding


def cached_table(tensors: Mapping[str, np.ndarray], cfg) -> RateTable:
    """The rate table for ``tensors`` and ``cfg``'s coding settings, measured on first use and kept for the
    next budgets (the last two models). ``EncoderConfig.for_size`` uses it, so a second budget for the same
    model costs only the allocation."""
    key = _fingerprint(tensors, cfg)
    t = _TABLE_CACHE.get(key)
    if t is None:
        t = RateTable.measure(tensors, cfg, center_bits=4.5)
        while len(_TABLE_CACHE) >= _TABLE_CACHE_SIZE:
            _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
        _TABLE_CACHE[key] = t
    t.weights = dict(cfg.tensor_weights)
    return t


def load_sensitivities(path) -> dict[str, float]:
    """Read a sensitivity file (JSON object name -> weight >= 0, as written by :func:`save_sensitivities`)."""
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read(64 << 20).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"cannot read sensitivity file {str(path)!r}: {e}") from None
    if isinstance(obj, dict) and "sensitivities" in obj:
        obj = obj["sensitivities"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                           and not isinstance(v, bool) and v >= 0 for k, v in obj.items()):
        raise ConfigError(f"sensitivity file {str(path)!r} must hold a JSON object mapping tensor names to "
                          "numbers >= 0")
    return {k: float(v) for k, v in obj.items()}


def save_sensitivities(path, sens: Mapping[str, float]) -> None:
    write_bytes_atomic(path, json.dumps({"sensitivities": dict(sens)}, indent=0).encode("utf-8"))
