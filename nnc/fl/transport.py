"""FL transport codec: what a client sends up, what the server sends down, and the state each side keeps.

Design (see docs/fl.md for the reasoning):

* **Uplink** (client -> server) is a per-pair stateful stream. Every client keeps one
  :class:`~nnc.UpdateEncoder` (TCA/HDSP on if configured) and the server keeps one
  :class:`~nnc.UpdateDecoder` per client, so both see every upload of that pair in order. The client adds
  its error-feedback residual to the local update, sparsifies (top-k / threshold, optionally ternary),
  quantises at a QP chosen by :class:`UplinkConfig` and keeps ``residual = input - sent``.
* A rejected upload (corrupt, truncated, wrong names/shapes, limits exceeded) raises
  :class:`RejectedUpdateError`; the server drops it from the round, replaces that client's decoder by a
  fresh one and sets ``reset_uplink`` in the next message to that client, which then restarts its encoder
  state and puts the lost update back into its residual. Nothing else on the server changes.
* **Downlink** (server -> clients) does *not* use TCA/HDSP: with partial participation a client misses
  broadcasts, and a stateless stream can be applied by any client that holds the right base. The server's
  model is kept on a fixed per-tensor quantisation lattice, ``model = base + step * L`` with integer levels
  ``L`` that only change by decoded broadcast levels, so every client holding the same ``L`` holds a
  bit-identical model. A client that missed rounds gets, whichever is smallest, the cached broadcasts it
  missed, one combined catch-up stream coding ``L_now - L_then`` (update caching; exact, because the
  levels are integers), or the whole ``L_now`` from the initial model.
* Every byte counted in :attr:`ServerCodec.ledger` is ``len()`` of a bitstream (or ``nbytes`` of a raw
  float32 array) that was actually handed to the transport.
"""
from __future__ import annotations

import fnmatch
import hashlib
import hmac
import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import numpy as np

from ..codec import Decoder
from ..config import DecoderConfig, EncoderConfig
from ..errors import NNCError, UpdateStateError
from ..incremental import UpdateDecoder, UpdateEncoder, UpdateState, in_model_shape, in_model_shapes
from ..coding.quant import qp_for_step, reconstruct_uniform
from . import sparsify as sp
from .codecs import limits_for
from .rounds import RoundPolicy, bound_updates, combine_updates, update_norm

__all__ = ["UplinkConfig", "DownlinkConfig", "DownlinkMessage", "UplinkMessage", "ClientCodec", "ServerCodec",
           "RejectedUpdateError", "DuplicateUploadError", "RoundRecord", "validate_tensors", "RUNNING_STATISTICS",
           "RoundPolicy", "upload_tag", "bind_upload", "UploadBinding"]

Tensors = Mapping[str, np.ndarray]

#: fnmatch patterns of running statistics (PyTorch BatchNorm buffers). Clients do not train them by gradient
#: steps from the global model: their next delta measures again whatever gap was not sent, so error feedback
#: would count it twice (a running variance then overshoots below zero) and top-k would leave them stale.
RUNNING_STATISTICS = ("*running_mean", "*running_var", "*num_batches_tracked")


def _statistics(names: Iterable[str], patterns) -> set:
    return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


class RejectedUpdateError(NNCError, ValueError):
    """A client's upload could not be decoded or does not fit the global model; it was dropped."""

    def __init__(self, client, reason: str):
        super().__init__(f"update from client {client!r} rejected: {reason}")
        self.client = client
        self.reason = reason


def upload_tag(key: bytes, client, round_: int | None, digest: bytes) -> bytes:
    """HMAC-SHA256 binding an upload to its client, round and payload (see ``ServerCodec(keys=...)``)."""
    return hmac.new(bytes(key), f"nnc-fl-upload|{client}|{round_}|".encode() + digest, hashlib.sha256).digest()


def bind_upload(msg: "UplinkMessage", client, round_: int, key: bytes | None = None) -> "UplinkMessage":
    """Write the binding into ``msg``: the sender's identity, the round it answers and, with a ``key`` shared
    with the server, the HMAC tag over both and the payload (:func:`upload_tag`). Checked by
    :class:`UploadBinding` on the server."""
    msg.client = client
    msg.round = int(round_)
    if key is not None:
        msg.tag = upload_tag(key, client, msg.round, msg.digest())
    return msg


class UploadBinding:
    """The server's checks of an upload's binding (identity, round, replay, duplicate delivery, HMAC tag) and
    the state they need: the last accepted upload (round, digest) per client. :class:`ServerCodec` and the
    Flower strategies (:class:`nnc.fl.flower.NNCFedAvg`, ``CFDFedAvg``, ``ClusteredFedAvg``) all use it.

    ``keys``: client -> shared secret; a client with a key must tag its uploads (:func:`bind_upload`)."""

    def __init__(self, keys: Mapping | None = None):
        self.keys = dict(keys) if keys else {}
        self.accepted: dict = {}        # client -> (round, digest) of its last accepted upload

    def check(self, client, msg: "UplinkMessage", round_: int, *, require_binding: bool, refuse,
              duplicate=None) -> bytes:
        """Check ``msg`` as ``client``'s upload for round ``round_`` before anything is decoded (nothing about
        ``client`` changes when a check fails, so a forged upload cannot reset an honest client). Returns the
        payload digest (hand it to :meth:`accept` once the upload is taken).

        ``refuse(category, reason, reset)`` is called on a refusal and must raise (categories: unbound,
        identity, invalid, replay, future-round); ``duplicate()`` is called before :class:`DuplicateUploadError`
        is raised for a second delivery of the upload already accepted in this round."""
        t = round_
        if msg.client is None or msg.round is None:
            if require_binding:
                refuse("unbound", "upload carries no client identity and round", False)
        elif str(msg.client) != str(client):
            refuse("identity", f"upload names client {msg.client!r}", False)
        try:
            digest = msg.digest()
        except Exception as e:  # noqa: BLE001 - an unreadable payload object
            refuse("invalid", f"{type(e).__name__}: {e}", True)
        last = self.accepted.get(client)
        if last is not None and last[1] == digest:
            if last[0] == t:           # delivered again while its round is open: it already counts, once
                if duplicate is not None:
                    duplicate()
                raise DuplicateUploadError(client, f"duplicate delivery of its round-{t} upload")
            if msg.round is None:      # unbound: the same bytes again are a replay; a bound upload is judged by
                #                        its round below (an honest client can send the same update twice, e.g.
                #                        an all-zero one; keys= authenticate the binding against rewriting)
                refuse("replay", f"replay of its round-{last[0]} upload", False)
        key = self.keys.get(client, self.keys.get(str(client))) if self.keys else None
        if key is not None and not hmac.compare_digest(msg.tag or b"", upload_tag(key, client, msg.round, digest)):
            refuse("identity", "upload tag does not match the client's key, round and payload", False)
        if msg.round is not None and int(msg.round) != t:
            kind = "replay" if int(msg.round) < t else "future-round"
            refuse(kind, f"upload answers round {msg.round}, the server runs round {t}", False)
        return digest

    def accept(self, client, round_: int, digest: bytes) -> None:
        """Record ``client``'s upload for round ``round_`` as taken."""
        self.accepted[client] = (round_, digest)


class DuplicateUploadError(RejectedUpdateError):
    """A second delivery of an upload the server already accepted: ignored (not applied twice), counted in
    :attr:`RoundRecord.duplicates`; the client's state is left alone (this is not an error of the client)."""


