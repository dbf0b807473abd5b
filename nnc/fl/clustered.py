"""Clustered federated learning (CFL, Sattler, Müller, Samek, arXiv 1910.01991) with nnc as the transport.

FedAvg converges to a stationary point of the *mixture* of client objectives. When clients follow
incongruent distributions (permuted or flipped labels, adversaries) that point is bad for everyone, but it is
recognisable: the mean update is small while individual updates stay large. CFL then splits the clients
into two groups by the cosine similarity of their updates and continues with one model per group,
recursively.

* :func:`pairwise_cosine`, :func:`optimal_bipartition` (the paper's criterion: the bi-partition that
  minimises the largest cross-cluster similarity; ``method="exact"`` solves it exactly by the paper's
  sort-and-merge algorithm, which is single-linkage on the similarities / a cut of the maximum spanning tree;
  ``"exhaustive"`` enumerates all 2^(n-1) splits, for checks; ``"complete"`` is the complete-linkage
  agglomeration the authors' reference code uses).
* :class:`CFLConfig` and :class:`ClusterServer`: the dependency-free server logic (per-cluster models,
  aggregation, split criterion ``||mean dW|| < eps1 and max ||dW_i|| > eps2``), fed with decoded updates.
* :class:`UpdateCodec`: updates travel as NNC bitstreams (``nnc.encode`` at a fixed QP); the server only
  ever sees the decoded update, and every byte is counted.
* :func:`simulate_cfl`: the in-process numpy loop (tests, ``benchmarks/cfl.py``).
* :class:`ClusteredFedAvg` + :func:`cfl_mod` (only if Flower is installed): the same server logic as a
  Flower 1.42 Message-API strategy, with a client Mod that turns the trained model into an nnc update.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import numpy as np

from ..codec import decode, encode
from ..config import EncoderConfig
from ..incremental import in_model_shapes

__all__ = ["flatten", "pairwise_cosine", "optimal_bipartition", "max_cross_similarity", "CFLConfig",
           "UpdateCodec", "ClusterServer", "CFLResult", "simulate_cfl"]

Tensors = Mapping[str, np.ndarray]


# --------------------------------------------------------------------------------------------------------
# similarity and the bi-partition
# --------------------------------------------------------------------------------------------------------
def flatten(update: Tensors) -> np.ndarray:
    return np.concatenate([np.asarray(update[k], dtype=np.float64).ravel() for k in sorted(update)])


def pairwise_cosine(updates) -> np.ndarray:
    """``S[i, j] = <dW_i, dW_j> / (||dW_i|| ||dW_j||)`` for a list of flat vectors or tensor dicts."""
    v = np.stack([flatten(u) if isinstance(u, Mapping) else np.asarray(u, np.float64).ravel() for u in updates])
    n = np.linalg.norm(v, axis=1)
    s = (v @ v.T) / (np.outer(n, n) + 1e-12)
    return np.clip(s, -1.0, 1.0)


def max_cross_similarity(S: np.ndarray, c1, c2) -> float:
    return float(np.max(np.asarray(S)[np.ix_(list(c1), list(c2))]))


def optimal_bipartition(S: np.ndarray, method: str = "exact") -> tuple[list[int], list[int]]:
    """Split indices ``0..n-1`` into two non-empty groups.

    ``exact``/``exhaustive`` minimise ``max_{i in c1, j in c2} S[i, j]`` (the CFL criterion);
    ``complete`` merges by complete linkage until two clusters remain. Groups are returned sorted, the one
    holding index 0 first.
    """
    S = np.asarray(S, dtype=np.float64)
    n = len(S)
    if n < 2:
        raise ValueError("need at least two clients to split")
    if method == "exhaustive":
        best, best_c1 = np.inf, None
        for mask in range(1, 1 << (n - 1)):          # index n-1 always in c2: each split counted once
            c1 = [i for i in range(n) if mask >> i & 1]
            c2 = [i for i in range(n) if not mask >> i & 1]
            v = max_cross_similarity(S, c1, c2)
            if v < best - 1e-15:
                best, best_c1 = v, c1
        c1 = best_c1
    elif method == "exact":
        # the paper's algorithm: visit pairs by decreasing similarity, merge their clusters, stop at two
        label = list(range(n))
        pairs = sorted(((S[i, j], i, j) for i in range(n) for j in range(i + 1, n)), key=lambda t: -t[0])
        clusters = n
        for _, i, j in pairs:
            if clusters == 2:
                break
            a, b = label[i], label[j]
            if a != b:
                label = [a if x == b else x for x in label]
                clusters -= 1
        c1 = [i for i in range(n) if label[i] == label[0]]
    elif method == "complete":
        groups = [[i] for i in range(n)]
        while len(groups) > 2:
            best, pair = -np.inf, None
            for a, b in itertools.combinations(range(len(groups)), 2):
                link = np.min(S[np.ix_(groups[a], groups[b])])      # complete linkage on similarity
                if link > best:
                    best, pair = link, (a, b)
            a, b = pair
            groups[a] = sorted(groups[a] + groups[b])
            del groups[b]
        c1 = groups[0] if 0 in groups[0] else groups[1]
    else:
        raise ValueError(f"method must be 'exact', 'exhaustive' or 'complete', got {method!r}")
    c1 = sorted(c1) if 0 in c1 else sorted(set(range(n)) - set(c1))
    c2 = sorted(set(range(n)) - set(c1))
    return c1, c2


# --------------------------------------------------------------------------------------------------------
# transport of updates
# --------------------------------------------------------------------------------------------------------
class UpdateCodec:
    """Updates as NNC bitstreams: ``encode(delta) -> bytes``, ``decode(bytes) -> delta`` (float32 dicts).

    ``qp=None`` sends raw float32 (``nbytes`` counted) for a FedAvg-style baseline.
    """

    def __init__(self, qp: int | None = -40, nonweight_qp: int = -75):
        self.qp = qp
        self.config = None if qp is None else EncoderConfig(qp=qp, nonweight_qp=nonweight_qp)

    def encode(self, delta: Tensors) -> bytes | dict[str, np.ndarray]:
        if self.config is None:
            return {k: np.asarray(v, np.float32).copy() for k, v in delta.items()}
        return encode({k: np.asarray(v, np.float32) for k, v in delta.items()}, self.config)

    def decode(self, payload, model: Tensors | None = None) -> dict[str, np.ndarray]:
        """The delta; with ``model``, 0-d tensors take their shape back (NNC codes them with shape (1,))."""
        if isinstance(payload, Mapping):
            out = {k: np.asarray(v, np.float32) for k, v in payload.items()}
        else:
            out = {k: np.asarray(v, np.float32) for k, v in decode(bytes(payload)).items()}
        return out if model is None else in_model_shapes(out, model)

    @staticmethod
    def nbytes(payload) -> int:
        if isinstance(payload, Mapping):
            return sum(int(np.asarray(v).nbytes) for v in payload.values())
        return len(payload)


# --------------------------------------------------------------------------------------------------------
# the server logic
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CFLConfig:
    """CFL settings.

    Attributes:
        eps1: split only if the norm of the cluster's weighted mean update is below this.
        eps2: ... and the largest client update norm is above this.
        warmup_rounds: no split before this round (the paper's reference code waits 20 rounds).
        min_cluster_size: never split a cluster below ``2 * min_cluster_size`` members.
        max_cross_sim: accept a split only if the largest cross-cluster similarity is below this (the
            paper's separation check; ``None``: always accept).
        method: bi-partition method (see :func:`optimal_bipartition`).
        clustering: ``False`` turns CFL into plain FedAvg (one cluster forever), same transport.
        qp: QP of uplink updates (``None``: raw float32).
    """

    eps1: float = 0.4
    eps2: float = 1.6
    warmup_rounds: int = 5
    min_cluster_size: int = 1
    max_cross_sim: float | None = None
    method: str = "exact"
    clustering: bool = True
    qp: int | None = -40

    def replace(self, **kw) -> "CFLConfig":
        return replace(self, **kw)


class ClusterServer:
    """Per-cluster models and the CFL split rule. Clients are any hashable keys.

    ``step(round, updates)`` takes ``{client: (decoded_delta, num_examples)}``, adds each cluster's weighted
    mean update to its model, checks the split criterion per cluster and splits (both halves start from the
    cluster's current model). ``model_for(client)`` is what that client trains from next.
    """

    def __init__(self, base: Tensors, clients, config: CFLConfig | None = None):
        self.config = config or CFLConfig()
        self.clusters: list[list] = [sorted(clients)]
        self.models: list[dict[str, np.ndarray]] = [{k: np.asarray(v, np.float32).copy() for k, v in base.items()}]
        self.history: list[dict] = []       # per round: norms, splits

    def cluster_of(self, client) -> int:
        for i, c in enumerate(self.clusters):
            if client in c:
                return i
        raise KeyError(client)

    def model_for(self, client) -> dict[str, np.ndarray]:
        return self.models[self.cluster_of(client)]

    def step(self, server_round: int, updates: Mapping) -> dict:
        cfg = self.config
        info = {"round": server_round, "clusters": [], "splits": []}
        new_clusters, new_models = [], []
        for members, model in zip(self.clusters, self.models):
            got = [c for c in members if c in updates]
            if not got:
                new_clusters.append(members)
                new_models.append(model)
                continue
            w = np.array([float(updates[c][1]) for c in got])
            w = w / w.sum()
            flat = [flatten(updates[c][0]) for c in got]
            mean = {k: sum(wi * np.asarray(updates[c][0][k], np.float64) for wi, c in zip(w, got))
                    for k in model}
            model = {k: (model[k] + mean[k]).astype(np.float32) for k in model}
            mean_norm = float(np.linalg.norm(flatten(mean)))
            max_norm = float(max(np.linalg.norm(f) for f in flat))
            rec = {"members": list(members), "mean_norm": mean_norm, "max_norm": max_norm}
            info["clusters"].append(rec)
            split = (cfg.clustering and server_round >= cfg.warmup_rounds and mean_norm < cfg.eps1
                     and max_norm > cfg.eps2 and len(got) >= 2 * cfg.min_cluster_size and len(got) == len(members))
            if split:
                S = pairwise_cosine(flat)
                i1, i2 = optimal_bipartition(S, cfg.method)
                cross = max_cross_similarity(S, i1, i2)
                ok = min(len(i1), len(i2)) >= cfg.min_cluster_size and (
                    cfg.max_cross_sim is None or cross < cfg.max_cross_sim)
                rec["cross_sim"] = cross
                if ok:
                    c1, c2 = [got[i] for i in i1], [got[i] for i in i2]
                    info["splits"].append((c1, c2))
                    new_clusters += [sorted(c1), sorted(c2)]
                    new_models += [model, {k: v.copy() for k, v in model.items()}]
                    continue
            new_clusters.append(members)
            new_models.append(model)
        self.clusters, self.models = new_clusters, new_models
        self.history.append(info)
        return info


# --------------------------------------------------------------------------------------------------------
# the in-process loop
# --------------------------------------------------------------------------------------------------------
@dataclass
class CFLResult:
    accuracy: list[float] = field(default_factory=list)      # mean over evaluated clients, per round
    up_bytes: list[int] = field(default_factory=list)
    down_bytes: list[int] = field(default_factory=list)
    clusters: list = field(default_factory=list)             # cluster memberships after each round
    history: list = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "up_bytes": self.up_bytes, "down_bytes": self.down_bytes,
                "clusters": [[list(map(int, c)) for c in cl] for cl in self.clusters], "seconds": self.seconds}


def simulate_cfl(base: Tensors, clients: Mapping, *, config: CFLConfig | None = None, rounds: int = 30,
                 train_fn: Callable, eval_fn: Callable, evaluate_clients=None) -> CFLResult:
    """CFL (or FedAvg with ``clustering=False``) in process, full participation.

    Args:
        base: initial model. ``clients``: ``{client: anything}`` handed to ``train_fn``.
        train_fn: ``(client, model, round) -> (trained_model or None, num_examples, delta_override)``; a
            Byzantine client returns ``delta_override`` (its update, sent as is) instead of a model.
        eval_fn: ``(client, model) -> accuracy`` of the model the client now holds, on its own distribution.
        evaluate_clients: clients averaged into :attr:`CFLResult.accuracy` (default: all).

    Downlink: each client receives its cluster's model as raw float32 (counted as ``nbytes``); uplink:
    each update is an NNC bitstream (:class:`UpdateCodec`), decoded before the server uses it.
    """
    t0 = time.perf_counter()
    cfg = config or CFLConfig()
    codec = UpdateCodec(cfg.qp)
    server = ClusterServer(base, list(clients), cfg)
    ev = list(evaluate_clients) if evaluate_clients is not None else list(clients)
    res = CFLResult(accuracy=[float(np.mean([eval_fn(c, server.model_for(c)) for c in ev]))])
    for r in range(1, rounds + 1):
        ups, ub, db = {}, 0, 0
        for c in clients:
            model = server.model_for(c)
            db += sum(int(v.nbytes) for v in model.values())
            trained, n, override = train_fn(c, model, r)
            delta = override if override is not None else {k: trained[k] - model[k] for k in model}
            payload = codec.encode(delta)
            ub += codec.nbytes(payload)
            ups[c] = (codec.decode(payload, model), n)
        server.step(r, ups)
        res.up_bytes.append(ub)
        res.down_bytes.append(db)
        res.clusters.append([list(c) for c in server.clusters])
        res.accuracy.append(float(np.mean([eval_fn(c, server.model_for(c)) for c in ev])))
    res.history = server.history
    res.seconds = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------------------------------------
# Flower (optional)
# --------------------------------------------------------------------------------------------------------
try:  # pragma: no cover - exercised by the Flower test when flwr is installed
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg as _FlwrFedAvg

    from .flower import from_arrayrecord, query_partitions, to_arrayrecord, wait_for_nodes
except ImportError:  # Flower is optional
    _FlwrFedAvg = None

STYPE_UPDATE = "nnc/cfl-update"

if _FlwrFedAvg is not None:
    __all__ += ["ClusteredFedAvg", "cfl_mod", "STYPE_UPDATE"]

    def cfl_mod(qp: int | None = -40, arrays_key: str = "arrays"):
        """Client Mod: remembers the model it received and replaces the trained model in the reply by the
        nnc-coded update ``trained - received`` (one ``uint8`` Array, ``stype="nnc/cfl-update"``). A train
        function may instead put its own update in the reply under ``"update"`` (e.g. a Byzantine client)."""
        codec = UpdateCodec(qp)

        def mod(msg, ctx, call_next):
            if msg.metadata.message_type != MessageType.TRAIN:
                return call_next(msg, ctx)
            received = from_arrayrecord(msg.content[arrays_key])
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
            if isinstance(payload, bytes):
                reply.content[arrays_key] = ArrayRecord({"nnc.update": Array(
                    dtype="uint8", shape=(len(payload),), stype=STYPE_UPDATE, data=payload)})
            else:
                reply.content[arrays_key] = to_arrayrecord(payload)
            return reply

        return mod

    class ClusteredFedAvg(_FlwrFedAvg):
        """CFL as a Flower strategy: each node is sent its cluster's model, uploads are nnc-coded updates
        (decoded here), :class:`ClusterServer` aggregates per cluster and splits. Every node trains every
        round (set ``min_available_nodes`` to the number of clients). Clients are keyed by node id, or by
        ``partition-id`` when the ClientApp answers a ``query`` (``nnc.fl.flower.partition_query``) and
        ``by_partition=True``. ``self.server`` holds clusters and models; ``self.ledger`` the bytes per round.
        The ArrayRecord returned to Flower (and passed to ``evaluate_fn``) is the first cluster's model.
        """

        def __init__(self, base: Tensors, config: CFLConfig | None = None, *, by_partition: bool = False, **kw):
            kw.setdefault("fraction_evaluate", 0.0)
            super().__init__(**kw)
            self.cfl_config = config or CFLConfig()
            self.codec = UpdateCodec(self.cfl_config.qp)
            self.base = {k: np.asarray(v, np.float32) for k, v in base.items()}
            self.by_partition = by_partition
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
            for node, key in sorted(self._key.items()):
                model = self.server.model_for(key)
                down += sum(int(v.nbytes) for v in model.values())
                cfg = ConfigRecord({**dict(config), "server-round": server_round,
                                    "cfl.cluster": self.server.cluster_of(key)})
                msgs.append(Message(RecordDict({self.arrayrecord_key: to_arrayrecord(model),
                                                self.configrecord_key: cfg}),
                                    message_type=MessageType.TRAIN, dst_node_id=node))
            self.ledger.append({"round": server_round, "down": down, "up": 0})
            return msgs

        def aggregate_train(self, server_round, replies):
            ups, dropped, up = {}, {}, 0
            for msg in replies:
                key = self._key.get(msg.metadata.src_node_id, msg.metadata.src_node_id)
                if msg.has_error():
                    dropped[key] = msg.error.reason
                    continue
                try:
                    rec = msg.content[self.arrayrecord_key]
                    ks = list(rec.keys())
                    if len(ks) == 1 and rec[ks[0]].stype == STYPE_UPDATE:
                        payload = bytes(rec[ks[0]].data)
                    else:
                        payload = from_arrayrecord(rec)
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
                except Exception as e:  # noqa: BLE001 - a malformed upload is dropped
                    dropped[key] = f"{type(e).__name__}: {e}"
            self.dropped[server_round] = dropped
            info = self.server.step(server_round, ups)
            self.ledger[-1]["up"] = up
            metrics = MetricRecord({"cfl.clusters": len(self.server.clusters), "cfl.splits": len(info["splits"]),
                                    "nnc.up-bytes": up, "nnc.down-bytes": self.ledger[-1]["down"]})
            return to_arrayrecord(self.server.models[0]), metrics
