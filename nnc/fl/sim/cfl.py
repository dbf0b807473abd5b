"""The in-process clustered-FL loop (CFL, or FedAvg with ``clustering=False``), full participation."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from ..clustered import CFLConfig, ClusterServer
from ..codecs import UpdateCodec

__all__ = ["CFLResult", "simulate_cfl"]

Tensors = Mapping[str, np.ndarray]


# --------------------------------------------------------------------------------------------------------
# the in-process loop
# --------------------------------------------------------------------------------------------------------
@dataclass
class CFLResult:
    accuracy: list[float] = field(default_factory=list)      # mean over evaluated clients, per round
    up_bytes: list[int] = field(default_factory=list)
    down_bytes: list[int] = field(default_factory=list)
    clusters: list = field(default_factory=list)             # cluster memberships after each round
    history: list = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "up_bytes": self.up_bytes, "down_bytes": self.down_bytes,
                "clusters": [[list(map(int, c)) for c in cl] for cl in self.clusters], "seconds": self.seconds}


def simulate_cfl(base: Tensors, clients: Mapping, *, config: CFLConfig | None = None, rounds: int = 30,
                 train_fn: Callable, eval_fn: Callable, evaluate_clients=None) -> CFLResult:
    """CFL (or FedAvg with ``clustering=False``) in process, full participation.

    Args:
        base: initial model. ``clients``: ``{client: anything}`` handed to ``train_fn``.
        train_fn: ``(client, model, round) -> (trained_model or None, num_examples, delta_override)``; a
            Byzantine client returns ``delta_override`` (its update, sent as is) instead of a model.
        eval_fn: ``(client, model) -> accuracy`` of the model the client now holds, on its own distribution.
        evaluate_clients: clients averaged into :attr:`CFLResult.accuracy` (default: all).

    Downlink: each client receives its cluster's model as raw float32 (counted as ``nbytes``); uplink:
    each update is an NNC bitstream (:class:`UpdateCodec`), decoded before the server uses it.
    """
    t0 = time.perf_counter()
    cfg = config or CFLConfig()
    codec = UpdateCodec(cfg.qp)
    server = ClusterServer(base, list(clients), cfg)
    ev = list(evaluate_clients) if evaluate_clients is not None else list(clients)
    res = CFLResult(accuracy=[float(np.mean([eval_fn(c, server.model_for(c)) for c in ev]))])
    for r in range(1, rounds + 1):
        ups, ub, db = {}, 0, 0
        for c in clients:
            model = server.model_for(c)
            db += sum(int(v.nbytes) for v in model.values())
            trained, n, override = train_fn(c, model, r)
            delta = override if override is not None else {k: trained[k] - model[k] for k in model}
            payload = codec.encode(delta)
            ub += codec.nbytes(payload)
            ups[c] = (codec.decode(payload, model), n)
        server.step(r, ups)
        res.up_bytes.append(ub)
        res.down_bytes.append(db)
        res.clusters.append([list(c) for c in server.clusters])
        res.accuracy.append(float(np.mean([eval_fn(c, server.model_for(c)) for c in ev])))
    res.history = server.history
    res.seconds = time.perf_counter() - t0
    return res
