"""Compressed federated distillation (CFD) on Flower 1.42 (Message API), with nnc as the transport.

The same protocol as :func:`nnc.fl.distill.simulate_fd`, split into a server strategy and a client app:

* :class:`CFDFedAvg` (a :class:`flwr.serverapp.strategy.FedAvg` subclass, started with ``strategy.start``).
  Each round it picks clients by :func:`nnc.fl.simulate.select_clients` over partition ids (asked once with a
  ``query`` message), sends each one the last round's aggregated soft labels as one NNC bitstream from that
  link's own :class:`~nnc.fl.distill.SoftLabelEncoder` (delta-coded against what that client holds; nothing
  in round 1), decodes the uploaded soft-label bitstreams with one :class:`~nnc.fl.distill.SoftLabelDecoder`
  per client, averages them (in partition order), distils its own model on the public set (for evaluation;
  no communication) and keeps the average for the next downlink.
* :func:`cfd_client_app` / :func:`cfd_train`: the client decodes the downlink, distils towards it on the
  public set, trains on its private shard and uploads ``Q_b``-quantised soft labels through its
  :class:`~nnc.fl.distill.SoftLabelEncoder`. Its model and both link ends (upload encoder reference, download
  decoder reference) live in ``context.state`` as ArrayRecords plus a ConfigRecord: no pickle, no files.

Every message is one ``uint8`` :class:`flwr.app.Array` (``stype="nnc/soft-labels"``) holding the bitstream
(or the raw float32 bytes for plain FD); bytes are ``len()`` of those payloads, in ``strategy.result``
(an :class:`~nnc.fl.distill.FDResult`, directly comparable with :func:`simulate_fd`) and in the round
metrics ``nnc.up-bytes`` / ``nnc.down-bytes``.

Robustness: an upload that does not decode is dropped and the client is told to restart its uplink with a
full message; a client that does not answer gets a full downlink next time (its decoder may not have seen
the last delta).
"""
from __future__ import annotations

import time
from typing import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from .distill import (STYPE_SOFT_LABELS, FDResult, LabelCodecConfig, SoftLabelDecoder, SoftLabelEncoder,
                      predict_proba, train_soft)
from .flower import from_arrayrecord, partition_query, query_partitions, to_arrayrecord, wait_for_nodes
from .simulate import client_rng, evaluate, init_mlp, select_clients, train_local

__all__ = ["CFDFedAvg", "cfd_train", "cfd_client_app", "LABELS_KEY"]

LABELS_KEY = "nnc.soft-labels"
_STATE_MODEL = "cfd.model"
_STATE_LINKS = "cfd.links"
_STATE_CONFIG = "cfd.links.config"


def _labels_record(data: bytes | None) -> ArrayRecord:
    if data is None:
        return ArrayRecord()
    return ArrayRecord({LABELS_KEY: Array(dtype="uint8", shape=(len(data),), stype=STYPE_SOFT_LABELS,
                                          data=bytes(data))})


def _labels_payload(rec: ArrayRecord) -> bytes | None:
    if LABELS_KEY not in rec:
        return None
    a = rec[LABELS_KEY]
    if a.stype != STYPE_SOFT_LABELS or a.dtype != "uint8":
        raise ValueError(f"soft-label array has stype={a.stype!r}, dtype={a.dtype!r}")
    return bytes(a.data)


def _codec_tag(cfg: LabelCodecConfig) -> str:
    return repr(cfg)


