"""Sparsification before quantisation (NNC has no sparsity syntax beyond row skipping, spec §2.9).

Semantics follow NNCodec's ``apply_unstruct_spars_v2`` / ``apply_struct_spars_v2`` utilities:

* unstructured: in every weight tensor (rank > 1, not all zero) values with |w| below half the quantisation
  step of ``qp`` are zeroed (they would quantise to 0 anyway); if the overall sparsity is still below the
  target, the threshold becomes ``max(|mu - d*sigma|, |mu + d*sigma|)`` per tensor with ``d`` growing from
  0.25 (steps 0.2 / 0.1 / 0.05 / 0.01 as the target gets close) until the target is met.
* structured: in every weight tensor, the output channels (rows along d0) whose mean |w| is below
  ``gain`` times the mean over channels are zeroed — row skipping then costs one flag per such row.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..dtypes import is_float
from ..quant import step_size

__all__ = ["sparsity", "sparsify_unstructured", "sparsify_structured"]


def _eligible(name: str, a: np.ndarray) -> bool:
    return a.ndim >= 2 and is_float(a.dtype) and bool(a.any()) and ".weight_scaling" not in name


def sparsity(tensors: Mapping[str, np.ndarray]) -> float:
    """Fraction of zero elements over all tensors."""
    n = sum(int(np.asarray(a).size) for a in tensors.values())
    z = sum(int(np.count_nonzero(np.asarray(a) == 0)) for a in tensors.values())
    return z / n if n else 0.0


def _threshold(tensors, step: float, delta: float | None) -> dict[str, np.ndarray]:
    out = {}
    for name, a in tensors.items():
        a = np.asarray(a)
        if not _eligible(name, a):
            out[name] = a
            continue
        if delta is None:
            thr = step / 2
        else:
            mu, sd = np.mean(a), np.std(a)
            thr = max(abs(mu - delta * sd), abs(mu + delta * sd))
            if thr < step / 2:
                thr = step / 2
        out[name] = (a * (a >= thr)) + (a * (a <= -thr))
    return out


def sparsify_unstructured(tensors: Mapping[str, np.ndarray], *, qp: int, qp_density: int = 2,
                          target: float = 0.0) -> dict[str, np.ndarray]:
    """Zero small weights (see module doc). ``target`` is the overall fraction of zeros wanted (0..1)."""
    step = float(step_size(qp, qp_density))
    base = _threshold(tensors, step, None)
    if target <= 0.0 or sparsity(base) >= target:
        return base
    out, d, inc = base, 0.25, 0.2
    for _ in range(501):
        s = sparsity(out)
        if s >= target:
            break
        gap = target - s
        inc = 0.01 if gap < 0.05 else 0.05 if gap < 0.10 else 0.10 if gap < 0.30 else inc
        d += inc
        out = _threshold(base, step, d)
    return out


def sparsify_structured(tensors: Mapping[str, np.ndarray], *, gain: float = 0.9) -> dict[str, np.ndarray]:
    """Zero weak output channels of weight tensors (see module doc)."""
    out = {}
    for name, a in tensors.items():
        a = np.asarray(a)
        if not _eligible(name, a):
            out[name] = a
            continue
        means = np.array([np.mean(np.abs(a[i])) for i in range(len(a))])
        rel = means / np.abs(means).max()
        frac = len(means[means < np.mean(means) * gain]) / len(a)
        kill = np.sort(np.argsort(rel)[:int(frac * len(a))])
        b = a.copy()
        b[kill] = 0
        out[name] = b
    return out