# --------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UplinkConfig:
    """How a client codes its update.

    Attributes:
        mode: ``"nnc"`` (an NNC incremental bitstream) or ``"float32"`` (raw arrays, the FedAvg baseline).
        qp: QP of every tensor when ``qp_mode == "fixed"``.
        qp_mode: ``"fixed"``; ``"relative"`` (per tensor, step = ``rel_step`` x RMS of the values kept, so the
            QP follows the update's scale as training converges); ``"ternary"`` (STC: survivors become
            ``±mean``, the step is that mean, so every level is ±1 and only positions and signs are coded).
        rel_step: step relative to the RMS of the kept values for ``qp_mode="relative"``.
        sparsity: fraction of values kept by top-k (``None``: no top-k).
        sparsity_scope: ``"tensor"`` or ``"global"`` top-k.
        threshold: zero values with ``|v| <= threshold`` (applied after top-k; ``None``: off).
        error_feedback: accumulate what was not sent (the residual) into the next update.
        tca, hdsp: NNC incremental coding tools on the per-pair stream.
        dq: dependent quantisation (ignored for ``"ternary"``, which needs exact ±1 levels).
        qp_density: NNC ``qp_density``.
        compressor: an :class:`nnc.fl.compressors.Compressor` (QSGD, TernGrad, signSGD, top-k/DGC, PowerSGD,
            Atomo). When set it replaces sparsification/quantisation and the transport's residual: the
            upload is the compressor's one-shot NNC bitstream, its per-client state (error feedback,
            momentum, warm start) lives in :attr:`ClientCodec.comp_state` and the server rebuilds the update
            with ``compressor.decode``. Needs ``mode="nnc"``.
        statistics: fnmatch patterns of running statistics (:data:`RUNNING_STATISTICS`: BatchNorm's
            running_mean / running_var / num_batches_tracked). They are sent dense at ``qp`` without error
            feedback, top-k, threshold or ternarisation (with a ``compressor``: beside its tensors, as dense
            16-bit floats, outside its error feedback).
    """

    mode: str = "nnc"
    qp: int = -36
    qp_mode: str = "fixed"
    rel_step: float = 0.5
    sparsity: float | None = None
    sparsity_scope: str = "tensor"
    threshold: float | None = None
    error_feedback: bool = True
    tca: bool = True
    hdsp: bool = False
    dq: bool = True
    qp_density: int = 2
    compressor: object = None
    statistics: tuple = RUNNING_STATISTICS

    def __post_init__(self):
        if self.mode not in ("nnc", "float32"):
            raise ValueError(f"uplink mode must be 'nnc' or 'float32', got {self.mode!r}")
        if self.compressor is not None and self.mode != "nnc":
            raise ValueError("an uplink compressor needs mode='nnc'")
        if self.qp_mode not in ("fixed", "relative", "ternary"):
            raise ValueError(f"qp_mode must be 'fixed', 'relative' or 'ternary', got {self.qp_mode!r}")

    def replace(self, **kw) -> "UplinkConfig":
        return replace(self, **kw)


@dataclass(frozen=True)
class DownlinkConfig:
    """How the server codes what it sends to clients.

    Attributes:
        mode: ``"float32"`` (the whole model as raw arrays to every selected client, FedAvg) or ``"nnc"``
            (coded aggregated update with a server residual, cached catch-ups).
        qp: QP of the fixed per-tensor lattice (``qp_per_tensor`` overrides by exact name).
        sparsity: top-k fraction of the server's update (``None``: dense).
        dq: dependent quantisation of the regular broadcasts (catch-up streams always use uniform
            quantisation, which can represent any integer level exactly).
        cache: offer combined catch-up / full-model streams to clients that missed rounds; without it
            they get the sequence of missed broadcasts.
        error_feedback: keep the server residual.
        initial_model_known: clients build the initial model themselves (shared seed); otherwise the first
            message to a client also carries the initial model as raw float32.
        statistics: fnmatch patterns of running statistics, broadcast dense and without the server residual
            (see :class:`UplinkConfig`).
    """

    mode: str = "float32"
    qp: int = -40
    qp_per_tensor: Mapping[str, int] = field(default_factory=dict)
    sparsity: float | None = None
    dq: bool = False
    cache: bool = True
    error_feedback: bool = True
    initial_model_known: bool = True
    qp_density: int = 2
    statistics: tuple = RUNNING_STATISTICS

    def __post_init__(self):
        if self.mode not in ("nnc", "float32"):
            raise ValueError(f"downlink mode must be 'nnc' or 'float32', got {self.mode!r}")

    def qp_for(self, name: str) -> int:
        return self.qp_per_tensor.get(name, self.qp)

    def replace(self, **kw) -> "DownlinkConfig":
        return replace(self, **kw)


# --------------------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------------------
@dataclass
class DownlinkMessage:
    """What one client receives at the start of a round.

    ``streams`` are NNC bitstreams applied in order (``kind`` ``"broadcasts"``, ``"catchup"``, ``"full"``);
    ``arrays`` is a raw float32 model (``kind == "float32"``) or, with ``initial_model_known=False``, the
    initial model sent on first contact. ``base_round -> round`` is the model transition it encodes.
    """

    kind: str
    base_round: int
    round: int
    streams: list[bytes] = field(default_factory=list)
    arrays: dict[str, np.ndarray] | None = None
    reset_uplink: bool = False

    @property
    def nbytes(self) -> int:
        n = sum(len(s) for s in self.streams)
        if self.arrays is not None:
            n += sum(int(a.nbytes) for a in self.arrays.values())
        return n


@dataclass
class UplinkMessage:
    """One client's upload: an NNC bitstream (``payload`` bytes) or raw float32 arrays.

    ``client`` and ``round`` bind it to the sender and to the round it answers (set by
    :meth:`ClientCodec.encode`); the server refuses an upload whose binding does not match.
    """

    payload: bytes | dict[str, np.ndarray]
    num_examples: int = 1
    client: object = None
    round: int | None = None
    tag: bytes | None = None

    def digest(self) -> bytes:
        """SHA-256 of the payload (names, dtypes, shapes and bytes for raw arrays)."""
        h = hashlib.sha256()
        if isinstance(self.payload, (bytes, bytearray, memoryview)):
            h.update(b"b")
            h.update(bytes(self.payload))
        else:
            for k in sorted(self.payload):
                a = np.ascontiguousarray(self.payload[k])
                h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
                h.update(a.tobytes())
        return h.digest()

    @property
    def nbytes(self) -> int:
        if isinstance(self.payload, (bytes, bytearray, memoryview)):
            return len(self.payload)
        return sum(int(np.asarray(a).nbytes) for a in self.payload.values())


