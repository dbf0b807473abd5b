"""Flower (1.42, Message API) integration: a client Mod and a FedAvg strategy carrying nnc bitstreams.

* :func:`nnc_mod` wraps a ClientApp's ``train`` function. On the way in it decodes the server's downlink
  (NNC streams as ``uint8`` :class:`flwr.app.Array` with ``stype="nnc/bitstream"``, or plain float32 arrays)
  into an ordinary ArrayRecord of the global model; on the way out it turns the trained model into an upload
  (one ``uint8`` Array with ``stype="nnc/update"``). The client's codec state (residual, model, TCA history)
  lives in a file per (run, node) on the SuperNode's disk, with its handle and SHA-256 in ``context.state``
  (:mod:`nnc.fl.flower.state_store`; ``state_dir="context"``: an ArrayRecord in ``context.state``). No pickle.
* :class:`NNCFedAvg` builds one message per selected node in ``configure_train`` (each node may need a
  different catch-up) and decodes uploads in ``aggregate_train`` with strict limits, dropping rejected ones.
  Bytes on the wire are in ``strategy.server.ledger``.

Only the ``arrays`` of train messages (and of evaluate messages that :class:`NNCFedAvg` sends through the codec)
are touched; query messages pass through. A deployment (SuperLink, SuperNodes, restarts, failures): docs/fl.md,
"Deploy".
"""
from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAvg

from ...errors import NNCError, UpdateStateError
from ..selection import Selection, seeded_fraction
from ..rounds import RoundPolicy
from ..transport import (ClientCodec, DownlinkConfig, DownlinkMessage, DuplicateUploadError, RejectedUpdateError,
                         ServerCodec, UplinkConfig, UplinkMessage, UploadBinding, bind_upload)
from .records import bytes_array as _bytes_array
from .records import _npy_view, from_arrayrecord, to_arrayrecord, view_arrayrecord
from .state_store import read_state, state_dir_for, state_path, write_state
from .robust import flower_combine

__all__ = ["nnc_mod", "NNCFedAvg", "STYPE_STREAM", "STYPE_UPDATE", "partition_query", "query_partitions",
           "wait_for_nodes"]

STYPE_STREAM = "nnc/bitstream"
STYPE_UPDATE = "nnc/update"
UPLINK_KEY = "nnc.uplink"         # ConfigRecord of a reply: the upload's binding (client, round, tag)
STYPE_UPDATE_F32 = "nnc/update-f32"     # float32 upload: tensors concatenated in model order
STYPE_DOWNLINK = "nnc/downlink"         # header + streams (+ float32 tensors), one Array per message
_STATE_ARRAYS = "nnc.codec.arrays"
_STATE_CONFIG = "nnc.codec.config"
_STATE_HANDLE = "nnc.codec.state"      # ConfigRecord: the node's state file (name, size, SHA-256, nonce)
#: reply key: the client could not apply the downlink (state missing / stale / corrupt); value = reason
META_RESYNC = "nnc.resync"


# --------------------------------------------------------------------------------------------------------
# downlink / uplink <-> records
# --------------------------------------------------------------------------------------------------------
_KINDS = ("broadcasts", "catchup", "full", "float32")
# header: version, kind, flags (1 reset uplink, 2 float32 tensors follow, 4 new pair), base round, round,
# number of streams; then one uint32 length per stream
_HEAD = struct.Struct("<BBBIIH")
_LEN = struct.Struct("<I")
_VERSION = 1


def _pack_tensors(arrays: Mapping[str, np.ndarray], names) -> bytes:
    """float32 tensors concatenated in ``names`` order: the receiver knows names and shapes (its model)."""
    return b"".join(np.asarray(arrays[k], dtype="<f4", order="C").tobytes() for k in names)


