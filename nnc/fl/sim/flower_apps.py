"""Ready-made Flower ClientApps and strategies for the numpy MLP experiments (tests, benchmarks).

They wire :mod:`nnc.fl.flower`'s adapters to the simulation's model, data and generators, so that a Flower
run reproduces the in-process loops exactly (same bytes, same accuracy).
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..distill import LabelCodecConfig
from ..flower import CFDFedAvg, cfd_mod, from_arrayrecord, nnc_mod, partition_query, to_arrayrecord
from ..flower.cfd import TARGET_KEY
from ..selection import seeded_fraction
from ..transport import DownlinkConfig, UplinkConfig
from .data import client_rng
from .mlp import evaluate, init_mlp, predict_proba, train_local, train_soft

__all__ = ["fedavg_client_app", "cfd_train", "cfd_client_app", "mlp_cfd_strategy"]

_STATE_MODEL = "cfd.model"


def fedavg_client_app(base_fn: Callable[[], Mapping[str, np.ndarray]], data, parts, *,
                      uplink: UplinkConfig | None = None, downlink: DownlinkConfig | None = None, epochs: int = 1,
                      lr: float = 0.05, batch: int = 32, seed: int = 0):
    """A ClientApp for :class:`NNCFedAvg` on the MLPs of :mod:`nnc.fl.sim`: the node with
    ``node_config["partition-id"] = p`` trains on ``data[0][parts[p]], data[1][parts[p]]`` with
    :func:`~nnc.fl.sim.train_local` (round ``r`` uses ``client_rng(seed, r, p)``, as the in-process
    loop does), inside :func:`nnc_mod`; it also answers the partition ``query``."""
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=[nnc_mod(base_fn, uplink, downlink)])

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        pid, r = int(ctx.node_config["partition-id"]), int(msg.content["config"]["server-round"])
        xs, ys = data[0][parts[pid]], data[1][parts[pid]]
        new = train_local(from_arrayrecord(msg.content["arrays"]), xs, ys, epochs=epochs, lr=lr, batch=batch,
                          rng=client_rng(seed, r, pid))
        return Message(RecordDict({"arrays": to_arrayrecord(new),
                                   "metrics": MetricRecord({"num-examples": len(xs)})}), reply_to=msg)

    app.query()(partition_query)
    return app


def cfd_train(data, parts, public_idx, *, hidden: int = 32, local_epochs: int = 1, distill_epochs: int = 2,
              lr: float = 0.1, batch: int = 32, seed: int = 0):
    """The ClientApp ``train`` function of CFD on the MLP (arguments as :func:`nnc.fl.sim.simulate_fd`), to run
    inside :func:`nnc.fl.flower.cfd_mod`. The node's partition is ``context.node_config["partition-id"]``
    (its private shard ``parts[pid]``); its model lives in ``context.state``. Replies with its soft labels
    on the public set and metrics ``num-examples`` and ``cfd.accuracy`` (on the test set after the round).
    """
    xtr, ytr, xte, yte = data
    xpub = xtr[public_idx]
    n_cls = int(max(ytr.max(), yte.max()) + 1)

    def train(msg: Message, ctx: Context) -> Message:
        pid = int(ctx.node_config["partition-id"])
        r = int(msg.content["config"]["server-round"])
        if _STATE_MODEL in ctx.state:
            model = from_arrayrecord(ctx.state[_STATE_MODEL])
        else:
            model = init_mlp(xtr.shape[1], n_cls, hidden, seed)
        rng = client_rng(seed, r, pid)
        arrays = msg.content["arrays"]
        if TARGET_KEY in arrays:
            model = train_soft(model, xpub, arrays[TARGET_KEY].numpy(), epochs=distill_epochs, lr=lr, batch=batch,
                               rng=rng)
        xs, ys = xtr[parts[pid]], ytr[parts[pid]]
        model = train_local(model, xs, ys, epochs=local_epochs, lr=lr, batch=batch, rng=rng)
        ctx.state[_STATE_MODEL] = to_arrayrecord(model)
        metrics = MetricRecord({"num-examples": len(xs), "cfd.accuracy": evaluate(model, xte, yte)})
        return Message(RecordDict({"arrays": ArrayRecord({TARGET_KEY: Array(predict_proba(model, xpub))}),
                                   "metrics": metrics}), reply_to=msg)

    return train


def cfd_client_app(data, parts, public_idx, *, up: LabelCodecConfig, down: LabelCodecConfig | None = None,
                   **kw) -> ClientApp:
    """A ClientApp running :func:`cfd_train` (keyword arguments as there) inside :func:`cfd_mod`, that also
    answers the partition ``query`` :class:`~nnc.fl.flower.CFDFedAvg` sends once."""
    xtr, ytr, _, yte = data
    shape = (len(public_idx), int(max(ytr.max(), yte.max()) + 1))
    app = ClientApp(mods=[cfd_mod(shape, up=up, down=down)])
    app.train()(cfd_train(data, parts, public_idx, **kw))
    app.query()(partition_query)
    return app


def mlp_cfd_strategy(xpub: np.ndarray, num_classes: int, *, up: LabelCodecConfig,
                     down: LabelCodecConfig | None = None, participation: float = 1.0, hidden: int = 32,
                     server_epochs: int = 2, lr: float = 0.1, batch: int = 32, seed: int = 0, test=None,
                     **kw) -> CFDFedAvg:
    """:class:`~nnc.fl.flower.CFDFedAvg` with the MLP as the server model, distilled on ``xpub`` as
    :func:`nnc.fl.sim.simulate_fd` does, seeded participation, and ``test = (xte, yte)`` for its accuracy."""
    xpub = np.asarray(xpub)

    def distill(model, labels, server_round):
        return train_soft(model, xpub, labels, epochs=server_epochs, lr=lr, batch=batch,
                          rng=np.random.default_rng([seed, server_round, 99]))

    return CFDFedAvg((len(xpub), int(num_classes)), up=up, down=down,
                     model=init_mlp(xpub.shape[1], int(num_classes), hidden, seed), distill=distill,
                     evaluate=None if test is None else (lambda m: evaluate(m, *test)),
                     select=seeded_fraction(participation, seed), **kw)