@dataclass
class RoundRecord:
    """Bytes on the wire in one round, per client and direction, and what was dropped."""

    round: int
    up: dict = field(default_factory=dict)          # client -> bytes received
    down: dict = field(default_factory=dict)        # client -> bytes sent
    down_kind: dict = field(default_factory=dict)   # client -> "broadcasts" | "catchup" | "full" | "float32"
    dropped: dict = field(default_factory=dict)     # client -> reason
    rejected: dict = field(default_factory=dict)    # client -> category: invalid | identity | replay |
    #                                                 future-round | unbound | norm-bound | aggregate
    duplicates: dict = field(default_factory=dict)  # client -> repeated deliveries of an accepted upload
    clipped: dict = field(default_factory=dict)     # client -> L2 norm of its update, when over the norm bound
    # client -> bytes of the records the transport wrote (payload + the framing nnc controls), where an engine
    # adapter counts them (nnc.fl.flower: Flower's serialised ArrayRecord of the message)
    up_wire: dict = field(default_factory=dict)
    down_wire: dict = field(default_factory=dict)

    @property
    def up_bytes(self) -> int:
        return sum(self.up.values())

    @property
    def down_bytes(self) -> int:
        return sum(self.down.values())

    def as_dict(self) -> dict:
        return {"round": self.round, "up": {str(k): v for k, v in self.up.items()},
                "down": {str(k): v for k, v in self.down.items()},
                "down_kind": {str(k): v for k, v in self.down_kind.items()},
                "dropped": {str(k): v for k, v in self.dropped.items()},
                "rejected": {str(k): v for k, v in self.rejected.items()},
                "duplicates": {str(k): v for k, v in self.duplicates.items()},
                "clipped": {str(k): v for k, v in self.clipped.items()},
                "up_bytes": self.up_bytes, "down_bytes": self.down_bytes,
                **({"up_wire": sum(self.up_wire.values()), "down_wire": sum(self.down_wire.values())}
                   if self.up_wire or self.down_wire else {})}


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------
def _f32(x: Tensors) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float32) for k, v in x.items()}


def _zeros_like(x: Tensors, dtype=np.float32) -> dict[str, np.ndarray]:
    return {k: np.zeros(np.shape(v), dtype=dtype) for k, v in x.items()}


def validate_tensors(got: Tensors, reference: Tensors, *, require_all: bool = False) -> None:
    """Names must be in ``reference``, shapes equal, values finite; raises :class:`UpdateStateError`."""
    for k, v in got.items():
        if k not in reference:
            raise UpdateStateError(f"unknown tensor {k!r}")
        if np.shape(v) != np.shape(reference[k]):
            raise UpdateStateError(f"tensor {k!r} has shape {np.shape(v)}, the model has {np.shape(reference[k])}")
        a = np.asarray(v)
        if a.dtype.kind not in "fiub":  # integer buffers (BatchNorm's num_batches_tracked) travel as floats
            raise UpdateStateError(f"tensor {k!r} has dtype {a.dtype}, expected a float, integer or bool array")
        if not np.isfinite(a).all():
            raise UpdateStateError(f"tensor {k!r} holds non-finite values")
    if require_all:
        missing = [k for k in reference if k not in got]
        if missing:
            raise UpdateStateError(f"tensors missing: {missing[:5]}")


def _qp_limits(qp_density: int) -> tuple[int, int]:
    half = 1 << (5 + qp_density)
    return -half, half - 1


def _qp_for_step(step: float, qp_density: int, rounding=math.floor) -> int:
    lo, hi = _qp_limits(qp_density)
    if not step > 0 or not math.isfinite(step):
        return hi
    return int(min(hi, max(lo, rounding(qp_for_step(step, qp_density)))))


def _strict_limits(model: Tensors) -> DecoderConfig:
    return limits_for({k: np.shape(v) for k, v in model.items()}, max_units=4 + 2 * len(model))


