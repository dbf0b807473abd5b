"""Flower (1.42, Message API) integration: a client Mod and a FedAvg strategy carrying nnc bitstreams.

* :func:`nnc_mod` wraps a ClientApp's ``train`` function. On the way in it decodes the server's downlink
  (NNC streams as ``uint8`` :class:`flwr.app.Array` with ``stype="nnc/bitstream"``, or plain float32 arrays)
  into an ordinary ArrayRecord of the global model; on the way out it turns the trained model into an upload
  (one ``uint8`` Array with ``stype="nnc/update"``). The client's codec state (residual, model, TCA history)
  lives in ``context.state`` as an ArrayRecord plus a ConfigRecord: no files, no pickle.
* :class:`NNCFedAvg` builds one message per selected node in ``configure_train`` (each node may need a
  different catch-up) and decodes uploads in ``aggregate_train`` with strict limits, dropping rejected ones.
  Bytes on the wire are in ``strategy.server.ledger``.

Only the ``arrays`` of train messages are touched; evaluate and query messages pass through.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from ..selection import Selection, seeded_fraction
from ..transport import (ClientCodec, DownlinkConfig, DownlinkMessage, RejectedUpdateError, ServerCodec,
                         UplinkConfig, UplinkMessage)
from .records import bytes_array as _bytes_array
from .records import from_arrayrecord, to_arrayrecord

__all__ = ["nnc_mod", "NNCFedAvg", "STYPE_STREAM", "STYPE_UPDATE", "partition_query", "query_partitions",
           "wait_for_nodes"]

STYPE_STREAM = "nnc/bitstream"
STYPE_UPDATE = "nnc/update"
_STATE_ARRAYS = "nnc.codec.arrays"
_STATE_CONFIG = "nnc.codec.config"


# --------------------------------------------------------------------------------------------------------
# downlink / uplink <-> records
# --------------------------------------------------------------------------------------------------------
def _downlink_to_records(msg: DownlinkMessage) -> tuple[ArrayRecord, dict]:
    arrays = {}
    for i, s in enumerate(msg.streams):
        arrays[f"nnc.stream.{i:04d}"] = _bytes_array(s, STYPE_STREAM)
    if msg.arrays is not None:
        for k, v in msg.arrays.items():
            arrays[k] = Array(np.asarray(v, dtype=np.float32, order="C"))
    meta = {"nnc.kind": msg.kind, "nnc.base-round": int(msg.base_round), "nnc.round": int(msg.round),
            "nnc.reset-uplink": bool(msg.reset_uplink)}
    return ArrayRecord(arrays), meta


def _downlink_from_records(rec: ArrayRecord, cfg: ConfigRecord) -> DownlinkMessage:
    streams, arrays = [], {}
    for k in rec.keys():
        a = rec[k]
        if a.stype == STYPE_STREAM:
            streams.append(bytes(a.data))
        else:
            arrays[k] = a.numpy()
    return DownlinkMessage(str(cfg["nnc.kind"]), int(cfg["nnc.base-round"]), int(cfg["nnc.round"]), streams,
                           arrays or None, bool(cfg["nnc.reset-uplink"]))


def _uplink_from_record(rec: ArrayRecord, num_examples) -> UplinkMessage:
    keys = list(rec.keys())
    if len(keys) == 1 and rec[keys[0]].stype == STYPE_UPDATE:
        return UplinkMessage(bytes(rec[keys[0]].data), num_examples)
    return UplinkMessage(from_arrayrecord(rec), num_examples)


# --------------------------------------------------------------------------------------------------------
# client side
# --------------------------------------------------------------------------------------------------------
def _load_codec(ctx: Context, base_fn, uplink, downlink) -> ClientCodec:
    codec = ClientCodec(base_fn(), uplink, downlink)
    if _STATE_ARRAYS in ctx.state and _STATE_CONFIG in ctx.state:
        arrays = from_arrayrecord(ctx.state[_STATE_ARRAYS])
        scalars = dict(ctx.state[_STATE_CONFIG])
        codec.load_state_dict(arrays, scalars)
    return codec


def _save_codec(ctx: Context, codec: ClientCodec) -> None:
    arrays, scalars = codec.state_dict()
    ctx.state[_STATE_ARRAYS] = to_arrayrecord(arrays)
    ctx.state[_STATE_CONFIG] = ConfigRecord(scalars)


def nnc_mod(base_fn: Callable[[], Mapping[str, np.ndarray]], uplink: UplinkConfig | None = None,
            downlink: DownlinkConfig | None = None, arrays_key: str = "arrays", config_key: str = "config",
            weighted_by_key: str = "num-examples"):
    """A client Mod that puts the nnc transport codec around a ClientApp's train function.

    Args:
        base_fn: returns the initial global model ``{name: array}`` (the same on every node and the server).
        uplink, downlink: transport settings; must equal the strategy's.
    """
    uplink = uplink or UplinkConfig()
    downlink = downlink or DownlinkConfig()

    def mod(msg: Message, ctx: Context, call_next) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctx)
        codec = _load_codec(ctx, base_fn, uplink, downlink)
        cfg = msg.content[config_key]
        model = codec.receive(_downlink_from_records(msg.content[arrays_key], cfg))
        msg.content[arrays_key] = to_arrayrecord(model)
        reply = call_next(msg, ctx)
        if reply.has_error():
            _save_codec(ctx, codec)
            return reply
        trained = from_arrayrecord(reply.content[arrays_key])
        n = 1
        for rk in reply.content.metric_records.keys():
            if weighted_by_key in reply.content[rk]:
                n = int(reply.content[rk][weighted_by_key])
        up = codec.encode(trained, num_examples=n)
        if isinstance(up.payload, (bytes, bytearray)):
            reply.content[arrays_key] = ArrayRecord({"nnc.update": _bytes_array(up.payload, STYPE_UPDATE)})
        else:
            reply.content[arrays_key] = to_arrayrecord(up.payload)
        _save_codec(ctx, codec)
        return reply

    return mod


def partition_query(msg: Message, ctx: Context) -> Message:
    """A ClientApp ``query`` handler that reports ``node_config["partition-id"]`` (register it with
    ``app.query()(partition_query)``); :class:`NNCFedAvg` uses it to select clients by partition."""
    return Message(RecordDict({"config": ConfigRecord({"partition-id": int(ctx.node_config["partition-id"])})}),
                   reply_to=msg)


# --------------------------------------------------------------------------------------------------------
# server side
# --------------------------------------------------------------------------------------------------------
def wait_for_nodes(grid, min_nodes: int, poll: float, timeout: float = 300.0) -> list[int]:
    """Wait (at most ``timeout`` seconds) until ``min_nodes`` nodes are connected; returns the sorted node ids."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < max(1, min_nodes) and time.monotonic() < deadline:
        time.sleep(poll)
    return sorted(grid.get_node_ids())


