"""Clustered federated learning (CFL, Sattler, Müller, Samek, arXiv 1910.01991): the server logic.

FedAvg converges to a stationary point of the *mixture* of client objectives. When clients follow
incongruent distributions (permuted or flipped labels, adversaries) that point is bad for everyone, but it is
recognisable: the mean update is small while individual updates stay large. CFL then splits the clients
into two groups by the cosine similarity of their updates and continues with one model per group,
recursively.

* :class:`CFLConfig` and :class:`ClusterServer`: the engine-agnostic server logic (per-cluster models,
  aggregation, split criterion ``||mean dW|| < eps1 and max ||dW_i|| > eps2``), fed with decoded updates.
* The bi-partition is :mod:`nnc.fl.clustering`; updates travel as :class:`nnc.fl.codecs.UpdateCodec`
  bitstreams; :func:`nnc.fl.sim.simulate_cfl` is the in-process loop and :mod:`nnc.fl.flower.cfl` the Flower
  strategy and client Mod.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from .clustering import flatten, max_cross_similarity, optimal_bipartition, pairwise_cosine

__all__ = ["CFLConfig", "ClusterServer"]

Tensors = Mapping[str, np.ndarray]


# --------------------------------------------------------------------------------------------------------
# the server logic
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CFLConfig:
    """CFL settings.

    Attributes:
        eps1: split only if the norm of the cluster's weighted mean update is below this.
        eps2: ... and the largest client update norm is above this.
        warmup_rounds: no split before this round (the paper's reference code waits 20 rounds).
        min_cluster_size: never split a cluster below ``2 * min_cluster_size`` members.
        max_cross_sim: accept a split only if the largest cross-cluster similarity is below this (the
            paper's separation check; ``None``: always accept).
        method: bi-partition method (see :func:`optimal_bipartition`).
        clustering: ``False`` turns CFL into plain FedAvg (one cluster forever), same transport.
        qp: QP of uplink updates (``None``: raw float32).
    """

    eps1: float = 0.4
    eps2: float = 1.6
    warmup_rounds: int = 5
    min_cluster_size: int = 1
    max_cross_sim: float | None = None
    method: str = "exact"
    clustering: bool = True
    qp: int | None = -40

    def replace(self, **kw) -> "CFLConfig":
        return replace(self, **kw)


class ClusterServer:
    """Per-cluster models and the CFL split rule. Clients are any hashable keys.

    ``step(round, updates)`` takes ``{client: (decoded_delta, num_examples)}``, adds each cluster's weighted
    mean update to its model, checks the split criterion per cluster and splits (both halves start from the
    cluster's current model). ``model_for(client)`` is what that client trains from next.
    """

    def __init__(self, base: Tensors, clients, config: CFLConfig | None = None):
        self.config = config or CFLConfig()
        self.clusters: list[list] = [sorted(clients)]
        self.models: list[dict[str, np.ndarray]] = [{k: np.asarray(v, np.float32).copy() for k, v in base.items()}]
        self.history: list[dict] = []       # per round: norms, splits

    def cluster_of(self, client) -> int:
        for i, c in enumerate(self.clusters):
            if client in c:
                return i
        raise KeyError(client)

    def model_for(self, client) -> dict[str, np.ndarray]:
        return self.models[self.cluster_of(client)]

    def step(self, server_round: int, updates: Mapping) -> dict:
        cfg = self.config
        info = {"round": server_round, "clusters": [], "splits": []}
        new_clusters, new_models = [], []
        for members, model in zip(self.clusters, self.models):
            got = [c for c in members if c in updates]
            if not got:
                new_clusters.append(members)
                new_models.append(model)
                continue
            w = np.array([float(updates[c][1]) for c in got])
            w = w / w.sum()
            flat = [flatten(updates[c][0]) for c in got]
            mean = {k: sum(wi * np.asarray(updates[c][0][k], np.float64) for wi, c in zip(w, got))
                    for k in model}
            model = {k: (model[k] + mean[k]).astype(np.float32) for k in model}
            mean_norm = float(np.linalg.norm(flatten(mean)))
            max_norm = float(max(np.linalg.norm(f) for f in flat))
            rec = {"members": list(members), "mean_norm": mean_norm, "max_norm": max_norm}
            info["clusters"].append(rec)
            split = (cfg.clustering and server_round >= cfg.warmup_rounds and mean_norm < cfg.eps1
                     and max_norm > cfg.eps2 and len(got) >= 2 * cfg.min_cluster_size and len(got) == len(members))
            if split:
                S = pairwise_cosine(flat)
                i1, i2 = optimal_bipartition(S, cfg.method)
                cross = max_cross_similarity(S, i1, i2)
                ok = min(len(i1), len(i2)) >= cfg.min_cluster_size and (
                    cfg.max_cross_sim is None or cross < cfg.max_cross_sim)
                rec["cross_sim"] = cross
                if ok:
                    c1, c2 = [got[i] for i in i1], [got[i] for i in i2]
                    info["splits"].append((c1, c2))
                    new_clusters += [sorted(c1), sorted(c2)]
                    new_models += [model, {k: v.copy() for k, v in model.items()}]
                    continue
            new_clusters.append(members)
            new_models.append(model)
        self.clusters, self.models = new_clusters, new_models
        self.history.append(info)
        return info
