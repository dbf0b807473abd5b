"""The in-process FedAvg loop over the nnc transport codec (numpy only).

It drives the same :class:`~nnc.fl.ClientCodec` / :class:`~nnc.fl.ServerCodec` objects the Flower
integration uses: a numpy MLP (softmax regression when ``hidden=0``), Dirichlet label-skew partitions,
seeded partial participation, local SGD, and an optional hook that tampers with uploads in transit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..transport import ClientCodec, DownlinkConfig, ServerCodec, UplinkConfig
from .data import client_rng, dirichlet_partition, select_clients
from .mlp import evaluate, init_mlp, train_local

__all__ = ["simulate", "SimResult"]


# --------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------
@dataclass
class SimResult:
    accuracy: list[float] = field(default_factory=list)         # after each round (index 0: initial model)
    up_bytes: list[int] = field(default_factory=list)           # per round
    down_bytes: list[int] = field(default_factory=list)         # per round
    dropped: list[dict] = field(default_factory=list)           # per round: client -> reason
    ledger: list = field(default_factory=list)
    seconds: float = 0.0
    server: ServerCodec | None = None
    clients: dict = field(default_factory=dict)

    @property
    def cum_up(self) -> np.ndarray:
        return np.cumsum([0] + self.up_bytes)

    @property
    def cum_down(self) -> np.ndarray:
        return np.cumsum([0] + self.down_bytes)

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "up_bytes": self.up_bytes, "down_bytes": self.down_bytes,
                "dropped": [{str(k): str(v) for k, v in d.items()} for d in self.dropped],
                "seconds": self.seconds}


def simulate(data, *, uplink: UplinkConfig | None = None, downlink: DownlinkConfig | None = None,
             num_clients: int = 10, rounds: int = 20, participation: float = 0.5, alpha: float = 1.0,
             hidden: int = 64, epochs: int = 1, lr: float = 0.05, batch: int = 32, seed: int = 0,
             tamper: Callable[[int, int, object], object] | None = None) -> SimResult:
    """Run ``rounds`` of FedAvg over the nnc transport codec, in process.

    Args:
        data: ``(xtr, ytr, xte, yte)``.
        tamper: optional ``(round, client, payload) -> payload`` applied to uploads in transit
            (to exercise rejection of corrupt messages).
    """
    t0 = time.perf_counter()
    xtr, ytr, xte, yte = data
    n_classes = int(max(ytr.max(), yte.max()) + 1)
    base = init_mlp(xtr.shape[1], n_classes, hidden, seed)
    parts = dirichlet_partition(ytr, num_clients, alpha, seed)
    server = ServerCodec(base, uplink, downlink)
    clients = {c: ClientCodec(base, uplink, downlink) for c in range(num_clients)}
    res = SimResult(accuracy=[evaluate(server.model, xte, yte)], server=server, clients=clients)
    for r in range(1, rounds + 1):
        chosen = select_clients(num_clients, participation, r, seed)
        uploads = {}
        for c in chosen:
            model = clients[c].receive(server.downlink_for(c))
            xs, ys = xtr[parts[c]], ytr[parts[c]]
            trained = train_local(model, xs, ys, epochs=epochs, lr=lr, batch=batch, rng=client_rng(seed, r, c))
            msg = clients[c].encode(trained, num_examples=len(xs))
            if tamper is not None:
                msg.payload = tamper(r, c, msg.payload)
            uploads[c] = msg
        _, dropped = server.step(uploads)
        rec = server.ledger[-1]
        res.up_bytes.append(rec.up_bytes)
        res.down_bytes.append(rec.down_bytes)
        res.dropped.append(dropped)
        res.accuracy.append(evaluate(server.model, xte, yte))
    res.ledger = server.ledger
    res.seconds = time.perf_counter() - t0
    return res