def query_partitions(grid, nodes: Iterable[int]) -> dict[int, int]:
    """Ask each node for its partition id (answered by :func:`partition_query`); returns node id -> partition
    id, in reply order, for the nodes that answered."""
    msgs = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    out = {}
    for rep in grid.send_and_receive(msgs):
        if not rep.has_error():
            out[rep.metadata.src_node_id] = int(rep.content["config"]["partition-id"])
    return out


class NNCFedAvg(FedAvg):
    """FedAvg whose train messages carry nnc bitstreams, with per-client uplink state on the server.

    Args:
        base: the initial global model.
        uplink, downlink: transport settings (the clients' mod must use the same).
        by_partition: key clients by partition id (asked once through a ``query`` message answered by
            :func:`partition_query`) instead of node id.
        select: the client selection, ``(server_round, sorted partition ids) -> chosen ids`` (see
            :mod:`nnc.fl.selection`); with ``by_partition=True`` it defaults to
            ``seeded_fraction(fraction_train, select_seed)``, so that a run matches the in-process loop.
            Without ``by_partition`` Flower's own sampling is used and clients are keyed by node id.
        other keyword arguments go to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, base: Mapping[str, np.ndarray], uplink: UplinkConfig | None = None,
                 downlink: DownlinkConfig | None = None, *, by_partition: bool = False, select_seed: int = 0,
                 select: Selection | None = None, decoder_config=None, **kw):
        kw.setdefault("fraction_evaluate", 0.0)
        super().__init__(**kw)
        self.server = ServerCodec(base, uplink, downlink, decoder_config)
        self.by_partition = by_partition
        self.select_seed = select_seed
        self.select = select
        self._node_of: dict[int, int] | None = None      # partition id -> node id
        self._key_of_node: dict[int, int] = {}
        self.dropped: dict[int, dict] = {}

    def _discover(self, grid) -> None:
        self._node_of = {p: n for n, p in query_partitions(grid, sorted(grid.get_node_ids())).items()}
        self._key_of_node = {n: p for p, n in self._node_of.items()}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
                        ) -> Iterable[Message]:
        if self.by_partition:
            if self._node_of is None:
                self._discover(grid)
            select = self.select or seeded_fraction(self.fraction_train, self.select_seed)
            node_ids = [self._node_of[p] for p in select(server_round, sorted(self._node_of))]
        else:
            node_ids = [m.metadata.dst_node_id for m in super().configure_train(server_round, arrays, config, grid)]
        messages = []
        for node in node_ids:
            key = self._key_of_node.get(node, node)
            rec, meta = _downlink_to_records(self.server.downlink_for(key))
            cfg = ConfigRecord({**dict(config), "server-round": server_round, **meta})
            messages.append(Message(RecordDict({self.arrayrecord_key: rec, self.configrecord_key: cfg}),
                                    message_type=MessageType.TRAIN, dst_node_id=node))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        deltas, dropped, contents = {}, {}, []
        for msg in replies:
            key = self._key_of_node.get(msg.metadata.src_node_id, msg.metadata.src_node_id)
            if msg.has_error():
                dropped[key] = f"client error: {msg.error.reason}"
                continue
            try:
                n = 1
                for rk in msg.content.metric_records.keys():
                    if self.weighted_by_key in msg.content[rk]:
                        n = int(msg.content[rk][self.weighted_by_key])
                rec = msg.content[self.arrayrecord_key]
                up = _uplink_from_record(rec, n)
            except Exception as e:  # noqa: BLE001 - a malformed reply is dropped like a corrupt stream
                dropped[key] = f"{type(e).__name__}: {e}"
                self.server.pending_reset.add(key)
                continue
            try:
                deltas[key] = (self.server.receive(key, up), n)
                contents.append(msg.content)
            except RejectedUpdateError as e:
                dropped[key] = e.reason
        self.dropped[server_round] = dropped
        model = self.server.aggregate(deltas)
        rec = self.server.ledger[-1]
        metrics = MetricRecord({"nnc.up-bytes": rec.up_bytes, "nnc.down-bytes": rec.down_bytes,
                                "nnc.dropped": len(dropped)})
        if contents:
            try:
                agg = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
                for k in agg.keys():
                    metrics[k] = agg[k]
            except Exception:  # noqa: BLE001 - metrics are optional
                pass
        return to_arrayrecord(model), metrics
