"""What a server admits into a round: the per-client norm bound and the aggregation rule (engine-agnostic).

A round is a transaction (see :meth:`nnc.fl.ServerCodec.aggregate`): every update is validated in the dtype
the server aggregates in (float32), each client's contribution is bounded (:func:`bound_updates`), the
aggregate is checked to be finite and codable before anything is committed, and a client whose update makes
the broadcast fail is dropped while the round completes with the others.

Aggregation rules: ``"mean"`` (weighted by ``num_examples``, FedAvg) and, for in-process servers without an
FL engine, the coordinate-wise ``"median"`` and ``"trimmed_mean"`` (Yin et al. 2018). On Flower use the
engine's own robust strategies instead (``NNCFedAvg(..., aggregator=FedMedian())``, ``FedTrimmedAvg``,
``Krum``, ``MultiKrum``, ``Bulyan``); these two are here only because the in-process loop has no engine.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

__all__ = ["RoundPolicy", "update_norm", "bound_updates", "combine_updates", "DEFAULT_MEDIAN_FACTOR",
           "DEFAULT_MODEL_FACTOR"]

Tensors = Mapping[str, np.ndarray]

#: default bound: no client's update may exceed 5x the median update norm of the round ...
DEFAULT_MEDIAN_FACTOR = 5.0
#: ... nor 10x the norm of the global model (at least 10): a diverging client cannot exceed either.
DEFAULT_MODEL_FACTOR = 10.0


@dataclass(frozen=True)
class RoundPolicy:
    """How the server admits client updates into a round.

    Attributes:
        max_norm: absolute bound on the L2 norm of one client's update (``None``: none).
        median_factor: bound each update to ``median_factor`` x the median L2 norm of the round's valid
            updates (``None``: off). Default 5: honest clients of one federation rarely differ by more, so it
            practically never touches them, while one client cannot outweigh the others by more than 5x.
        model_factor: bound each update to ``model_factor`` x ``max(1, ||global model||)`` (``None``: off).
            Default 10. It holds when the median cannot (one or two clients in a round).
        aggregation: ``"mean"`` (weighted by ``num_examples``), ``"median"`` or ``"trimmed_mean"``
            (coordinate-wise, unweighted; for in-process servers, see the module docstring).
        trim: fraction of the values cut at each end by ``"trimmed_mean"``.
        over_bound: what happens to an update over the bound: ``"drop"`` (default: it is left out of the
            round and counted, ``rejected[c] == "norm-bound"``; an update several times larger than the
            round's median is a divergence or an attack, and leaving it out keeps the others' weights as if
            it had not been sent) or ``"clip"`` (scaled down to the bound: direction kept, weight bounded).
        require_binding: refuse uploads that do not carry the client identity and the round (older
            clients); uploads that carry them are always checked.

    The bound in effect is the smallest of the enabled ones.
    """

    max_norm: float | None = None
    median_factor: float | None = DEFAULT_MEDIAN_FACTOR
    model_factor: float | None = DEFAULT_MODEL_FACTOR
    aggregation: str = "mean"
    trim: float = 0.2
    over_bound: str = "drop"
    require_binding: bool = False

    def __post_init__(self):
        if self.aggregation not in ("mean", "median", "trimmed_mean"):
            raise ValueError(f"aggregation must be 'mean', 'median' or 'trimmed_mean', got {self.aggregation!r}")
        if self.over_bound not in ("drop", "clip"):
            raise ValueError(f"over_bound must be 'drop' or 'clip', got {self.over_bound!r}")
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")
        for name in ("max_norm", "median_factor", "model_factor"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and np.isfinite(v)):
                raise ValueError(f"{name} must be a positive finite number or None, got {v!r}")

    def replace(self, **kw) -> "RoundPolicy":
        return replace(self, **kw)


def update_norm(delta: Tensors) -> float:
    """L2 norm over all tensors, in float64 (the largest float32 values do not overflow it)."""
    s = 0.0
    for v in delta.values():
        a = np.asarray(v, np.float64)
        s += float(np.dot(a.ravel(), a.ravel()))
    return float(np.sqrt(s))


def bound_updates(items: Mapping, model: Tensors, policy: RoundPolicy) -> tuple[dict, dict]:
    """Apply the policy's norm bound to ``{client: (delta, n)}``: updates over it are left out
    (``over_bound="drop"``) or scaled down to it (``"clip"``).

    Returns ``(admitted items, {client: norm} of the updates that were over the bound)``; items keep their
    order.
    """
    items = dict(items)
    if not items:
        return items, {}
    norms = {c: update_norm(d) for c, (d, _) in items.items()}
    bounds = []
    if policy.max_norm is not None:
        bounds.append(policy.max_norm)
    if policy.median_factor is not None:
        bounds.append(policy.median_factor * float(np.median(list(norms.values()))))
    if policy.model_factor is not None:
        bounds.append(policy.model_factor * max(1.0, update_norm(model)))
    if not bounds:
        return items, {}
    bound = min(bounds)
    out, clipped = {}, {}
    for c, (d, n) in items.items():
        if norms[c] > bound:
            clipped[c] = norms[c]
            if policy.over_bound == "drop":
                continue
            scale = bound / norms[c]
            d = {k: (np.asarray(v, np.float64) * scale).astype(np.float32) for k, v in d.items()}
        out[c] = (d, n)
    return out, clipped


def combine_updates(items: Mapping, template: Tensors, policy: RoundPolicy) -> dict[str, np.ndarray]:
    """Aggregate ``{client: (delta, n)}`` (in the given order) by the policy's rule, as float32 like ``template``."""
    items = list(dict(items).items())
    out = {k: np.zeros(np.shape(v), np.float32) for k, v in template.items()}
    if not items:
        return out
    if policy.aggregation == "mean":
        total = sum(n for _, (_, n) in items)
        if total > 0:
            for _, (d, n) in items:
                w = np.float32(n / total)
                for k in out:
                    out[k] += w * d[k]
        return out
    for k in out:
        stack = np.stack([np.asarray(d[k], np.float64) for _, (d, _) in items])
        if policy.aggregation == "median":
            out[k] = np.median(stack, axis=0).astype(np.float32)
        else:
            cut = int(policy.trim * len(items))
            s = np.sort(stack, axis=0)
            out[k] = s[cut:len(items) - cut].mean(axis=0).astype(np.float32)
    return out
