"""The model (``layers`` float32 Linear weights, ``params`` values in all), the transport settings, and a
synthetic local step (a rank-1 gradient per layer, seeded by partition and round): nothing downloaded."""
from __future__ import annotations

import math

import numpy as np

from nnc.fl import DownlinkConfig, UplinkConfig

UPLINK = UplinkConfig(qp_mode="ternary", sparsity=0.01, sparsity_scope="global")
DOWNLINK = DownlinkConfig(mode="nnc", qp=-44, sparsity=0.01)


def shapes(params: int, layers: int) -> list[tuple[int, int]]:
    per = max(1, params // layers)
    rows = max(1, int(math.sqrt(per)))
    return [(rows, max(1, per // rows))] * layers


def base_fn(params: int, layers: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (r, c) in enumerate(shapes(params, layers)):
        w = rng.standard_normal((r, c), dtype=np.float32)
        w *= np.float32(0.02)
        out[f"layer{i}.weight"] = w
    return out


def local_step(arrays: dict[str, np.ndarray], partition: int, server_round: int, lr: float) -> None:
    """In place: ``W -= lr * outer(a, b)`` per layer, ``a``, ``b`` seeded by (partition, round, layer)."""
    for i, (k, w) in enumerate(arrays.items()):
        rng = np.random.default_rng([partition, server_round, i])
        a = rng.standard_normal(w.shape[0]).astype(np.float32)
        b = rng.standard_normal(w.shape[1]).astype(np.float32)
        for j in range(0, w.shape[0], 4096):           # row blocks: no full-size temporary
            w[j:j + 4096] -= np.float32(lr) * np.outer(a[j:j + 4096], b)
