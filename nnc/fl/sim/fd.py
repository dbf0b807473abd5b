"""The in-process federated distillation loop (FD / CFD) on the numpy MLP."""
from __future__ import annotations

import time

import numpy as np

from ..distill import FDResult, LabelCodecConfig, SoftLabelDecoder, SoftLabelEncoder
from .data import client_rng, select_clients
from .mlp import evaluate, init_mlp, predict_proba, train_local, train_soft

__all__ = ["simulate_fd"]


def simulate_fd(data, parts, public_idx, *, up: LabelCodecConfig, down: LabelCodecConfig | None = None,
                rounds: int = 20, participation: float = 1.0, hidden: int = 32, local_epochs: int = 1,
                distill_epochs: int = 2, server_epochs: int = 2, lr: float = 0.1, batch: int = 32,
                seed: int = 0) -> FDResult:
    """Federated distillation over nnc soft-label messages, in process.

    Args:
        data: ``(xtr, ytr, xte, yte)``; ``parts`` index private client shards of ``xtr``; ``public_idx``
            indexes the public set (its labels are never used).
        up, down: codec of client -> server and server -> client soft labels (``down`` defaults to ``up``).

    Per round: each selected client (1) receives the server's aggregated soft labels (from round 2 on) and
    distils its model towards them on the public set, (2) trains on its private shard, (3) uploads its soft
    labels on the public set. The server averages the decoded labels of the round's clients, distils its own
    model (``server_epochs``; used for the reported accuracy, costs no communication) and keeps the average
    for the next downlink. Each client link has its own encoder/decoder pair in both directions, so delta
    coding stays exact with partial participation. Bytes are ``len()`` of the messages.
    """
    t0 = time.perf_counter()
    down = down or up
    xtr, ytr, xte, yte = data
    xpub = xtr[public_idx]
    n_cls = int(max(ytr.max(), yte.max()) + 1)
    shape = (len(xpub), n_cls)
    n_clients = len(parts)
    base = init_mlp(xtr.shape[1], n_cls, hidden, seed)
    models = {c: {k: v.copy() for k, v in base.items()} for c in range(n_clients)}
    server_model = {k: v.copy() for k, v in base.items()}
    up_enc = {c: SoftLabelEncoder(up) for c in range(n_clients)}
    up_dec = {c: SoftLabelDecoder(up, shape) for c in range(n_clients)}
    down_enc = {c: SoftLabelEncoder(down) for c in range(n_clients)}
    down_dec = {c: SoftLabelDecoder(down, shape) for c in range(n_clients)}
    global_labels = None
    res = FDResult(accuracy=[evaluate(server_model, xte, yte)], client_accuracy=[evaluate(base, xte, yte)])
    for r in range(1, rounds + 1):
        chosen = select_clients(n_clients, participation, r, seed)
        ub = db = 0
        received, changed = [], []
        for c in chosen:
            rng = client_rng(seed, r, c)
            if global_labels is not None:
                msg = down_enc[c].encode(global_labels)
                db += len(msg)
                target = down_dec[c].decode(msg)
                models[c] = train_soft(models[c], xpub, target, epochs=distill_epochs, lr=lr, batch=batch, rng=rng)
            xs, ys = xtr[parts[c]], ytr[parts[c]]
            models[c] = train_local(models[c], xs, ys, epochs=local_epochs, lr=lr, batch=batch, rng=rng)
            before = None if up_enc[c].reference is None else up_enc[c].reference.copy()
            msg = up_enc[c].encode(predict_proba(models[c], xpub))
            ub += len(msg) if isinstance(msg, (bytes, bytearray)) else 0
            received.append(up_dec[c].decode(msg))
            after = up_enc[c].reference
            changed.append(1.0 if before is None else float((before != after).any(1).mean()))
        global_labels = np.mean(received, axis=0).astype(np.float32)
        server_model = train_soft(server_model, xpub, global_labels, epochs=server_epochs, lr=lr, batch=batch,
                                  rng=np.random.default_rng([seed, r, 99]))
        res.up_bytes.append(ub)
        res.down_bytes.append(db)
        res.changed_rows_up.append(float(np.mean(changed)))
        res.accuracy.append(evaluate(server_model, xte, yte))
        res.client_accuracy.append(float(np.mean([evaluate(models[c], xte, yte) for c in range(n_clients)])))
    res.seconds = time.perf_counter() - t0
    return res