# --------------------------------------------------------------------------------------------------------
# client
# --------------------------------------------------------------------------------------------------------
class ClientCodec:
    """One client's side of the transport: downlink model sync, uplink residual and encoder state.

    Args:
        base: the initial global model (all clients and the server build the same one).
        uplink, downlink: the transport settings (must match the server's).
    """

    def __init__(self, base: Tensors, uplink: UplinkConfig | None = None, downlink: DownlinkConfig | None = None,
                 *, client=None, key: bytes | None = None):
        self.client = client          # identity written into every upload (see UplinkMessage)
        self.key = key                # shared secret with the server: uploads carry an HMAC tag
        self.uplink = uplink or UplinkConfig()
        self.downlink = downlink or DownlinkConfig()
        self.base = _f32(base)
        # float32 downlink: the model as last received; coded downlink: None, the model is base + step * levels
        self._model = {k: v.copy() for k, v in self.base.items()} if self.downlink.mode == "float32" else None
        # downlink lattice levels (coded downlink), per tensor in the smallest signed integer dtype that holds them
        self.levels = _zeros_like(self.base, np.int8)
        self.synced_round = 0
        self.residual = _zeros_like(self.base)
        self._last_sent: dict | None = None     # name -> dense float32, or (int32 positions, float32 values)
        self.encoder = self._new_encoder()
        self._limits = _strict_limits(self.base)
        comp = self.uplink.compressor
        self.comp_state: dict[str, np.ndarray] = comp.init_state(self.base) if comp is not None else {}

    @property
    def model(self) -> dict[str, np.ndarray]:
        """The global model as last received (with the coded downlink computed from ``base`` and ``levels``,
        which is what the client holds: a fresh dict on every access)."""
        if self._model is not None:
            return self._model
        return lattice_model(self.base, self.levels, self.downlink)

    @model.setter
    def model(self, value: Tensors) -> None:
        self._model = _f32(value)

    def _model_tensor(self, k: str) -> np.ndarray:
        if self._model is not None:
            return self._model[k]
        return _lattice_tensor(self.base[k], self.levels[k], self.downlink.qp_for(k), self.downlink.qp_density)

    @property
    def last_sent(self) -> dict[str, np.ndarray] | None:
        """What the last upload reconstructs to at the server (dense float32 per tensor), or None."""
        if self._last_sent is None:
            return None
        return {k: _dense(v, self.base[k]) for k, v in self._last_sent.items()}

    @last_sent.setter
    def last_sent(self, value: Tensors | None) -> None:
        self._last_sent = None if value is None else {k: _sparse(v) for k, v in value.items()}

    def _new_encoder(self) -> UpdateEncoder:
        u = self.uplink
        return UpdateEncoder(config=EncoderConfig(qp=u.qp, nonweight_qp=u.qp, qp_density=u.qp_density, dq=u.dq),
                        tca=u.tca, hdsp=u.hdsp)

    # --- downlink ---------------------------------------------------------------------------------------
    def receive(self, msg: DownlinkMessage) -> dict[str, np.ndarray]:
        """Apply a downlink message; returns the current global model (the caller's to keep or change).

        All streams are decoded (tensor by tensor) before anything changes: a message that fails leaves the
        client as it was."""
        if msg.reset_uplink:
            self.reset_uplink()
        if msg.kind == "float32":
            validate_tensors(msg.arrays or {}, self.base, require_all=True)
            self._model = _f32(msg.arrays)
            self.synced_round = msg.round
            return {k: v.copy() for k, v in self._model.items()}
        base = self.base
        if msg.arrays is not None:                    # initial model on first contact
            validate_tensors(msg.arrays, self.base, require_all=True)
            base = _f32(msg.arrays)
        if msg.kind == "full" or msg.base_round == 0:
            levels = _zeros_like(base, np.int8)
        elif msg.base_round != self.synced_round:
            raise UpdateStateError(f"downlink goes from round {msg.base_round}, this client holds round "
                                   f"{self.synced_round}")
        else:
            levels = dict(self.levels)               # tensors are replaced, never changed in place
        for s in msg.streams:
            for name, d in iter_levels(s, base, self.downlink, self._limits):
                levels[name] = _add_levels(levels[name], d)
        self.base, self.levels = base, levels
        self.synced_round = msg.round
        return self.model

    # --- uplink -----------------------------------------------------------------------------------------
    def encode(self, trained: Tensors, num_examples: int = 1, *, release: bool = False) -> UplinkMessage:
        """Code ``trained - model`` (plus the residual) as this round's upload.

        ``release=True``: ``trained`` is a dict the caller hands over; each tensor is removed from it once its
        difference is formed, so the trained model is freed tensor by tensor before the coding starts."""
        validate_tensors(trained, self.base, require_all=True)

        def delta(k: str) -> np.ndarray:
            t = trained.pop(k) if release else trained[k]
            return np.asarray(t, np.float32) - self._model_tensor(k)

        return self._encode({k: (lambda k=k: delta(k)) for k in self.base}, num_examples)

    def encode_update(self, delta: Tensors, num_examples: int = 1) -> UplinkMessage:
        return self._encode({k: (lambda k=k: np.asarray(delta[k], np.float32)) for k in self.base}, num_examples)

    def _encode(self, delta_of, num_examples: int) -> UplinkMessage:
        """``delta_of[name]()`` makes one tensor's update: the model-sized work is done tensor by tensor, the
        error-feedback sum is formed in the residual's own buffers (what was not sent stays there)."""
        u = self.uplink
        if u.compressor is not None:
            data, self.last_sent, self.comp_state = u.compressor.encode(
                {k: delta_of[k]() for k in self.base}, self.comp_state, _statistics(self.base, u.statistics))
            return self._bind(UplinkMessage(data, num_examples))
        stats = _statistics(self.base, u.statistics)
        feedback = u.error_feedback
        acc = {}
        for k in self.base:
            d = delta_of[k]()
            if feedback and k not in stats:
                r = self.residual[k]
                if r.flags.writeable and r.dtype == np.float32 and r.shape == d.shape:
                    r += d                 # delta + residual, in the residual's buffer
                else:
                    r = d + r
                acc[k] = r
            else:
                acc[k] = d
            del d
        self.residual = acc                # until `sent` is taken off below, it holds delta + residual
        learn = [k for k in self.base if k not in stats]
        tau = None
        if u.sparsity is not None and learn and u.sparsity_scope == "global":
            tau = sp.global_threshold({k: acc[k] for k in learn}, u.sparsity)
        def sparse_of(k: str) -> np.ndarray:
            """What is sent of tensor ``k`` (before quantisation): statistics dense, the rest sparsified."""
            if k in stats:
                return acc[k]
            v = {k: acc[k]}
            if u.sparsity is not None:
                v = sp.threshold(v, tau, inclusive=True) if tau is not None else \
                    sp.top_k(v, u.sparsity, scope=u.sparsity_scope)
            if u.threshold is not None:
                v = sp.threshold(v, u.threshold)
            if u.mode == "nnc" and u.qp_mode == "ternary":
                v = sp.ternarize(v)
            return v[k]

        if u.mode == "float32":
            x = {k: sparse_of(k) for k in self.base}
            sent = {k: v.copy() for k, v in x.items()}
            msg = UplinkMessage({k: v.copy() for k, v in sent.items()}, num_examples)
        else:
            # the encoder reads each tensor once while quantising: made on demand, the sparsified model is
            # never whole in memory next to the levels and reconstructions the encoder builds
            x = _Lazy(list(self.base), sparse_of)
            self.encoder.set_config(self._config_for(x, stats))
            data = self.encoder.encode_update(x)
            sent = self.encoder.last_reconstruction
            self.encoder.last_reconstruction = {}
            msg = UplinkMessage(data, num_examples)
        del x
        for k in self.base:
            if not feedback or k in stats:
                self.residual[k] = np.zeros_like(self.base[k])
            elif k in sent:
                r = self.residual[k]
                if r is acc[k] and r.flags.writeable and r.dtype == np.float32:
                    r -= sent[k]
                else:
                    self.residual[k] = r - sent[k]
        self._last_sent = {k: _sparse(sent[k]) if k in sent else _sparse(np.zeros_like(self.base[k]))
                           for k in self.base}
        return self._bind(msg)

    def _bind(self, msg: UplinkMessage) -> UplinkMessage:
        return bind_upload(msg, self.client, int(self.synced_round) + 1, self.key)   # the round it answers

    def _config_for(self, x: Tensors, stats: set = frozenset()) -> EncoderConfig:
        u = self.uplink
        per = {}
        for k, v in x.items():
            nz = v[v != 0]
            if u.qp_mode == "fixed" or nz.size == 0 or k in stats:
                per[k] = u.qp
            elif u.qp_mode == "ternary":
                per[k] = _qp_for_step(float(np.abs(nz[0])), u.qp_density, round)
            else:
                rms = float(np.sqrt(np.mean(nz.astype(np.float64) ** 2)))
                per[k] = _qp_for_step(u.rel_step * rms, u.qp_density)
        dq = u.dq and u.qp_mode != "ternary"
        return EncoderConfig(qp=u.qp, nonweight_qp=u.qp, qp_per_tensor=per, qp_density=u.qp_density, dq=dq)

    def reset_uplink(self) -> None:
        """The server lost this client's last upload: restart the pair's state and re-send it via the residual."""
        if self.uplink.compressor is not None and self._last_sent is not None:
            self.comp_state = self.uplink.compressor.restore(self.comp_state, self.last_sent)
        elif self.uplink.error_feedback and self._last_sent is not None:
            self.residual = {k: self.residual[k] + _dense(self._last_sent[k], self.base[k]) for k in self.base}
        self._last_sent = None
        self.encoder = self._new_encoder()

    # --- state as flat arrays and scalars (for Flower's Context.state; no pickle) -----------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """The client's state, lossless and compact (``load_state_dict`` restores it bit for bit).

        Holds, per tensor: the downlink lattice levels (coded downlink only) in the smallest integer dtype that
        holds them; the error-feedback residual (float32; omitted without error feedback); the last upload's
        reconstruction (sparse: int32 positions + float32 values, when under a third is non-zero); the uplink
        encoder's TCA history (levels in the smallest integer dtype, the seen-non-zero flags bit-packed). Not
        held: the initial model (rebuilt by ``base_fn``; kept only when the server sent it) and the current
        model (``base + step * levels`` with the coded downlink; a float32 downlink sends it whole every round).
        For a top-k ternary uplink with error feedback and the coded downlink this is about 6-8 B/param.
        The arrays may share memory with the live state (no copies): store them before the next ``encode``.
        """
        arrays: dict[str, np.ndarray] = {}
        nnc_down = self.downlink.mode == "nnc"
        keep_base = nnc_down and not self.downlink.initial_model_known
        # the last upload is only needed to put it back into the residual (reset_uplink) or the compressor state
        need_sent = self._last_sent is not None and (self.uplink.error_feedback or self.uplink.compressor is not None)
        scalars: dict[str, int] = {"state_version": 2, "synced_round": int(self.synced_round),
                                   "has_last_sent": int(need_sent), "has_base": int(keep_base)}
        for k in self.base:
            if keep_base:
                arrays[f"base/{k}"] = self.base[k]
            if nnc_down:
                arrays[f"levels/{k}"] = _smallest_int(self.levels[k])
            if self.uplink.error_feedback and np.any(self.residual[k]):
                arrays[f"residual/{k}"] = self.residual[k]
            if need_sent:
                v = self._last_sent[k]
                if isinstance(v, tuple):
                    arrays[f"last_sent.idx/{k}"], arrays[f"last_sent.val/{k}"] = v
                else:
                    arrays[f"last_sent/{k}"] = v
        for k, v in self.comp_state.items():
            arrays[f"comp/{k}"] = np.asarray(v)
        st = self.encoder.state
        scalars["enc.device_id"] = -1 if st.device_id is None else int(st.device_id)
        for k, h in st.tensors.items():
            scalars[f"enc.depth/{k}"] = int(h.put_node_depth)
            scalars[f"enc.pid/{k}"] = -1 if h.parameter_id is None else int(h.parameter_id)
            if h.levels is not None:
                arrays[f"enc.levels/{k}"] = _smallest_int(np.asarray(h.levels))
            if h.seen_nonzero is not None:
                seen = np.asarray(h.seen_nonzero)
                scalars[f"enc.seen.n/{k}"] = int(seen.size)
                arrays[f"enc.seen/{k}"] = np.packbits(seen.reshape(-1) != 0)
        return arrays, scalars

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, int], *,
                        copy: bool = True) -> None:
        """Restore :meth:`state_dict`'s output (``base`` must be the initial model this codec was built with).
        ``copy=False`` adopts the arrays as they are (the caller hands them over, e.g. fresh from a file)."""
        own = (lambda a, dt: np.array(a, dt)) if copy else (lambda a, dt: np.asarray(a, dt))
        self.synced_round = int(scalars["synced_round"])
        old = int(scalars.get("state_version", 1)) < 2
        for k in list(self.base):
            shape = np.shape(self.base[k])
            if f"base/{k}" in arrays:
                self.base[k] = np.array(arrays[f"base/{k}"], np.float32)
            if f"levels/{k}" in arrays:
                lv = np.asarray(arrays[f"levels/{k}"])
                self.levels[k] = own(lv, lv.dtype if lv.dtype.kind == "i" else np.int64).reshape(shape)
            else:
                self.levels[k] = np.zeros(shape, np.int8)
            if f"residual/{k}" in arrays:
                r = own(arrays[f"residual/{k}"], np.float32)
                self.residual[k] = r if r.flags.writeable else np.array(r)
            else:
                self.residual[k] = np.zeros(shape, np.float32)
            if old and self.downlink.mode == "float32":
                self.model[k] = np.array(arrays[f"model/{k}"], np.float32)
        if not old and self.downlink.mode == "float32":
            self._model = {k: v.copy() for k, v in self.base.items()}
        if scalars.get("has_last_sent"):
            self._last_sent = {}
            for k, b in self.base.items():
                if f"last_sent.idx/{k}" in arrays:
                    self._last_sent[k] = (own(arrays[f"last_sent.idx/{k}"], np.int32),
                                          own(arrays[f"last_sent.val/{k}"], np.float32))
                else:
                    self._last_sent[k] = own(arrays[f"last_sent/{k}"], np.float32).reshape(np.shape(b))
        else:
            self._last_sent = None
        if self.uplink.compressor is not None:
            loaded = {k[len("comp/"):]: np.array(v) for k, v in arrays.items() if k.startswith("comp/")}
            self.comp_state = loaded or self.uplink.compressor.init_state(self.base)
        self.encoder = self._new_encoder()
        st = self.encoder.state
        dev = int(scalars.get("enc.device_id", -1))
        st.device_id = None if dev < 0 else dev
        for key, depth in scalars.items():
            if not key.startswith("enc.depth/"):
                continue
            k = key[len("enc.depth/"):]
            h = st.history(k)
            h.put_node_depth = int(depth)
            pid = int(scalars.get(f"enc.pid/{k}", -1))
            h.parameter_id = None if pid < 0 else pid
            if f"enc.levels/{k}" in arrays:
                h.levels = np.array(arrays[f"enc.levels/{k}"], np.int32)
            if f"enc.seen/{k}" in arrays:
                seen = np.asarray(arrays[f"enc.seen/{k}"], np.uint8)
                if f"enc.seen.n/{k}" in scalars:
                    seen = np.unpackbits(seen, count=int(scalars[f"enc.seen.n/{k}"]))
                    if h.levels is not None and h.levels.size == seen.size:
                        seen = seen.reshape(h.levels.shape)
                h.seen_nonzero = np.array(seen, np.uint8)

    def state_nbytes(self) -> int:
        """Bytes of the arrays :meth:`state_dict` returns (what a client stores between rounds)."""
        return sum(int(np.asarray(v).nbytes) for v in self.state_dict()[0].values())


def _smallest_int(a: np.ndarray) -> np.ndarray:
    """``a`` in the smallest signed integer dtype that holds its values exactly."""
    a = np.asarray(a)
    if a.size == 0:
        return a.astype(np.int8, copy=False)
    lo, hi = int(a.min()), int(a.max())
    for dt in (np.int8, np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return a.astype(dt, copy=False)
    return a.astype(np.int64, copy=False)


class _Lazy(Mapping):
    """A read-only mapping whose values are made on every access by ``make(name)`` (never cached)."""

    def __init__(self, names: list, make):
        self._names, self._make = names, make

    def __getitem__(self, k):
        if k not in self._names:
            raise KeyError(k)
        return self._make(k)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _sparse(v) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A tensor of the last upload as held between rounds: (int32 positions, float32 values) when under a third
    of it is non-zero, else dense float32."""
    v = np.asarray(v, np.float32)
    nz = np.flatnonzero(v)
    if nz.size * 3 < v.size and v.size < 2 ** 31:
        return nz.astype(np.int32), v.reshape(-1)[nz]
    return v


