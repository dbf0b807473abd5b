"""Sparsification front ends for FL updates (the sparse-binary / sparse-ternary family, SBC and STC).

All functions take and return ``{name: float32 array}`` and never modify their input. Quantisation and
entropy coding happen afterwards in the NNC encoder; these functions only decide which values survive and,
for the ternary variant, replace the survivors by ``±mean|survivors|``.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

__all__ = ["top_k", "global_threshold", "threshold", "ternarize", "density"]


def _kept_count(n: int, fraction: float) -> int:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, min(n, math.ceil(fraction * n)))


def top_k(x: Mapping[str, np.ndarray], fraction: float, *, scope: str = "tensor") -> dict[str, np.ndarray]:
    """Keep the ``fraction`` largest-magnitude values and zero the rest.

    ``scope="tensor"`` keeps ``ceil(fraction * size)`` values (at least one) in every tensor;
    ``scope="global"`` ranks all values of all tensors together. Ties at the threshold keep all tied values
    only in the global scope; per tensor exactly ``k`` values are kept.
    """
    if scope == "tensor":
        out = {}
        for k, v in x.items():
            v = np.asarray(v, dtype=np.float32)
            flat = v.reshape(-1)
            keep = _kept_count(flat.size, fraction)
            res = np.zeros_like(flat)
            if keep >= flat.size:
                res[:] = flat
            else:
                idx = np.argpartition(np.abs(flat), flat.size - keep)[flat.size - keep:]
                res[idx] = flat[idx]
            out[k] = res.reshape(v.shape)
        return out
    if scope == "global":
        return threshold(x, global_threshold(x, fraction), inclusive=True)
    raise ValueError(f"scope must be 'tensor' or 'global', got {scope!r}")


def global_threshold(x: Mapping[str, np.ndarray], fraction: float) -> float:
    """The magnitude of the ``k``-th largest value over all tensors (``k = ceil(fraction * total)``): global top-k
    keeps ``|v| >= tau``. Works tensor by tensor: the k-th largest of all is among the union of every tensor's k
    largest, so only that union (at most ``k`` values per tensor) is ever held, not a copy of the model."""
    total = sum(int(np.size(v)) for v in x.values())
    keep = _kept_count(total, fraction)
    cand = []
    for v in x.values():
        mags = np.abs(np.asarray(v, dtype=np.float32)).reshape(-1)
        if mags.size > keep:
            mags.partition(mags.size - keep)
            mags = mags[mags.size - keep:].copy()
        cand.append(mags)
    cand = np.concatenate(cand)
    return float(np.partition(cand, cand.size - keep)[cand.size - keep])


def threshold(x: Mapping[str, np.ndarray], tau: float, *, inclusive: bool = False) -> dict[str, np.ndarray]:
    """Zero every value with ``|v| < tau`` (``inclusive``: keep ``|v| == tau`` too; else ``|v| <= tau`` goes)."""
    out = {}
    for k, v in x.items():
        v = np.asarray(v, dtype=np.float32)
        keep = np.abs(v) >= tau if inclusive else np.abs(v) > tau
        out[k] = np.where(keep, v, np.float32(0)).astype(np.float32)
    return out


def ternarize(x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """STC: replace the non-zero values of each tensor by ``sign(v) * mean(|non-zeros|)``."""
    out = {}
    for k, v in x.items():
        v = np.asarray(v, dtype=np.float32)
        nz = v != 0
        if not nz.any():
            out[k] = np.zeros_like(v)
            continue
        mu = np.float32(np.abs(v[nz]).mean())
        out[k] = np.where(nz, np.sign(v) * mu, np.float32(0)).astype(np.float32)
    return out


def density(x: Mapping[str, np.ndarray]) -> float:
    """Fraction of non-zero values over all tensors."""
    n = sum(np.asarray(v).size for v in x.values())
    nz = sum(int(np.count_nonzero(v)) for v in x.values())
    return nz / n if n else 0.0
