"""Clustered FL (CFL) on Flower 1.42 (Message API): a strategy over :class:`nnc.fl.clustered.ClusterServer`
and a client Mod that turns the trained model into an nnc-coded update.

The strategy takes the initial model (any ``{name: array}``, e.g. a PyTorch ``state_dict`` as numpy) and
the client selection as arguments; the clustering logic and the update codec are the engine-agnostic
:mod:`nnc.fl.clustered` and :class:`nnc.fl.codecs.UpdateCodec`.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from ..clustered import CFLConfig, ClusterServer
from ..codecs import UpdateCodec
from ..selection import Selection, everyone
from ..transport import UploadBinding
from .fedavg import bind_reply, check_binding, query_partitions, wait_for_nodes
from .records import bytes_array, from_arrayrecord, to_arrayrecord

__all__ = ["ClusteredFedAvg", "cfl_mod", "STYPE_UPDATE"]

Tensors = Mapping[str, np.ndarray]
STYPE_UPDATE = "nnc/cfl-update"


def cfl_mod(qp: int | None = -40, arrays_key: str = "arrays", config_key: str = "config",
            key_fn: Callable[[Context], bytes] | None = None):
    """Client Mod: remembers the model it received and replaces the trained model in the reply by the
    nnc-coded update ``trained - received`` (one ``uint8`` Array, ``stype="nnc/cfl-update"``). A train
    function may instead put its own update in the reply under ``"update"`` (e.g. a Byzantine client).

    The upload is bound to this client (the key the server sent as ``nnc.client``) and to the round it
    answers (``server-round``), with an HMAC tag when ``key_fn`` (``context -> secret`` shared with the
    server, ``ClusteredFedAvg(keys=...)``) is given, as :func:`nnc.fl.flower.nnc_mod` binds its uploads."""
    codec = UpdateCodec(qp)

    def mod(msg, ctx, call_next):
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctx)
        received = from_arrayrecord(msg.content[arrays_key])
        cfg = dict(msg.content[config_key]) if config_key in msg.content.config_records else {}
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        if "update" in reply.content.array_records:
            delta = from_arrayrecord(reply.content["update"])
            del reply.content["update"]
        else:
            trained = from_arrayrecord(reply.content[arrays_key])
            delta = {k: trained[k].astype(np.float32) - received[k].astype(np.float32) for k in received}
        payload = codec.encode(delta)
        reply.content[arrays_key] = ArrayRecord({"nnc.update": bytes_array(payload, STYPE_UPDATE)})
        bind_reply(reply, payload, cfg, ctx, key_fn)
        return reply

    return mod


class ClusteredFedAvg(FedAvg):
    """CFL as a Flower strategy: each node is sent its cluster's model, uploads are nnc-coded updates
    (decoded here), :class:`ClusterServer` aggregates per cluster and splits. Every node trains every
    round (set ``min_available_nodes`` to the number of clients). Clients are keyed by node id, or by
    ``partition-id`` when the ClientApp answers a ``query`` (``nnc.fl.flower.partition_query``) and
    ``by_partition=True``. ``self.server`` holds clusters and models; ``self.ledger`` the bytes per round.
    The ArrayRecord returned to Flower (and passed to ``evaluate_fn``) is the first cluster's model.
    ``base`` is any ``{name: array}`` model (e.g. a PyTorch ``state_dict`` as numpy); ``select``:
    ``(server_round, sorted client keys) -> keys trained this round`` (default: every client; a cluster only
    splits in a round all its members took part in).

    Uploads are bound to their client and round with the transport's :class:`~nnc.fl.transport.UploadBinding`
    (as :class:`~nnc.fl.flower.NNCFedAvg`): a replayed upload, one from another round or one naming another
    client (or, with ``keys`` = client key -> secret, without that client's HMAC tag) is refused before it is
    decoded and counted in ``self.rejected`` (round -> ``{client: category}``), ``dropped`` and the ledger; a
    second delivery of an accepted upload is applied once. ``require_binding=False`` also takes unbound
    uploads (clients older than the binding; :func:`cfl_mod` always binds).
    """

    def __init__(self, base: Tensors, config: CFLConfig | None = None, *, by_partition: bool = False,
                 select: Selection | None = None, keys: Mapping | None = None, require_binding: bool = True,
                 **kw):
        kw.setdefault("fraction_evaluate", 0.0)
        super().__init__(**kw)
        self.binding = UploadBinding(keys)
        self.require_binding = require_binding
        self.rejected: dict[int, dict] = {}
        self.cfl_config = config or CFLConfig()
        self.codec = UpdateCodec(self.cfl_config.qp)
        self.base = {k: np.asarray(v, np.float32) for k, v in base.items()}
        self.by_partition = by_partition
        self.select = select or everyone
        self.server: ClusterServer | None = None
        self._key: dict[int, int] = {}
        self.ledger: list[dict] = []
        self.dropped: dict[int, dict] = {}

    def _setup(self, grid) -> None:
        nodes = wait_for_nodes(grid, self.min_available_nodes, poll=0.5)
        self._key = {n: n for n in nodes}
        if self.by_partition:
            self._key.update(query_partitions(grid, nodes))
        self.server = ClusterServer(self.base, list(self._key.values()), self.cfl_config)

    def configure_train(self, server_round, arrays, config, grid):
        if self.server is None:
            self._setup(grid)
        msgs, down = [], 0
        chosen = set(self.select(server_round, sorted(self._key.values())))
        for node, key in sorted(self._key.items()):
            if key not in chosen:
                continue
            model = self.server.model_for(key)
            down += sum(int(v.nbytes) for v in model.values())
            cfg = ConfigRecord({**dict(config), "server-round": server_round,
                                "cfl.cluster": self.server.cluster_of(key), "nnc.client": str(key)})
            msgs.append(Message(RecordDict({self.arrayrecord_key: to_arrayrecord(model),
                                            self.configrecord_key: cfg}),
                                message_type=MessageType.TRAIN, dst_node_id=node))
        self.ledger.append({"round": server_round, "down": down, "up": 0})
        return msgs

    def aggregate_train(self, server_round, replies):
        ups, dropped, up, rejected = {}, {}, 0, {}
        for msg in replies:
            key = self._key.get(msg.metadata.src_node_id, msg.metadata.src_node_id)
            if msg.has_error():
                dropped[key] = msg.error.reason
                continue
            try:
                rec = msg.content[self.arrayrecord_key]
                ks = list(rec.keys())
                if len(ks) != 1 or rec[ks[0]].stype != STYPE_UPDATE:
                    raise ValueError(f"expected one {STYPE_UPDATE!r} array, got {ks[:5]}")
                payload = bytes(rec[ks[0]].data)
                # before decoding (the transport's checks): identity, round, replay, tag
                digest = check_binding(self.binding, key, payload, msg.content, server_round, self.require_binding,
                                       rejected, dropped)
                if digest is None:
                    continue
                model = self.server.model_for(key)
                delta = self.codec.decode(payload, model)
                if set(delta) != set(model) or any(delta[k].shape != model[k].shape for k in model) or \
                        not all(np.isfinite(v).all() for v in delta.values()):
                    raise ValueError("update does not fit the model")
                n = 1
                for rk in msg.content.metric_records.keys():
                    if self.weighted_by_key in msg.content[rk]:
                        n = int(msg.content[rk][self.weighted_by_key])
                up += UpdateCodec.nbytes(payload)
                ups[key] = (delta, n)
                self.binding.accept(key, server_round, digest)
            except Exception as e:  # noqa: BLE001 - a malformed upload is dropped
                dropped[key] = f"{type(e).__name__}: {e}"
        self.dropped[server_round] = dropped
        self.rejected[server_round] = rejected
        info = self.server.step(server_round, ups)
        self.ledger[-1]["up"] = up
        self.ledger[-1]["rejected"] = dict(rejected)
        metrics = MetricRecord({"cfl.clusters": len(self.server.clusters), "cfl.splits": len(info["splits"]),
                                "nnc.up-bytes": up, "nnc.down-bytes": self.ledger[-1]["down"],
                                "nnc.rejected": len(rejected)})
        return to_arrayrecord(self.server.models[0]), metrics