def _dense(v, like: np.ndarray) -> np.ndarray:
    if isinstance(v, tuple):
        out = np.zeros(np.size(like), np.float32)
        out[np.asarray(v[0], np.int64)] = v[1]
        return out.reshape(np.shape(like))
    return np.array(v, np.float32).reshape(np.shape(like))


class SparseUpdate(Mapping):
    """A decoded update as the server holds it until the round is aggregated: per tensor the positions and
    float32 values of its non-zero entries (bit patterns, so ``-0.0`` is kept too) when under a third of it is
    non-zero, else the dense float32 array. Reading a tensor gives a new dense float32 array with exactly the
    decoded values; a top-1 % upload held this way takes ~0.08 B/param instead of 4."""

    def __init__(self, tensors: Mapping[str, np.ndarray], shapes: Tensors):
        self._shapes = {k: np.shape(v) for k, v in shapes.items()}
        self._held: dict = {}
        for k in self._shapes:
            v = tensors.get(k)
            self._held[k] = None if v is None else _sparse_bits(np.asarray(v, np.float32))

    def __getitem__(self, k: str) -> np.ndarray:
        v, shape = self._held[k], self._shapes[k]
        if v is None:
            return np.zeros(shape, np.float32)
        if isinstance(v, tuple):
            out = np.zeros(int(np.prod(shape, dtype=np.int64)), np.float32)
            out[v[0]] = v[1]
            return out.reshape(shape)
        return np.array(v, np.float32)

    def __iter__(self):
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)

    @property
    def nbytes(self) -> int:
        """Bytes held (positions and values, or the dense arrays)."""
        return sum(sum(a.nbytes for a in v) if isinstance(v, tuple) else v.nbytes
                   for v in self._held.values() if v is not None)


def _sparse_bits(v: np.ndarray):
    """(positions, values) of the entries whose bits are not all zero, when under a third are; else ``v``."""
    nz = np.flatnonzero(v.reshape(-1).view(np.uint32))
    if nz.size * 3 < v.size:
        return nz.astype(np.int32 if v.size < 2 ** 31 else np.int64), v.reshape(-1)[nz]
    return v


