"""Model, data, local training and evaluation shared by the ClientApp, the ServerApp and the in-process loop.

Everything is deterministic (one torch thread, per-(seed, round, partition) generators), so a deployment run
and :func:`run_inprocess` give the same accuracy and bytes per round.
"""
from __future__ import annotations

import numpy as np
import torch

from nnc.fl import DownlinkConfig, UplinkConfig
from nnc.fl.sim import dirichlet_partition, load_digits_data

torch.set_num_threads(1)

UPLINK = UplinkConfig(qp_mode="ternary", sparsity=0.05)
DOWNLINK = DownlinkConfig(mode="nnc", qp=-40, sparsity=0.1)
#: run-config ``method`` -> (uplink, downlink): the app's nnc setting and float32 FedAvg as the baseline
METHODS = {"nnc": (UPLINK, DOWNLINK),
           "float32": (UplinkConfig(mode="float32", error_feedback=False), DownlinkConfig(mode="float32"))}
_DATA: dict = {}


def net(seed: int = 0, hidden: int = 32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


def base_fn(seed: int = 0, hidden: int = 32) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in net(seed, hidden).state_dict().items()}


def data(num_partitions: int, seed: int = 0):
    """``(xtr, ytr, xte, yte, parts)``: digits, Dirichlet(1) label skew over ``num_partitions``."""
    key = (num_partitions, seed)
    if key not in _DATA:
        xtr, ytr, xte, yte = load_digits_data(seed)
        _DATA[key] = (xtr, ytr, xte, yte, dirichlet_partition(ytr, num_partitions, 1.0, seed))
    return _DATA[key]


def train(arrays, partition: int, num_partitions: int, server_round: int, *, lr: float, seed: int = 0,
          epochs: int = 1, batch: int = 32, hidden: int = 32) -> tuple[dict[str, torch.Tensor], int]:
    """One round of local SGD on ``partition``; returns (state_dict, number of examples)."""
    xtr, ytr, _, _, parts = data(num_partitions, seed)
    idx = parts[partition]
    x, y = torch.as_tensor(xtr[idx]), torch.as_tensor(ytr[idx])
    model = net(seed, hidden)
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in dict(arrays).items()})
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(int(np.random.default_rng([seed, server_round, partition, 11])
                                          .integers(2 ** 62)))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            b = order[i:i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model.state_dict(), len(idx)


def accuracy(arrays, num_partitions: int, seed: int = 0, hidden: int = 32) -> float:
    _, _, xte, yte, _ = data(num_partitions, seed)
    model = net(seed, hidden)
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in dict(arrays).items()})
    with torch.no_grad():
        return float((model(torch.as_tensor(xte)).argmax(1).numpy() == yte).mean())


def run_inprocess(rounds: int, num_partitions: int, fraction: float, *, lr: float, seed: int = 0,
                  uplink: UplinkConfig = UPLINK, downlink: DownlinkConfig = DOWNLINK) -> list[dict]:
    """The same federation without Flower: one ClientCodec per partition, one ServerCodec, the same
    selection rule as ``NNCFedAvg(by_partition=True)``. Returns one dict per round (acc, up, down)."""
    from nnc.fl import ClientCodec, ServerCodec
    from nnc.fl import select_clients

    server = ServerCodec(base_fn(seed), uplink, downlink)
    clients = {p: ClientCodec(base_fn(seed), uplink, downlink) for p in range(num_partitions)}
    out = []
    for r in range(1, rounds + 1):
        deltas = {}
        for p in select_clients(num_partitions, fraction, r, seed):
            model = clients[p].receive(server.downlink_for(p))
            sd, n = train(model, p, num_partitions, r, lr=lr, seed=seed)
            up = clients[p].encode({k: v.numpy() for k, v in sd.items()}, num_examples=n)
            deltas[p] = (server.receive(p, up), n)
        model = server.aggregate(deltas)
        rec = server.ledger[-1]
        out.append({"round": r, "acc": accuracy(model, num_partitions, seed), "up": rec.up_bytes,
                    "down": rec.down_bytes})
    return out