# --------------------------------------------------------------------------------------------------------
# client side
# --------------------------------------------------------------------------------------------------------
def cfd_train(data, parts, public_idx, *, up: LabelCodecConfig, down: LabelCodecConfig | None = None,
              hidden: int = 32, local_epochs: int = 1, distill_epochs: int = 2, lr: float = 0.1, batch: int = 32,
              seed: int = 0):
    """The ClientApp ``train`` function of CFD (arguments as :func:`nnc.fl.distill.simulate_fd`).

    The node's partition is ``context.node_config["partition-id"]`` (its private shard ``parts[pid]``).
    Replies with the uploaded soft labels and metrics ``num-examples``, ``cfd.accuracy`` (this client's
    model on the test set after the round) and ``cfd.changed-rows`` (fraction of rows the upload carried).
    """
    down = down or up
    xtr, ytr, xte, yte = data
    xpub = xtr[public_idx]
    n_cls = int(max(ytr.max(), yte.max()) + 1)
    shape = (len(xpub), n_cls)

    def train(msg: Message, ctx: Context) -> Message:
        pid = int(ctx.node_config["partition-id"])
        cfg = msg.content["config"]
        if str(cfg.get("cfd.up", _codec_tag(up))) != _codec_tag(up) or \
                str(cfg.get("cfd.down", _codec_tag(down))) != _codec_tag(down):
            raise ValueError("the strategy's soft-label codec differs from this client's")
        r = int(cfg["server-round"])
        # ---- state: model and both link ends
        if _STATE_MODEL in ctx.state:
            model = from_arrayrecord(ctx.state[_STATE_MODEL])
        else:
            model = init_mlp(xtr.shape[1], n_cls, hidden, seed)
        up_enc, down_dec = SoftLabelEncoder(up), SoftLabelDecoder(down, shape)
        if _STATE_LINKS in ctx.state:
            links = from_arrayrecord(ctx.state[_STATE_LINKS])
            up_enc.reference = links.get("up.reference")
            down_dec.reference = links.get("down.reference")
            up_enc.messages = int(ctx.state[_STATE_CONFIG]["up.messages"])
        if bool(cfg.get("cfd.reset-up", False)):
            up_enc.reference = None
        # ---- the round, exactly as simulate_fd
        rng = client_rng(seed, r, pid)
        payload = _labels_payload(msg.content["arrays"])
        if payload is not None:
            target = down_dec.decode(payload)
            model = train_soft(model, xpub, target, epochs=distill_epochs, lr=lr, batch=batch, rng=rng)
        xs, ys = xtr[parts[pid]], ytr[parts[pid]]
        model = train_local(model, xs, ys, epochs=local_epochs, lr=lr, batch=batch, rng=rng)
        before = None if up_enc.reference is None else up_enc.reference.copy()
        out = up_enc.encode(predict_proba(model, xpub))
        changed = 1.0 if before is None else float((before != up_enc.reference).any(1).mean())
        # ---- save state
        ctx.state[_STATE_MODEL] = to_arrayrecord(model)
        links = {}
        if up_enc.reference is not None:
            links["up.reference"] = up_enc.reference
        if down_dec.reference is not None:
            links["down.reference"] = down_dec.reference
        ctx.state[_STATE_LINKS] = to_arrayrecord(links)
        ctx.state[_STATE_CONFIG] = ConfigRecord({"up.messages": up_enc.messages})
        metrics = MetricRecord({"num-examples": len(xs), "cfd.accuracy": evaluate(model, xte, yte),
                                "cfd.changed-rows": changed})
        return Message(RecordDict({"arrays": _labels_record(out), "metrics": metrics}), reply_to=msg)

    return train


def cfd_client_app(data, parts, public_idx, **kw) -> ClientApp:
    """A ClientApp running :func:`cfd_train` (keyword arguments as there) that also answers the partition
    ``query`` :class:`CFDFedAvg` sends once."""
    app = ClientApp()
    app.train()(cfd_train(data, parts, public_idx, **kw))
    app.query()(partition_query)
    return app