class _CompactState(UpdateState):
    """An uplink decoder's history (TCA levels, HDSP seen-non-zero flags) held compactly between uploads: the
    levels as positions + values in the smallest integer dtype (or dense in it), the flags bit-packed. The
    dense arrays the decoder reads are rebuilt for the one tensor being decoded, with the dtype it recorded,
    so decoding is unchanged; a top-1 % ternary pair holds ~0.2 B/param instead of 5."""

    def __init__(self):
        super().__init__()
        self._levels: dict = {}      # name -> (shape, dtype, positions | None, values)
        self._seen: dict = {}        # name -> (shape, packed bits)

    def _unpack(self, name: str, levels: bool = True) -> None:
        h = self.tensors.get(name)
        if h is None:
            return
        if levels and name in self._levels:
            shape, dt, idx, val = self._levels[name]
            if idx is None:
                h.levels = val.astype(dt).reshape(shape)
            else:
                lv = np.zeros(int(np.prod(shape, dtype=np.int64)), dt)
                lv[idx] = val
                h.levels = lv.reshape(shape)
        if name in self._seen:
            shape, bits = self._seen[name]
            h.seen_nonzero = np.unpackbits(bits, count=int(np.prod(shape, dtype=np.int64))).reshape(shape)

    def _pack(self, name: str) -> None:
        h = self.tensors.get(name)
        if h is None:
            return
        if h.levels is not None and np.asarray(h.levels).dtype.kind in "iu":
            a = np.asarray(h.levels)
            flat = a.reshape(-1)
            nz = np.flatnonzero(flat)
            if nz.size * 3 < flat.size:
                self._levels[name] = (a.shape, a.dtype, nz.astype(np.int32 if flat.size < 2 ** 31 else np.int64),
                                      _smallest_int(flat[nz]))
            else:
                self._levels[name] = (a.shape, a.dtype, None, _smallest_int(a))
            h.levels = None
        elif h.levels is not None:
            self._levels.pop(name, None)
        if h.seen_nonzero is not None:
            a = np.asarray(h.seen_nonzero)
            if a.dtype != np.uint8 or (a.size and int(a.max()) > 1):   # not 0/1 flags: keep it as it is
                self._seen.pop(name, None)
                return
            self._seen[name] = (a.shape, np.packbits(a.reshape(-1)))
            h.seen_nonzero = None

    def inputs_for(self, name: str, header):
        self._unpack(name)
        try:
            return super().inputs_for(name, header)
        finally:
            self._pack(name)

    def record(self, name, levels, put_node_depth, parameter_id, device_id) -> None:
        super().record(name, levels, put_node_depth, parameter_id, device_id)
        self._pack(name)

    def add_to_history(self, coded) -> None:
        for name, levels in coded.items():
            self._unpack(name, levels=False)
            super().add_to_history({name: levels})
            self._pack(name)

    @property
    def nbytes(self) -> int:
        return sum(v[3].nbytes + (0 if v[2] is None else v[2].nbytes) for v in self._levels.values()) + \
            sum(v[1].nbytes for v in self._seen.values())