def _unpack_tensors(data, model: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    sizes = [int(np.asarray(v).size) for v in model.values()]
    if len(data) != 4 * sum(sizes):
        raise UpdateStateError(f"{len(data)} bytes of float32 tensors, the model needs {4 * sum(sizes)}")
    flat = np.frombuffer(data, dtype="<f4")
    out, pos = {}, 0
    for (k, v), n in zip(model.items(), sizes):
        out[k] = flat[pos:pos + n].reshape(np.shape(v)).astype(np.float32)
        pos += n
    return out


def _downlink_to_records(msg: DownlinkMessage, names, new_pair: bool = False) -> tuple[ArrayRecord, dict]:
    """One ``uint8`` Array per message: a 13-byte header, the stream lengths, the streams, then (float32
    downlink, or the initial model on first contact) the tensors in model order. No per-tensor records:
    names, shapes and dtypes are the receiver's own model's."""
    flags = (1 if msg.reset_uplink else 0) | (2 if msg.arrays is not None else 0) | (4 if new_pair else 0)
    parts = [_HEAD.pack(_VERSION, _KINDS.index(msg.kind), flags, int(msg.base_round), int(msg.round),
                        len(msg.streams))]
    parts += [_LEN.pack(len(x)) for x in msg.streams] + [bytes(x) for x in msg.streams]
    if msg.arrays is not None:
        parts.append(_pack_tensors(msg.arrays, names))
    return ArrayRecord({"nnc": _bytes_array(b"".join(parts), STYPE_DOWNLINK)}), {}


def _is_downlink(content: RecordDict, arrays_key: str) -> bool:
    rec = content.array_records.get(arrays_key)
    return rec is not None and list(rec.keys()) == ["nnc"] and rec["nnc"].stype == STYPE_DOWNLINK


def _new_pair(rec: ArrayRecord) -> bool:
    """The downlink's new-pair flag (the server holds nothing for this client: start afresh)."""
    a = rec["nnc"] if "nnc" in rec else None
    return a is not None and len(a.data) >= _HEAD.size and bool(_HEAD.unpack_from(a.data)[2] & 4)


def _downlink_from_records(rec: ArrayRecord, model: Mapping[str, np.ndarray]) -> DownlinkMessage:
    if list(rec.keys()) != ["nnc"] or rec["nnc"].stype != STYPE_DOWNLINK:
        raise UpdateStateError(f"expected one {STYPE_DOWNLINK!r} array, got {list(rec.keys())[:4]}")
    data = memoryview(bytes(rec["nnc"].data))
    if len(data) < _HEAD.size:
        raise UpdateStateError("downlink record shorter than its header")
    ver, kind, flags, base_round, rnd, n = _HEAD.unpack_from(data)
    if ver != _VERSION or kind >= len(_KINDS):
        raise UpdateStateError(f"downlink record version {ver} / kind {kind} not understood")
    pos = _HEAD.size + n * _LEN.size
    if pos > len(data):
        raise UpdateStateError("downlink record truncated in its stream table")
    streams = []
    for i in range(n):
        ln = _LEN.unpack_from(data, _HEAD.size + i * _LEN.size)[0]
        if pos + ln > len(data):
            raise UpdateStateError("downlink record truncated in a stream")
        streams.append(bytes(data[pos:pos + ln]))
        pos += ln
    arrays = _unpack_tensors(data[pos:], model) if flags & 2 else None
    if not flags & 2 and pos != len(data):
        raise UpdateStateError(f"{len(data) - pos} trailing bytes in the downlink record")
    return DownlinkMessage(_KINDS[kind], base_round, rnd, streams, arrays, bool(flags & 1))


def _uplink_to_record(up: UplinkMessage, names) -> ArrayRecord:
    if isinstance(up.payload, (bytes, bytearray)):
        return ArrayRecord({"nnc": _bytes_array(up.payload, STYPE_UPDATE)})
    return ArrayRecord({"nnc": _bytes_array(_pack_tensors(up.payload, names), STYPE_UPDATE_F32)})


def _uplink_from_record(rec: ArrayRecord, num_examples, model: Mapping[str, np.ndarray],
                        binding: ConfigRecord | None = None) -> UplinkMessage:
    keys = list(rec.keys())
    if len(keys) == 1 and rec[keys[0]].stype == STYPE_UPDATE:
        msg = UplinkMessage(bytes(rec[keys[0]].data), num_examples)
    elif len(keys) == 1 and rec[keys[0]].stype == STYPE_UPDATE_F32:
        msg = UplinkMessage(_unpack_tensors(bytes(rec[keys[0]].data), model), num_examples)
    else:
        msg = UplinkMessage(from_arrayrecord(rec), num_examples)
    return apply_binding(msg, binding)


def apply_binding(msg: UplinkMessage, binding: ConfigRecord | None) -> UplinkMessage:
    """Copy the binding a reply carries (:data:`UPLINK_KEY`: client, round, HMAC tag) into the upload ``msg``."""
    if binding is not None:
        msg.client = str(binding["nnc.client"]) if "nnc.client" in binding else None
        msg.round = int(binding["nnc.round"]) if "nnc.round" in binding else None
        msg.tag = bytes(binding["nnc.tag"]) if "nnc.tag" in binding else None
    return msg


def reply_binding(content: RecordDict) -> ConfigRecord | None:
    """The binding record of a reply (``None`` when it carries none)."""
    return content[UPLINK_KEY] if UPLINK_KEY in content.config_records else None


def binding_record(up: UplinkMessage) -> ConfigRecord:
    """The binding of ``up`` as the ConfigRecord a reply carries under :data:`UPLINK_KEY`."""
    rec = {"nnc.client": str(up.client), "nnc.round": int(up.round)}
    if up.tag is not None:
        rec["nnc.tag"] = bytes(up.tag)
    return ConfigRecord(rec)


def bind_reply(reply: Message, payload: bytes, cfg: dict, ctx: Context,
               key_fn: Callable[[Context], bytes] | None) -> None:
    """Bind the upload ``payload`` of ``reply`` to this client (the key the server sent as ``nnc.client``, else
    the node id) and to the round it answers (``server-round`` of the instruction ``cfg``; nothing without it),
    with an HMAC tag when ``key_fn`` gives this client's secret: the record goes under :data:`UPLINK_KEY`."""
    if cfg.get("server-round") is not None:
        bound = bind_upload(UplinkMessage(payload), str(cfg.get("nnc.client", ctx.node_id)), int(cfg["server-round"]),
                            None if key_fn is None else key_fn(ctx))
        reply.content[UPLINK_KEY] = binding_record(bound)


def check_binding(binding: UploadBinding, key, payload: bytes, content: RecordDict, server_round: int,
                  require: bool, rejected: dict, dropped: dict) -> bytes | None:
    """The transport's checks (identity, round, replay, tag) of the upload ``payload`` that a reply with
    ``content`` carries from client ``key``, before it is decoded. Returns the digest to
    :meth:`UploadBinding.accept` once the upload is used, or None when it is not to be used: refused (its
    category in ``rejected[key]``, the reason in ``dropped[key]``) or a second delivery of the accepted upload
    (counted once: nothing recorded)."""
    def refuse(category, reason, reset):
        rejected[key] = category
        raise RejectedUpdateError(key, reason)

    try:
        return binding.check(key, apply_binding(UplinkMessage(payload), reply_binding(content)), server_round,
                             require_binding=require, refuse=refuse)
    except DuplicateUploadError:
        return None
    except RejectedUpdateError as e:
        dropped[key] = e.reason
        return None


def record_wire_bytes(obj) -> int:
    """Serialised size of a Flower record (or message) as it is transferred: the object and all objects
    below it (Arrays, ArrayChunks), each with Flower's object header. Counted by NNCFedAvg per message."""
    total = len(obj.deflate())
    for child in (obj.children or {}).values():
        total += record_wire_bytes(child)
    return total


# --------------------------------------------------------------------------------------------------------
# client side
# --------------------------------------------------------------------------------------------------------
def _has_state(ctx: Context) -> bool:
    return _STATE_HANDLE in ctx.state or (_STATE_ARRAYS in ctx.state and _STATE_CONFIG in ctx.state)


def _state_file(ctx: Context, state_dir) -> Path:
    return state_path(state_dir_for(ctx.node_config, state_dir), ctx.run_id, ctx.node_id)


def _load_codec(ctx: Context, base_fn, uplink, downlink, state_dir=None) -> ClientCodec:
    """The client codec as the last round left it: from the node's state file (its handle and checksum in
    ``context.state``) or, as ``state_dir="context"`` keeps it, from ``context.state`` itself."""
    codec = ClientCodec(base_fn(), uplink, downlink)
    if _STATE_HANDLE in ctx.state:
        handle = dict(ctx.state[_STATE_HANDLE])
        arrays, scalars = read_state(_state_file(ctx, None if state_dir == "context" else state_dir), handle)
        codec.load_state_dict(arrays, scalars)
    elif _STATE_ARRAYS in ctx.state and _STATE_CONFIG in ctx.state:
        arrays = from_arrayrecord(ctx.state[_STATE_ARRAYS])
        scalars = dict(ctx.state[_STATE_CONFIG])
        codec.load_state_dict(arrays, scalars)
    return codec


def _save_codec(ctx: Context, codec: ClientCodec, state_dir=None) -> None:
    """Keep the codec state for the next round: in the node's state file (default; ``context.state`` gets
    only the handle), or with ``state_dir="context"`` in ``context.state`` (small models, simulations)."""
    arrays, scalars = codec.state_dict()
    if state_dir == "context":
        ctx.state[_STATE_ARRAYS] = to_arrayrecord(arrays)
        ctx.state[_STATE_CONFIG] = ConfigRecord(scalars)
        if _STATE_HANDLE in ctx.state:
            del ctx.state[_STATE_HANDLE]
        return
    handle = write_state(_state_file(ctx, state_dir), arrays, scalars)
    del arrays
    ctx.state[_STATE_HANDLE] = ConfigRecord(handle)
    for k in (_STATE_ARRAYS, _STATE_CONFIG):
        if k in ctx.state:
            del ctx.state[k]


def nnc_mod(base_fn: Callable[[], Mapping[str, np.ndarray]], uplink: UplinkConfig | None = None,
            downlink: DownlinkConfig | None = None, arrays_key: str = "arrays", config_key: str = "config",
            weighted_by_key: str = "num-examples", key_fn: Callable[[Context], bytes] | None = None,
            state_dir: str | os.PathLike | None = None):
    """A client Mod that puts the nnc transport codec around a ClientApp's train function.

    Args:
        base_fn: returns the initial global model ``{name: array}`` (the same on every node and the server).
        uplink, downlink: transport settings; must equal the strategy's.
        key_fn: ``context -> secret`` shared with the server (``NNCFedAvg(keys=...)``): each upload then
            carries an HMAC over its client key, round and payload.
        state_dir: where the node keeps its codec state between rounds: ``None`` (default) a file per
            (run, node) in ``node_config["nnc-state-dir"]``, ``$NNC_FL_STATE_DIR``, ``$FLWR_HOME/nnc-state`` or
            the temp dir, with only its handle and SHA-256 in ``context.state``
            (:mod:`nnc.fl.flower.state_store`); a path: that directory; ``"context"``: all of it in
            ``context.state`` (one protobuf; fine for small models and simulations). A missing or corrupt
            state file makes the client ask for a resync (catch-up), it never trains on a wrong state.
    """
    uplink = uplink or UplinkConfig()
    downlink = downlink or DownlinkConfig()

    def mod(msg: Message, ctx: Context, call_next) -> Message:
        kind = msg.metadata.message_type
        if kind not in (MessageType.TRAIN, MessageType.EVALUATE) or (
                kind == MessageType.EVALUATE and not _is_downlink(msg.content, arrays_key)):
            return call_next(msg, ctx)
        try:
            new_pair = _new_pair(msg.content[arrays_key])
            if new_pair:    # the server starts this pair afresh: so does the client, whatever it held
                codec = ClientCodec(base_fn(), uplink, downlink)
            elif not _has_state(ctx):
                raise UpdateStateError("this client holds no codec state (restarted, or state lost)")
            else:
                codec = _load_codec(ctx, base_fn, uplink, downlink, state_dir)
            cfg = msg.content[config_key]
            codec.client = str(cfg.get("nnc.client", ctx.node_id))   # the key the server knows this node by
            codec.key = None if key_fn is None else key_fn(ctx)
            model = codec.receive(_downlink_from_records(msg.content[arrays_key], codec.base))
        except (NNCError, KeyError, ValueError, TypeError) as e:
            # missing, stale or unreadable state: nothing was trained or sent; ask the server to start over
            return Message(RecordDict({config_key: ConfigRecord({META_RESYNC: f"{type(e).__name__}: {e}"[:500]})}),
                           reply_to=msg)
        downlink_rec = msg.content[arrays_key]
        msg.content[arrays_key] = to_arrayrecord(model)
        del model                            # the record holds the model now: one copy, not two
        if kind == MessageType.EVALUATE:     # the global model reached the client through the codec
            _save_codec(ctx, codec, state_dir)
            try:
                return call_next(msg, ctx)
            finally:
                msg.content[arrays_key] = downlink_rec
        try:
            try:
                reply = call_next(msg, ctx)
            finally:                         # the float model record is the user's business no more
                msg.content[arrays_key] = downlink_rec
            if reply.has_error():
                _save_codec(ctx, codec, state_dir)
                return reply
            trained = view_arrayrecord(reply.content[arrays_key])    # read-only views, no copy
            n = 1
            for rk in reply.content.metric_records.keys():
                if weighted_by_key in reply.content[rk]:
                    n = int(reply.content[rk][weighted_by_key])
            reply.content[arrays_key] = ArrayRecord()     # the views keep the bytes until each is used
            up = codec.encode(trained, num_examples=n, release=True)
        except BaseException:
            # the user's train (or encode, refusing e.g. a NaN model) failed after the downlink was applied:
            # keep that, so the client stays in step with the server, and nothing is re-sent (an encode that
            # fails past its input checks leaves the update in the residual, as if nothing of it was sent)
            _save_codec(ctx, codec, state_dir)
            raise
        del trained
        reply.content[arrays_key] = _uplink_to_record(up, list(codec.base))
        reply.content[UPLINK_KEY] = binding_record(up)
        _save_codec(ctx, codec, state_dir)
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
        policy: the round policy of the server (:class:`nnc.fl.RoundPolicy`: per-client norm bound, rule);
            uploads must carry their binding (client key, round) by default.
        aggregator: a Flower strategy whose ``aggregate_train`` aggregates the decoded, validated and
            norm-bounded updates (``FedMedian()``, ``FedTrimmedAvg(beta=0.2)``, ``Krum(num_malicious_nodes=1)``,
            ``MultiKrum(...)``, ``Bulyan(...)``); ``None``: the policy's rule (weighted mean).
        keys: ``{client key: secret}`` shared with the clients' ``nnc_mod(key_fn=...)``: uploads must carry a
            matching HMAC tag, so a relabelled client or round is refused.
        other keyword arguments go to :class:`flwr.serverapp.strategy.FedAvg`.

    After each round: ``dropped[round]`` (client key -> reason; a reply is charged to the message it answers,
    so the SuperLink's own error replies, ``src_node_id = 1``, fall on the right client), ``duplicates[round]``
    (replies delivered more than once, skipped), ``server.ledger`` (payload ``up``/``down`` and the record
    framing ``up_wire``/``down_wire`` per client). Nodes that leave are released; with ``by_partition`` a
    restarted node takes its partition over once the old node is gone. With ``fraction_evaluate > 0`` the
    evaluation model also travels through the codec.
    """

    def __init__(self, base: Mapping[str, np.ndarray], uplink: UplinkConfig | None = None,
                 downlink: DownlinkConfig | None = None, *, by_partition: bool = False, select_seed: int = 0,
                 select: Selection | None = None, decoder_config=None, policy: RoundPolicy | None = None,
                 aggregator=None, keys: Mapping | None = None, **kw):
        kw.setdefault("fraction_evaluate", 0.0)
        super().__init__(**kw)
        self.server = ServerCodec(base, uplink, downlink, decoder_config,
                                  policy or RoundPolicy(require_binding=True),
                                  keys={str(k): v for k, v in keys.items()} if keys else None)
        self.aggregator = aggregator
        self.by_partition = by_partition
        self.select_seed = select_seed
        self.select = select
        self._node_of: dict[int, int] | None = None      # partition id -> node id
        self._key_of_node: dict[int, int] = {}
        self.contested: dict[int, list[int]] = {}         # partition id -> nodes whose claim was refused
        self._partitions: set[int] = set()                 # every partition id seen (the selection's keys)
        self._claims: dict[int, int] = {}                  # node id -> partition it reported
        self._sent: dict[str, tuple[int, object]] = {}     # message id -> (node id, client key), this round
        self._unserved: dict = {}                          # selected keys with no live node, this round
        self.dropped: dict[int, dict] = {}
        self.duplicates: dict[int, int] = {}               # round -> replies delivered more than once

    def start(self, grid, initial_arrays: ArrayRecord, *args, **kw):
        """Flower's ``start``; the codec's initial model becomes read-only views of ``initial_arrays`` where
        they hold the same values (Flower keeps that record for the whole run: one float32 copy of the
        initial model, not two, once the caller drops its own)."""
        self.adopt_initial(initial_arrays)
        return super().start(grid, initial_arrays, *args, **kw)

    def adopt_initial(self, rec: ArrayRecord) -> int:
        """Replace each tensor of the codec's initial model by a view of ``rec``'s bytes when they are equal
        bit for bit (same shape, float32); returns how many were adopted."""
        base, n = self.server.base, 0
        for k in list(base):
            if k not in rec or rec[k].stype != "numpy.ndarray":
                continue
            v = _npy_view(rec[k])
            b = base[k]
            if v is b or v.dtype != np.float32 or v.shape != b.shape or v.base is None:
                continue
            if np.array_equal(v.reshape(-1).view(np.uint32), np.ascontiguousarray(b).reshape(-1).view(np.uint32)):
                base[k] = v
                n += 1
        return n

    def _release(self, key) -> None:
        """Forget the server's side of one client pair (its next message starts a new pair)."""
        self.server.release(key)

    def _follow_nodes(self, grid) -> None:
        """Keep ``partition -> node`` in step with the federation: nodes that left are released, nodes never
        seen are asked their partition; a new node takes a partition over only when the node that held it is
        gone (a restart), never from a live one."""
        live = set(grid.get_node_ids())
        if self._node_of is None:
            live = set(wait_for_nodes(grid, self.min_available_nodes, poll=0.5, timeout=120.0))
            self._node_of = {}
        for n in [n for n in self._key_of_node if n not in live]:          # gone: release its state
            p = self._key_of_node.pop(n)
            if self._node_of.get(p) == n:
                del self._node_of[p]
                self._release(p)
        for n in [n for n in self._claims if n not in live]:
            del self._claims[n]
        unknown = sorted(live - set(self._claims))
        if unknown:
            self._claims.update(query_partitions(grid, unknown))
        for n, p in sorted(self._claims.items()):
            if n in self._key_of_node:
                continue                            # mapped already
            if p in self._node_of:                  # held by a live node: a claim never displaces it
                if n not in self.contested.get(p, []):
                    self.contested.setdefault(p, []).append(n)
                continue
            self._node_of[p] = n
            self._key_of_node[n] = p
            self._partitions.add(p)
            self._release(p)                        # a new node holds nothing: start the pair afresh

    def _discover(self, grid) -> None:
        self._follow_nodes(grid)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
                        ) -> Iterable[Message]:
        self._sent, self._unserved = {}, {}
        if self.by_partition:
            self._follow_nodes(grid)
            select = self.select or seeded_fraction(self.fraction_train, self.select_seed)
            chosen = select(server_round, sorted(self._partitions))
            self._unserved = {p: "no live node holds this partition" for p in chosen if p not in self._node_of}
            node_ids = [self._node_of[p] for p in chosen if p in self._node_of]
        else:
            live = set(grid.get_node_ids())
            for key in [k for k in set(self.server.synced) | set(self.server.decoders) if k not in live]:
                self._release(key)                  # node ids that left the federation
            node_ids = [m.metadata.dst_node_id for m in super().configure_train(server_round, arrays, config, grid)]
        messages = []
        for node in node_ids:
            key = self._key_of_node.get(node, node)
            new_pair = key not in self.server.synced
            rec, meta = _downlink_to_records(self.server.downlink_for(key), list(self.server.base), new_pair)
            led = self.server.ledger[-1]
            led.down_wire[key] = led.down_wire.get(key, 0) + record_wire_bytes(rec)
            cfg = ConfigRecord({**dict(config), "server-round": server_round, **meta, "nnc.client": str(key)})
            msg = Message(RecordDict({self.arrayrecord_key: rec, self.configrecord_key: cfg}),
                          message_type=MessageType.TRAIN, dst_node_id=node)
            self._sent[msg.object_id] = (node, key)    # the id Flower gives it; replies name it in reply_to
            messages.append(msg)
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
                           ) -> Iterable[Message]:
        """Federated evaluation through the codec: each sampled node gets the downlink that brings it to the
        current model (counted in the ledger like any downlink, in the record of the round that follows), not
        a float32 copy outside it."""
        self._sent_eval = {}
        if self.fraction_evaluate == 0.0:
            return []
        out = []
        for m in super().configure_evaluate(server_round, arrays, config, grid):
            node = m.metadata.dst_node_id
            if self.by_partition and node not in self._key_of_node:
                continue
            key = self._key_of_node.get(node, node)
            new_pair = key not in self.server.synced
            rec, _ = _downlink_to_records(self.server.downlink_for(key), list(self.server.base), new_pair)
            led = self.server.ledger[-1]
            led.down_wire[key] = led.down_wire.get(key, 0) + record_wire_bytes(rec)
            msg = Message(RecordDict({self.arrayrecord_key: rec,
                                      self.configrecord_key: m.content[self.configrecord_key]}),
                          message_type=MessageType.EVALUATE, dst_node_id=node)
            self._sent_eval[msg.object_id] = (node, key)
            out.append(msg)
        return out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        good, answered = [], set()
        sent, self._sent = self._sent, getattr(self, "_sent_eval", {})
        try:
            for msg in replies:
                key = self._key_of_reply(msg, answered)
                if key is None:
                    continue
                if msg.has_error():
                    if msg.metadata.src_node_id == SUPERLINK_NODE_ID:
                        self._release(key)
                    continue
                if META_RESYNC in msg.content.config_records.get(self.configrecord_key, {}):
                    self._release(key)
                    continue
                good.append(msg)
        finally:
            self._sent = sent
        return super().aggregate_evaluate(server_round, good)

    def _key_of_reply(self, msg: Message, answered: set):
        """The client a reply belongs to, from the message it answers (an error the SuperLink generates for
        a node carries ``src_node_id = 1``); ``None`` for a second copy of an answered message."""
        mid = msg.metadata.reply_to_message_id
        if mid:                         # replies built outside the engine may name no message
            if mid in answered:
                return None
            answered.add(mid)
        if mid in self._sent:
            return self._sent[mid][1]
        src = msg.metadata.src_node_id
        if src == SUPERLINK_NODE_ID and msg.has_error():   # generated by the SuperLink for a message not ours
            return None
        return self._key_of_node.get(src, src)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        deltas, dropped, contents, answered, dup = {}, dict(self._unserved), [], set(), 0
        for msg in replies:
            key = self._key_of_reply(msg, answered)
            if key is None or key in deltas or key in dropped:
                dup += 1                            # delivered twice: neither applied twice nor a reset
                continue
            if msg.has_error():
                dropped[key] = f"client error: {msg.error.reason}"
                if msg.metadata.src_node_id == SUPERLINK_NODE_ID:
                    # the SuperLink answered for the node (gone, or the message expired): the client may or
                    # may not have applied the downlink, so the pair starts afresh
                    self._release(key)
                continue
            if META_RESYNC in msg.content.config_records.get(self.configrecord_key, {}):
                dropped[key] = f"client resync: {msg.content[self.configrecord_key][META_RESYNC]}"
                self._release(key)
                continue
            try:
                n = 1
                for rk in msg.content.metric_records.keys():
                    if self.weighted_by_key in msg.content[rk]:
                        n = int(msg.content[rk][self.weighted_by_key])
                rec = msg.content[self.arrayrecord_key]
                self.server.ledger[-1].up_wire[key] = record_wire_bytes(rec)
                up = _uplink_from_record(rec, n, self.server.base, reply_binding(msg.content))
            except Exception as e:  # noqa: BLE001 - a malformed reply is dropped like a corrupt stream
                dropped[key] = f"{type(e).__name__}: {e}"
                self.server.pending_reset.add(key)
                continue
            try:
                deltas[key] = (self.server.receive(key, up), n)
                contents.append(msg.content)
            except DuplicateUploadError:      # a second delivery of an accepted upload: applied once
                dup += 1
                continue
            except RejectedUpdateError as e:
                dropped[key] = e.reason
        answered_keys = set(deltas) | set(dropped)
        for node, key in self._sent.values():       # no reply at all within the timeout
            if key not in answered_keys:
                dropped[key] = "no reply"
                self._release(key)
        self._sent = {}
        self.dropped[server_round] = dropped
        self.duplicates[server_round] = dup
        combine = None if self.aggregator is None else flower_combine(self.aggregator, server_round)
        model = self.server.aggregate(deltas, combine, copy=False)    # made tensor by tensor into the record
        for key in deltas:
            if self.server.ledger[-1].rejected.get(key) in ("aggregate", "norm-bound"):
                dropped[key] = self.server.ledger[-1].dropped[key]
        deltas.clear()                               # the updates are aggregated: free them now
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