# --------------------------------------------------------------------------------------------------------
# server side
# --------------------------------------------------------------------------------------------------------
class CFDFedAvg(FedAvg):
    """The CFD server as a Flower strategy.

    Args:
        xpub: the public (unlabelled) set, identical to the clients'.
        num_classes: soft-label width.
        up, down: codecs of client -> server / server -> client soft labels (``down`` defaults to ``up``).
        participation: fraction of clients per round (seeded :func:`select_clients`, like ``simulate_fd``).
        hidden, server_epochs, lr, batch, seed: the server model and its distillation (as ``simulate_fd``).
        test: optional ``(xte, yte)``; then ``result.accuracy`` holds the server model's accuracy per round.
        other keyword arguments go to :class:`flwr.serverapp.strategy.FedAvg` (set ``min_available_nodes``
        to the number of clients so that all are discovered).

    ``self.result`` is an :class:`FDResult` (``client_accuracy`` is the mean of every client's last reported
    accuracy; clients not yet trained count with the initial model's). ``self.dropped`` maps round ->
    ``{partition: reason}``.
    """

    def __init__(self, xpub: np.ndarray, num_classes: int, *, up: LabelCodecConfig,
                 down: LabelCodecConfig | None = None, participation: float = 1.0, hidden: int = 32,
                 server_epochs: int = 2, lr: float = 0.1, batch: int = 32, seed: int = 0, test=None, **kw):
        kw.setdefault("fraction_evaluate", 0.0)
        super().__init__(**kw)
        self.up, self.down = up, down or up
        self.xpub = np.asarray(xpub)
        self.shape = (len(self.xpub), int(num_classes))
        self.participation = participation
        self.server_epochs, self.lr, self.batch, self.seed = server_epochs, lr, batch, seed
        self.test = test
        self.model = init_mlp(self.xpub.shape[1], int(num_classes), hidden, seed)
        self.global_labels: np.ndarray | None = None
        self.result = FDResult()
        self.dropped: dict[int, dict] = {}
        self._node_of: dict[int, int] | None = None
        self._key_of_node: dict[int, int] = {}
        self._up_dec: dict[int, SoftLabelDecoder] = {}
        self._down_enc: dict[int, SoftLabelEncoder] = {}
        self._reset_up: set[int] = set()
        self._client_acc: dict[int, float] = {}
        self._sent: dict[int, int] = {}
        self._t0 = None

    # ---- discovery
    def _discover(self, grid) -> None:
        nodes = wait_for_nodes(grid, self.min_available_nodes, poll=0.2)
        self._node_of = {p: n for n, p in query_partitions(grid, nodes).items()}
        self._key_of_node = {n: p for p, n in self._node_of.items()}
        for p in self._node_of:
            self._up_dec[p] = SoftLabelDecoder(self.up, self.shape)
            self._down_enc[p] = SoftLabelEncoder(self.down)
        acc0 = evaluate(self.model, *self.test) if self.test is not None else float("nan")
        self._client_acc = {p: acc0 for p in self._node_of}
        self.result.accuracy.append(acc0)
        self.result.client_accuracy.append(acc0)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
                        ) -> Iterable[Message]:
        if self._node_of is None:
            self._t0 = time.perf_counter()
            self._discover(grid)
        keys = sorted(self._node_of)
        chosen = [keys[i] for i in select_clients(len(keys), self.participation, server_round, self.seed)]
        msgs, down = [], 0
        self._sent = {}
        for p in chosen:
            data = None
            if self.global_labels is not None:
                data = self._down_enc[p].encode(self.global_labels)
                down += len(data)
            self._sent[p] = 0 if data is None else len(data)
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "cfd.up": _codec_tag(self.up),
                                "cfd.down": _codec_tag(self.down), "cfd.reset-up": p in self._reset_up})
            self._reset_up.discard(p)
            msgs.append(Message(RecordDict({self.arrayrecord_key: _labels_record(data),
                                            self.configrecord_key: cfg}),
                                message_type=MessageType.TRAIN, dst_node_id=self._node_of[p]))
        self.result.down_bytes.append(down)
        return msgs

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        got, dropped, up, changed = {}, {}, 0, {}
        for msg in replies:
            p = self._key_of_node.get(msg.metadata.src_node_id)
            if p is None or p not in self._sent:
                continue
            if msg.has_error():
                dropped[p] = f"client error: {msg.error.reason}"
                continue
            try:
                payload = _labels_payload(msg.content[self.arrayrecord_key])
                if payload is None:
                    raise ValueError("reply without soft labels")
                up += len(payload)
                labels = self._up_dec[p].decode(payload)
                if labels.shape != self.shape or not np.isfinite(labels).all():
                    raise ValueError("soft labels do not fit the public set")
                m = msg.content["metrics"]
                self._client_acc[p] = float(m["cfd.accuracy"])
                changed[p] = float(m["cfd.changed-rows"])
                got[p] = labels
            except Exception as e:  # noqa: BLE001 - a malformed upload is dropped; the link restarts
                dropped[p] = f"{type(e).__name__}: {e}"
                self._up_dec[p] = SoftLabelDecoder(self.up, self.shape)
                self._reset_up.add(p)
        for p in self._sent:
            if p not in got and p not in dropped:
                dropped[p] = "no reply"
            if p in dropped:      # its decoder may have missed the last delta: send the next one in full
                self._down_enc[p].reference = None
        self.dropped[server_round] = dropped
        if got:
            self.global_labels = np.mean([got[p] for p in sorted(got)], axis=0).astype(np.float32)
            self.model = train_soft(self.model, self.xpub, self.global_labels, epochs=self.server_epochs,
                                    lr=self.lr, batch=self.batch,
                                    rng=np.random.default_rng([self.seed, server_round, 99]))
        res = self.result
        res.up_bytes.append(up)
        res.changed_rows_up.append(float(np.mean([changed[p] for p in sorted(changed)])) if changed else 0.0)
        res.accuracy.append(evaluate(self.model, *self.test) if self.test is not None else float("nan"))
        res.client_accuracy.append(float(np.mean([self._client_acc[p] for p in sorted(self._client_acc)])))
        res.seconds = time.perf_counter() - self._t0
        metrics = MetricRecord({"nnc.up-bytes": up, "nnc.down-bytes": res.down_bytes[-1],
                                "nnc.dropped": len(dropped), "cfd.accuracy": res.accuracy[-1],
                                "cfd.client-accuracy": res.client_accuracy[-1]})
        return to_arrayrecord(self.model), metrics
