"""Compressed federated distillation (CFD) on Flower 1.42 (Message API), with nnc as the transport.

The protocol of :func:`nnc.fl.sim.simulate_fd`, as a server strategy and a client Mod that know nothing
about the model being trained:

* :class:`CFDFedAvg` (a :class:`flwr.serverapp.strategy.FedAvg` subclass, started with ``strategy.start``).
  Each round it picks clients with the ``select`` policy over partition ids (asked once with a ``query``
  message), sends each one the last round's aggregated soft labels as one NNC bitstream from that link's own
  :class:`~nnc.fl.distill.SoftLabelEncoder` (delta-coded against what that client holds; nothing in round
  1), decodes the uploaded soft-label bitstreams with one :class:`~nnc.fl.distill.SoftLabelDecoder` per
  client, averages them (in partition order) and keeps the average for the next downlink. The server's own
  model is an argument (``model``) together with how to distil it (``distill``) and how to score it
  (``evaluate``); any model works (a numpy MLP, a PyTorch module's state).
* :func:`cfd_mod`: the client Mod. It decodes the downlink into plain float32 soft labels for the ClientApp's
  ``train`` function (``arrays["soft-labels"]``, absent in round 1), and codes the soft labels the train
  function replies with (``arrays["soft-labels"]``: probabilities on the public set) through the uplink
  :class:`~nnc.fl.distill.SoftLabelEncoder`. Both link ends live in ``context.state`` (ArrayRecord +
  ConfigRecord: no pickle, no files).

Every message is one ``uint8`` :class:`flwr.app.Array` (``stype="nnc/soft-labels"``) holding the bitstream
(or the raw float32 bytes for plain FD); bytes are ``len()`` of those payloads, in ``strategy.result``
(an :class:`~nnc.fl.distill.FDResult`) and in the round metrics ``nnc.up-bytes`` / ``nnc.down-bytes``.

Robustness: an upload that does not decode is dropped and the client is told to restart its uplink with a
full message; a client that does not answer gets a full downlink next time (its decoder may not have seen
the last delta).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord
from flwr.app import RecordDict
from flwr.serverapp.strategy import FedAvg

from ..distill import STYPE_SOFT_LABELS, FDResult, LabelCodecConfig, SoftLabelDecoder, SoftLabelEncoder
from ..selection import Selection, everyone
from ..transport import UploadBinding
from .fedavg import bind_reply, check_binding, query_partitions, wait_for_nodes
from .records import bytes_array, from_arrayrecord, to_arrayrecord

__all__ = ["CFDFedAvg", "cfd_mod", "LABELS_KEY", "TARGET_KEY"]

LABELS_KEY = "nnc.soft-labels"      # the coded soft labels on the wire
TARGET_KEY = "soft-labels"          # plain float32 soft labels between the Mod and the train function
_STATE_LINKS = "cfd.links"
_STATE_CONFIG = "cfd.links.config"


def _labels_record(data: bytes | None) -> ArrayRecord:
    if data is None:
        return ArrayRecord()
    return ArrayRecord({LABELS_KEY: bytes_array(data, STYPE_SOFT_LABELS)})


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
def cfd_mod(shape: tuple[int, int], *, up: LabelCodecConfig, down: LabelCodecConfig | None = None,
            arrays_key: str = "arrays", config_key: str = "config",
            key_fn: Callable[[Context], bytes] | None = None):
    """A client Mod that puts the CFD soft-label links around a ClientApp's train function.

    Args:
        shape: ``(public rows, classes)`` of the soft labels.
        up, down: the codecs of client -> server / server -> client soft labels (must equal the strategy's).
        key_fn: ``context -> secret`` shared with the server (``CFDFedAvg(keys=...)``): each upload then carries
            an HMAC over its client key, round and payload.

    Every upload is bound to this client (the key the server sent as ``nnc.client``) and to the round it
    answers (``server-round``), as :func:`nnc.fl.flower.nnc_mod` binds its uploads (:data:`UPLINK_KEY`).

    The train function receives ``msg.content[arrays_key][TARGET_KEY]`` (float32 aggregated soft labels to
    distil towards; absent in the first round) and replies with its own soft labels on the public set under
    the same key. The Mod adds the metric ``cfd.changed-rows`` (fraction of rows the upload carried).
    """
    down = down or up
    shape = (int(shape[0]), int(shape[1]))

    def mod(msg: Message, ctx: Context, call_next) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctx)
        cfg = msg.content[config_key]
        if str(cfg.get("cfd.up", _codec_tag(up))) != _codec_tag(up) or \
                str(cfg.get("cfd.down", _codec_tag(down))) != _codec_tag(down):
            raise ValueError("the strategy's soft-label codec differs from this client's")
        up_enc, down_dec = SoftLabelEncoder(up), SoftLabelDecoder(down, shape)
        if _STATE_LINKS in ctx.state:
            links = from_arrayrecord(ctx.state[_STATE_LINKS])
            up_enc.reference = links.get("up.reference")
            down_dec.reference = links.get("down.reference")
            up_enc.messages = int(ctx.state[_STATE_CONFIG]["up.messages"])
        if bool(cfg.get("cfd.reset-up", False)):
            up_enc.reference = None
        payload = _labels_payload(msg.content[arrays_key])
        target = None if payload is None else down_dec.decode(payload)
        msg.content[arrays_key] = ArrayRecord() if target is None else ArrayRecord({TARGET_KEY: Array(target)})
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        probs = reply.content[arrays_key][TARGET_KEY].numpy()
        before = None if up_enc.reference is None else up_enc.reference.copy()
        out = up_enc.encode(probs)
        changed = 1.0 if before is None else float((before != up_enc.reference).any(1).mean())
        reply.content[arrays_key] = _labels_record(out)
        bind_reply(reply, out, cfg, ctx, key_fn)
        names = list(reply.content.metric_records.keys())
        if names:
            reply.content[names[0]]["cfd.changed-rows"] = changed
        else:
            reply.content["metrics"] = MetricRecord({"cfd.changed-rows": changed})
        links = {}
        if up_enc.reference is not None:
            links["up.reference"] = up_enc.reference
        if down_dec.reference is not None:
            links["down.reference"] = down_dec.reference
        ctx.state[_STATE_LINKS] = to_arrayrecord(links)
        ctx.state[_STATE_CONFIG] = ConfigRecord({"up.messages": up_enc.messages})
        return reply

    return mod


# --------------------------------------------------------------------------------------------------------
# server side
# --------------------------------------------------------------------------------------------------------
class CFDFedAvg(FedAvg):
    """The CFD server as a Flower strategy.

    Args:
        shape: ``(public rows, classes)`` of the soft labels (the public set is the clients' and, through
            ``distill``, the server's business).
        up, down: codecs of client -> server / server -> client soft labels (``down`` defaults to ``up``).
        model: the server's model ``{name: array}`` (``None``: the server only relays soft labels).
        distill: ``(model, soft_labels, server_round) -> model``: trains the server model towards the round's
            aggregated soft labels (for evaluation; costs no communication).
        evaluate: ``model -> accuracy`` (then ``result.accuracy`` holds it per round).
        select: ``(server_round, sorted partition ids) -> chosen ids`` (default: every client; see
            :mod:`nnc.fl.selection`).
        keys: partition id -> secret shared with that client (its :func:`cfd_mod` ``key_fn``): its uploads must
            then carry the matching HMAC tag.
        require_binding: refuse uploads that carry no client identity and round (default: :func:`cfd_mod`
            always binds its uploads).
        other keyword arguments go to :class:`flwr.serverapp.strategy.FedAvg` (set ``min_available_nodes``
        to the number of clients so that all are discovered).

    ``self.result`` is an :class:`FDResult` (``client_accuracy`` is the mean of every client's last reported
    ``cfd.accuracy`` metric, if the clients report one). ``self.dropped`` maps round ->
    ``{partition: reason}``.

    Uploads are bound to their client and round with the transport's :class:`~nnc.fl.transport.UploadBinding`
    (as :class:`~nnc.fl.flower.NNCFedAvg`): a replayed upload, one from another round or one naming another
    client (or, with ``keys``, without that client's tag) is refused before it is decoded, counted in
    ``self.rejected`` (round -> ``{partition: category}``) and ``dropped``, and resets nothing (the honest
    client's link stays as it was); a second delivery of an accepted upload is applied once.
    """

    def __init__(self, shape: tuple[int, int], *, up: LabelCodecConfig, down: LabelCodecConfig | None = None,
                 model: Mapping[str, np.ndarray] | None = None,
                 distill: Callable[[dict, np.ndarray, int], dict] | None = None,
                 evaluate: Callable[[dict], float] | None = None, select: Selection | None = None,
                 keys: Mapping | None = None, require_binding: bool = True, **kw):
        kw.setdefault("fraction_evaluate", 0.0)
        super().__init__(**kw)
        self.binding = UploadBinding(keys)
        self.require_binding = require_binding
        self.rejected: dict[int, dict] = {}
        self.up, self.down = up, down or up
        self.shape = (int(shape[0]), int(shape[1]))
        self.model = None if model is None else {k: np.asarray(v) for k, v in model.items()}
        self.distill = distill
        self.evaluate_model = evaluate
        self.select = select or everyone
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

    def _score(self) -> float:
        if self.evaluate_model is None or self.model is None:
            return float("nan")
        return float(self.evaluate_model(self.model))

    # ---- discovery
    def _discover(self, grid) -> None:
        nodes = wait_for_nodes(grid, self.min_available_nodes, poll=0.2)
        self._node_of = {p: n for n, p in query_partitions(grid, nodes).items()}
        self._key_of_node = {n: p for p, n in self._node_of.items()}
        for p in self._node_of:
            self._up_dec[p] = SoftLabelDecoder(self.up, self.shape)
            self._down_enc[p] = SoftLabelEncoder(self.down)
        acc0 = self._score()
        self._client_acc = {p: acc0 for p in self._node_of}
        self.result.accuracy.append(acc0)
        self.result.client_accuracy.append(acc0)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
                        ) -> Iterable[Message]:
        if self._node_of is None:
            self._t0 = time.perf_counter()
            self._discover(grid)
        chosen = self.select(server_round, sorted(self._node_of))
        msgs, down = [], 0
        self._sent = {}
        for p in chosen:
            data = None
            if self.global_labels is not None:
                data = self._down_enc[p].encode(self.global_labels)
                down += len(data)
            self._sent[p] = 0 if data is None else len(data)
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "cfd.up": _codec_tag(self.up),
                                "cfd.down": _codec_tag(self.down), "cfd.reset-up": p in self._reset_up,
                                "nnc.client": str(p)})
            self._reset_up.discard(p)
            msgs.append(Message(RecordDict({self.arrayrecord_key: _labels_record(data),
                                            self.configrecord_key: cfg}),
                                message_type=MessageType.TRAIN, dst_node_id=self._node_of[p]))
        self.result.down_bytes.append(down)
        return msgs

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        got, dropped, up, changed, rejected = {}, {}, 0, {}, {}
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
                # before decoding: a refused upload changes nothing of the client's link
                digest = check_binding(self.binding, p, payload, msg.content, server_round, self.require_binding,
                                       rejected, dropped)
                if digest is None:
                    continue
                labels = self._up_dec[p].decode(payload)
                if labels.shape != self.shape or not np.isfinite(labels).all():
                    raise ValueError("soft labels do not fit the public set")
                m = msg.content["metrics"] if "metrics" in msg.content.metric_records else MetricRecord()
                if "cfd.accuracy" in m:
                    self._client_acc[p] = float(m["cfd.accuracy"])
                if "cfd.changed-rows" in m:
                    changed[p] = float(m["cfd.changed-rows"])
                got[p] = labels
                self.binding.accept(p, server_round, digest)
            except Exception as e:  # noqa: BLE001 - a malformed upload is dropped; the link restarts
                dropped[p] = f"{type(e).__name__}: {e}"
                self._up_dec[p] = SoftLabelDecoder(self.up, self.shape)
                self._reset_up.add(p)
        for p in self._sent:
            if p not in got and p not in dropped:
                dropped[p] = "no reply"
            if p in dropped and p not in rejected:     # its decoder may have missed the last delta: send the
                self._down_enc[p].reference = None        # next one in full (a refused binding: it answered)
        self.dropped[server_round] = dropped
        self.rejected[server_round] = rejected
        if got:
            self.global_labels = np.mean([got[p] for p in sorted(got)], axis=0).astype(np.float32)
            if self.distill is not None and self.model is not None:
                self.model = self.distill(self.model, self.global_labels, server_round)
        res = self.result
        res.up_bytes.append(up)
        res.changed_rows_up.append(float(np.mean([changed[p] for p in sorted(changed)])) if changed else 0.0)
        res.accuracy.append(self._score())
        res.client_accuracy.append(float(np.mean([self._client_acc[p] for p in sorted(self._client_acc)])))
        res.seconds = time.perf_counter() - self._t0
        metrics = MetricRecord({"nnc.up-bytes": up, "nnc.down-bytes": res.down_bytes[-1],
                                "nnc.dropped": len(dropped), "nnc.rejected": len(rejected),
                                "cfd.accuracy": res.accuracy[-1],
                                "cfd.client-accuracy": res.client_accuracy[-1]})
        return (ArrayRecord() if self.model is None else to_arrayrecord(self.model)), metrics