def _add_levels(held: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``held + d`` exactly, in the smallest signed integer dtype that holds the result (a new array)."""
    out = np.add(held, d, dtype=np.int64)
    return _smallest_int(out)


# --------------------------------------------------------------------------------------------------------
# downlink lattice
# --------------------------------------------------------------------------------------------------------
def _lattice_tensor(base: np.ndarray, levels: np.ndarray, qp: int, qp_density: int) -> np.ndarray:
    # np.asarray: for 0-d tensors the sum is a numpy scalar, and the model's entries are arrays
    return np.asarray(base + reconstruct_uniform(levels, qp, qp_density), np.float32)


def lattice_model(base: Tensors, levels: Tensors, cfg: DownlinkConfig) -> dict[str, np.ndarray]:
    """``base + step * levels`` in float32, the same on server and clients."""
    return {k: _lattice_tensor(base[k], levels[k], cfg.qp_for(k), cfg.qp_density) for k in base}


def iter_levels(stream, base: Tensors, cfg: DownlinkConfig, limits: DecoderConfig | None = None):
    """Decode one downlink stream tensor by tensor: yields ``(name, integer lattice levels)``, checking names,
    shapes and QPs (all unit headers are checked against ``limits`` before anything is decoded)."""
    for t in Decoder(limits if limits is not None else DecoderConfig()).stream(stream):
        name = t.name
        if name not in base:
            raise UpdateStateError(f"downlink names unknown tensor {name!r}")
        levels = in_model_shape(t.levels, np.shape(base[name]))
        if levels.shape != np.shape(base[name]):
            raise UpdateStateError(f"downlink tensor {name!r} has shape {levels.shape}")
        if t.qp != cfg.qp_for(name):
            raise UpdateStateError(f"downlink tensor {name!r} has QP {t.qp}, the lattice uses {cfg.qp_for(name)}")
        yield name, levels


def _encode_levels(levels: Tensors, cfg: DownlinkConfig, *, dq: bool) -> bytes:
    """A standalone incremental stream whose decoded levels are exactly ``levels`` (uniform quantiser)."""
    x = {k: reconstruct_uniform(np.asarray(v), cfg.qp_for(k), cfg.qp_density) for k, v in levels.items()}
    return _encode_values(x, cfg, dq=dq)


def _encode_values(x: Tensors, cfg: DownlinkConfig, *, dq: bool) -> bytes:
    per = {k: cfg.qp_for(k) for k in x}
    ec = EncoderConfig(qp=cfg.qp, nonweight_qp=cfg.qp, qp_per_tensor=per, qp_density=cfg.qp_density, dq=dq)
    return UpdateEncoder(config=ec, tca=False).encode_update(x)


# --------------------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------------------
class ServerCodec:
    """The server's side: per-client uplink decoders, the global model, downlink residual and cache, ledger.

    Round protocol (``t`` = :attr:`round` + 1 is the round being run)::

        msg = server.downlink_for(cid)          # for each selected client: brings it to the current model
        ...clients train, reply...
        delta = server.receive(cid, upload)     # per reply; RejectedUpdateError -> dropped
        server.aggregate({cid: (delta, n)})     # closes the round, codes the next broadcast
    """

    def __init__(self, base: Tensors, uplink: UplinkConfig | None = None, downlink: DownlinkConfig | None = None,
                 decoder_config: DecoderConfig | None = None, policy: RoundPolicy | None = None,
                 keys: Mapping | None = None):
        self.uplink = uplink or UplinkConfig()
        self.downlink = downlink or DownlinkConfig()
        self.policy = policy or RoundPolicy()
        self.binding = UploadBinding(keys)          # client -> shared secret: uploads must carry its HMAC tag
        self.keys = self.binding.keys
        self.base = _f32(base)
        # float32 downlink: the model as last aggregated; coded downlink: None, the model is base + step * levels
        # (made tensor by tensor where it is read: the caller's float32 record of it is the one full copy)
        self._model = {k: v.copy() for k, v in self.base.items()} if self.downlink.mode == "float32" else None
        self.round = 0
        self.limits = decoder_config or _strict_limits(self.base)
        self.decoders: dict = {}
        self.pending_reset: set = set()
        self.synced: dict = {}                       # client -> round of the model it holds
        self.ledger: list[RoundRecord] = []
        self.residual = _zeros_like(self.base)
        # lattice levels per tensor in the smallest integer dtype that holds them; arrays are replaced, never
        # changed in place, so snapshots share them
        self.levels = _zeros_like(self.base, np.int8)
        self._snapshots: dict[int, dict[str, np.ndarray]] = {0: dict(self.levels)}
        self._broadcasts: dict[int, bytes] = {}
        self._catchups: dict[tuple[int, int], bytes] = {}
        self._accepted = self.binding.accepted     # client -> (round, digest) of its last accepted upload

    @property
    def model(self) -> dict[str, np.ndarray]:
        """The current global model (with the coded downlink made from ``base`` and ``levels``: a fresh dict
        on every access; :meth:`model_view` makes it one tensor at a time)."""
        if self._model is not None:
            return self._model
        return {k: self._model_tensor(k) for k in self.base}

    def _model_tensor(self, k: str) -> np.ndarray:
        if self._model is not None:
            return self._model[k]
        if self.round == 0:                  # nothing committed yet: the initial model as it is
            return self.base[k].copy()
        with np.errstate(over="ignore", invalid="ignore"):
            return _lattice_tensor(self.base[k], self.levels[k], self.downlink.qp_for(k), self.downlink.qp_density)

    def model_view(self) -> Mapping[str, np.ndarray]:
        """The current global model as a read-only mapping whose tensors are made when read (the coded
        downlink holds no float32 model: ``to_arrayrecord(server.model_view())`` is its only full copy)."""
        return self._model if self._model is not None else _Lazy(list(self.base), self._model_tensor)

    # --- bookkeeping ------------------------------------------------------------------------------------
    def _record(self) -> RoundRecord:
        t = self.round + 1
        if not self.ledger or self.ledger[-1].round != t:
            self.ledger.append(RoundRecord(t))
        return self.ledger[-1]

    @property
    def up_bytes(self) -> int:
        return sum(r.up_bytes for r in self.ledger)

    @property
    def down_bytes(self) -> int:
        return sum(r.down_bytes for r in self.ledger)

    def release(self, client) -> None:
        """Forget everything held for ``client`` (its decoder, the round it holds, a pending reset): the next
        :meth:`downlink_for` treats it as a new client (catch-up from the initial model, fresh uplink pair)."""
        self.decoders.pop(client, None)
        self.synced.pop(client, None)
        self.pending_reset.discard(client)

    # --- downlink ---------------------------------------------------------------------------------------
    def downlink_for(self, client) -> DownlinkMessage:
        """The message that brings ``client`` to the current global model (and counts its bytes)."""
        t = self.round
        rec = self._record()
        reset = client in self.pending_reset
        self.pending_reset.discard(client)
        first = client not in self.synced
        s = self.synced.get(client, 0)
        if self.downlink.mode == "float32":
            msg = DownlinkMessage("float32", s, t, arrays={k: v.copy() for k, v in self.model.items()},
                                  reset_uplink=reset)
        else:
            msg = self._nnc_downlink(s, t, reset)
            if first and not self.downlink.initial_model_known:
                msg.arrays = {k: v.copy() for k, v in self.base.items()}
        self.synced[client] = t
        rec.down[client] = rec.down.get(client, 0) + msg.nbytes
        rec.down_kind[client] = msg.kind
        self._prune()
        return msg

    def _nnc_downlink(self, s: int, t: int, reset: bool) -> DownlinkMessage:
        best = None
        if all(r in self._broadcasts for r in range(s + 1, t + 1)):
            missed = [self._broadcasts[r] for r in range(s + 1, t + 1)]
            best = DownlinkMessage("broadcasts", s, t, missed, reset_uplink=reset)
        if not self.downlink.cache or (t - s < 2 and best is not None):
            if best is None:
                raise UpdateStateError(f"broadcasts {s + 1}..{t} are no longer cached")
            return best
        key = (s, t)
        if key not in self._catchups:
            diff = {k: _smallest_int(np.subtract(self.levels[k], self._snapshots[s][k], dtype=np.int64))
                    for k in self.levels}
            self._catchups[key] = _encode_levels(diff, self.downlink, dq=False)
        cand = [DownlinkMessage("catchup", s, t, [self._catchups[key]], reset_uplink=reset)]
        if s > 0:
            if (0, t) not in self._catchups:
                self._catchups[(0, t)] = _encode_levels(self.levels, self.downlink, dq=False)
            cand.append(DownlinkMessage("full", 0, t, [self._catchups[(0, t)]], reset_uplink=reset))
        for c in cand:
            if best is None or c.nbytes < best.nbytes:
                best = c
        return best

    def _prune(self) -> None:
        keep = set(self.synced.values()) | {0, self.round}
        for r in [r for r in self._snapshots if r not in keep]:
            del self._snapshots[r]
        if self.downlink.cache:   # stale and new clients can always be served by a catch-up stream
            oldest = min(self.synced.values(), default=self.round)
            for r in [r for r in self._broadcasts if r <= oldest]:
                del self._broadcasts[r]
        for key in [key for key in self._catchups if key[1] != self.round]:
            del self._catchups[key]

    # --- uplink -----------------------------------------------------------------------------------------
    def _refuse(self, rec: RoundRecord, client, category: str, reason: str, *, reset: bool) -> None:
        if reset:    # the pair's decoder may have advanced on a corrupt stream: both ends restart
            self.decoders.pop(client, None)
            self.pending_reset.add(client)
        rec.rejected[client] = category
        rec.dropped[client] = reason
        raise RejectedUpdateError(client, reason)

    def _check_binding(self, rec: RoundRecord, client, msg: UplinkMessage) -> bytes:
        """Identity, round, replay and duplicate checks (:class:`UploadBinding`), before any decoding; a refusal
        is recorded in the ledger. Returns the payload digest."""
        def refuse(category, reason, reset):
            self._refuse(rec, client, category, reason, reset=reset)

        def duplicate():
            rec.duplicates[client] = rec.duplicates.get(client, 0) + 1

        return self.binding.check(client, msg, self.round + 1, require_binding=self.policy.require_binding,
                                  refuse=refuse, duplicate=duplicate)

    def receive(self, client, msg: UplinkMessage | bytes) -> dict[str, np.ndarray]:
        """Check, decode and validate one upload; returns the float32 delta as a :class:`SparseUpdate` (a
        read-only mapping name -> dense array, held sparse until the round is aggregated).

        Checks, in order: the binding (identity and round carried by the upload), duplicate delivery of the
        upload last accepted from ``client`` (:class:`DuplicateUploadError`: not applied twice, nothing
        reset), replay of an earlier upload or a copy of another client's, then decoding under
        :attr:`limits` and validation in float32 (names, shapes, every value finite *after* conversion to
        float32, the dtype the server aggregates in).

        Raises:
            RejectedUpdateError: refused upload (category in ``ledger[-1].rejected``). An undecodable or
                invalid one also resets the client's uplink state on the server, and the next
                :meth:`downlink_for` tells the client to reset too; binding failures reset nothing.
        """
        rec = self._record()
        if not isinstance(msg, UplinkMessage):
            msg = UplinkMessage(msg)
        try:
            nb = msg.nbytes
        except Exception:  # noqa: BLE001 - unreadable payload object
            nb = 0
        rec.up[client] = rec.up.get(client, 0) + nb
        digest = self._check_binding(rec, client, msg)
        try:
            if self.uplink.mode == "float32":
                if not isinstance(msg.payload, Mapping):
                    raise UpdateStateError("expected raw float32 arrays")
                validate_tensors(msg.payload, self.base, require_all=True)
                got = msg.payload
            else:
                if not isinstance(msg.payload, (bytes, bytearray, memoryview, np.ndarray)):
                    raise UpdateStateError(f"expected an NNC bitstream, got {type(msg.payload).__name__}")
                if self.uplink.compressor is not None:
                    got = self.uplink.compressor.decode(bytes(msg.payload), self.base,
                                                        statistics=_statistics(self.base, self.uplink.statistics))
                else:
                    dec = self.decoders.get(client)
                    if dec is None:
                        dec = self.decoders[client] = UpdateDecoder(config=self.limits)
                        dec.state = _CompactState()       # the pair's history, compact between uploads
                    got = dec.decode_update(msg.payload)
                got = in_model_shapes(got, self.base)
                validate_tensors(got, self.base)
            with np.errstate(over="ignore", invalid="ignore"):
                got = _f32(got)            # validated again in the dtype the server aggregates in
            for k, v in got.items():
                if not np.isfinite(v).all():
                    raise UpdateStateError(f"tensor {k!r} holds values beyond float32's range")
            n = msg.num_examples
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise UpdateStateError(f"num_examples must be a non-negative int, got {n!r}")
        except (NNCError, TypeError, ValueError, OverflowError, MemoryError) as e:
            self._refuse(rec, client, "invalid", f"{type(e).__name__}: {e}", reset=True)
        self._accepted[client] = (self.round + 1, digest)
        return SparseUpdate(got, self.base)     # held sparse until the round is aggregated

    # --- the round as a transaction ---------------------------------------------------------------------
    def _stage(self, mean: Tensors, own: bool = False) -> dict:
        """Everything the round would commit, computed without changing the server; raises if the aggregate
        is not finite or the broadcast cannot be coded and decoded. ``own``: ``mean``'s arrays are this
        call's to reuse (the built-in rule made them)."""
        for k, v in mean.items():
            if not np.isfinite(v).all():
                raise UpdateStateError(f"aggregate of tensor {k!r} is not finite")
        if self.downlink.mode == "float32":
            with np.errstate(over="ignore", invalid="ignore"):
                model = {k: np.asarray(self.model[k] + mean[k], np.float32) for k in self.model}
            for k, v in model.items():
                if not np.isfinite(v).all():
                    raise UpdateStateError(f"model tensor {k!r} would not be finite")
            return {"model": model}
        dl = self.downlink
        stats = _statistics(mean, dl.statistics)
        acc = {}
        for k in mean:                    # mean + residual, in the aggregate's buffer where it is ours
            m = mean[k]
            if dl.error_feedback and k not in stats:
                if own and isinstance(m, np.ndarray) and m.flags.writeable and m.dtype == np.float32 \
                        and m.shape == self.residual[k].shape and m is not self.residual[k]:
                    m += self.residual[k]
                else:
                    m = m + self.residual[k]
            acc[k] = m
        x = {k: v for k, v in acc.items() if k not in stats}
        if dl.sparsity is not None and x:
            x = sp.top_k(x, dl.sparsity)
        x = {k: x[k] if k in x else acc[k] for k in mean}  # statistics dense, in the model's order
        stream = _encode_values(x, dl, dq=dl.dq)
        del x
        levels, residual = dict(self.levels), {}
        for k, got in iter_levels(stream, self.base, dl, self.limits):   # exactly what clients will decode
            levels[k] = _add_levels(self.levels[k], got)
            if dl.error_feedback and k not in stats:
                r = acc[k]
                r -= reconstruct_uniform(got, dl.qp_for(k), dl.qp_density)
                residual[k] = r
        for k in self.base:
            if not dl.error_feedback or k in stats:
                residual[k] = np.zeros_like(self.base[k])
            elif k not in residual:
                residual[k] = acc[k]          # nothing of it was sent
        for k in self.base:                   # the model is made and checked tensor by tensor, not kept
            with np.errstate(over="ignore", invalid="ignore"):
                m = _lattice_tensor(self.base[k], levels[k], dl.qp_for(k), dl.qp_density)
            if not (np.isfinite(m).all() and np.isfinite(residual[k]).all()):
                raise UpdateStateError(f"model tensor {k!r} would not be finite")
            del m
        return {"levels": levels, "residual": residual, "stream": stream}

    def _commit(self, staged: dict) -> None:
        self.round += 1
        if self.downlink.mode == "float32":
            self._model = staged["model"]
        else:
            self.levels, self.residual = staged["levels"], staged["residual"]
            self._broadcasts[self.round] = staged["stream"]
            self._snapshots[self.round] = dict(self.levels)
        self._prune()

    def aggregate(self, deltas: Mapping | Iterable, combine=None, *, copy: bool = True) -> dict[str, np.ndarray]:
        """Close the round as a transaction.

        Bounds each update (:attr:`policy`), aggregates ``{client: (delta, num_examples)}`` (sorted by
        client; ``combine(items) -> delta`` replaces the policy's rule, e.g. with a Flower strategy), checks
        that the aggregate is finite and, in nnc downlink mode, that the broadcast codes and decodes, and
        only then commits (round counter, model, residual, caches). If that fails, the clients that make it
        fail are found and dropped (``ledger[-1].rejected[c] == "aggregate"``) and the round completes with
        the others. Returns the new global model (``copy=False``: :meth:`model_view`, a read-only mapping whose
        tensors are made when read, not to be changed)."""
        rec = self._record()
        items = dict(sorted(dict(deltas).items(), key=lambda kv: str(kv[0])))
        admitted, clipped = bound_updates(items, self.model_view(), self.policy)
        rec.clipped.update(clipped)
        for c in items:
            if c not in admitted:
                rec.rejected[c] = "norm-bound"
                rec.dropped[c] = f"update norm {clipped[c]:.4g} is over the round's bound"
        items = admitted
        own = combine is None          # the built-in rule returns new arrays: _stage may reuse them
        combine = combine or (lambda it: combine_updates(it, self.base, self.policy))

        def attempt(it):
            try:
                return self._stage(combine(it) if it else _zeros_like(self.base), own or not it), None
            except (NNCError, ArithmeticError, ValueError, MemoryError) as e:
                return None, f"{type(e).__name__}: {e}"

        def drop(c, err):
            rec.rejected[c] = "aggregate"
            rec.dropped[c] = f"its update breaks the aggregate ({err})"
            del items[c]

        staged, err = attempt(items)
        if staged is None:
            for c in list(items):      # each client alone first: whose update cannot be broadcast goes
                if attempt({c: items[c]})[0] is None:
                    drop(c, err)
            staged, err = attempt(items)
            while staged is None and items:   # interactions: drop the largest contribution until it codes
                drop(max(items, key=lambda c: update_norm(items[c][0])), err)
                staged, err = attempt(items)
            if staged is None:      # nothing left: the server's own residual cannot be sent; drop it
                self.residual = _zeros_like(self.base)
                staged, err = attempt({})
            if staged is None:
                raise UpdateStateError(f"round {self.round + 1} cannot be committed: {err}")
        self._commit(staged)
        if not copy:
            return self.model_view()
        return {k: v.copy() for k, v in self._model.items()} if self._model is not None else self.model

    def step(self, uploads: Mapping) -> tuple[dict[str, np.ndarray], dict]:
        """Receive ``{client: UplinkMessage}``, drop the rejected ones, aggregate. Returns (model, dropped);
        ``dropped`` also names clients whose update was dropped while committing the round."""
        deltas, dropped = {}, {}
        for c, m in uploads.items():
            try:
                deltas[c] = (self.receive(c, m), m.num_examples if isinstance(m, UplinkMessage) else 1)
            except DuplicateUploadError:
                continue
            except RejectedUpdateError as e:
                dropped[c] = e
        model = self.aggregate(deltas)
        rec = self.ledger[-1]
        for c in deltas:
            if rec.rejected.get(c) in ("aggregate", "norm-bound"):
                dropped[c] = RejectedUpdateError(c, rec.dropped[c])
        return model, dropped
