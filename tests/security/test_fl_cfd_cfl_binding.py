"""issue 15 item 3 for the distillation (CFD) and clustered (CFL) Flower strategies: their uploads are bound
to client and round with the transport's UploadBinding, as NNCFedAvg's. A replayed upload, another client's
upload and an upload for another round are refused before decoding and counted; honest rounds are unchanged;
with keys, an upload without the client's tag is refused. The clients run the real Mods (cfd_mod, cfl_mod)
on messages the strategies' configure_train built; the grid and the transport are faked."""
import time

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata  # noqa: E402
from flwr.app import MetricRecord, RecordDict  # noqa: E402

from nnc.fl.distill import LabelCodecConfig  # noqa: E402
from nnc.fl.flower import CFDFedAvg, ClusteredFedAvg, cfd_mod, cfl_mod  # noqa: E402
from nnc.fl.flower.fedavg import UPLINK_KEY  # noqa: E402
from support.flower_grid import PartitionGrid  # noqa: E402

NODES = {7: 0, 8: 1, 9: 2}          # node id -> partition id
SHAPE = (6, 3)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity   # messages are built outside a ServerApp
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1, raising=False)


def _contexts():
    return {n: Context(run_id=0, node_id=n, node_config={"partition-id": p}, state=RecordDict(), run_config={})
            for n, p in NODES.items()}


def _run_clients(msgs, mod, train, ctxs):
    """Each message through ``mod`` around ``train`` on its node, as the ClientApp would."""
    return {m.metadata.dst_node_id: mod(m, ctxs[m.metadata.dst_node_id], train) for m in msgs}


def _rej(st, rnd) -> dict:
    """What the strategy refused in round ``rnd`` (client -> category)."""
    return getattr(st, "rejected", {}).get(rnd, {})


def _as_from(reply: Message, node: int) -> Message:
    """``reply``'s content as if node ``node`` had sent it (a client relaying another client's upload)."""
    md = Metadata(run_id=0, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                  group_id="", created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN)
    return Message(content=reply.content, metadata=md)


# ---------------------------------------------------------------------------------------------------------
# CFD
# ---------------------------------------------------------------------------------------------------------
CODEC = LabelCodecConfig(bits=2)


def _cfd_train(rnd):
    def train(msg, ctx):
        p = int(ctx.node_config["partition-id"])
        rng = np.random.default_rng([rnd[0], p])
        probs = rng.dirichlet(np.ones(SHAPE[1]), size=SHAPE[0]).astype(np.float32)
        return Message(RecordDict({"arrays": ArrayRecord({"soft-labels": Array(probs)}),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)
    return train


def _cfd(keys=None, key_fn=None):
    st = CFDFedAvg(SHAPE, up=CODEC, min_available_nodes=3, **({"keys": keys} if keys else {}))
    mod = cfd_mod(SHAPE, up=CODEC, **({"key_fn": key_fn} if key_fn else {}))
    return st, mod, _contexts(), PartitionGrid(NODES)


def _round(st, mod, ctxs, grid, rnd, train, tamper=None):
    """One round: configure, the clients' replies (``tamper`` may change them), aggregate; returns the replies."""
    msgs = list(st.configure_train(rnd, ArrayRecord(), ConfigRecord(), grid))
    replies = _run_clients(msgs, mod, train, ctxs)
    if tamper is not None:
        replies = tamper(replies)
    st.aggregate_train(rnd, list(replies.values()))
    return replies


def _claiming_round(claimed: int):
    """A tamper for :func:`_round`: node 8's upload binding claims round ``claimed``."""
    def tamper(replies):
        rec = replies[8].content[UPLINK_KEY]
        replies[8].content[UPLINK_KEY] = ConfigRecord({"nnc.client": rec["nnc.client"], "nnc.round": claimed})
        return replies
    return tamper


def _cfd_round(st, mod, ctxs, grid, rnd, tamper=None):
    return _round(st, mod, ctxs, grid, rnd, _cfd_train([rnd]), tamper)


def test_cfd_honest_rounds_are_accepted_and_bound():
    st, mod, ctxs, grid = _cfd()
    for rnd in (1, 2, 3):
        replies = _cfd_round(st, mod, ctxs, grid, rnd)
        assert all(UPLINK_KEY in r.content.config_records for r in replies.values())
        assert st.dropped[rnd] == {} and _rej(st, rnd) == {}
    assert st.global_labels is not None and st.global_labels.shape == SHAPE


def test_cfd_replayed_upload_is_refused_and_counted():
    st, mod, ctxs, grid = _cfd()
    first = _cfd_round(st, mod, ctxs, grid, 1)
    labels_before = st.global_labels.copy()

    def replay(replies):             # node 7 sends its round-1 reply again in round 2
        replies[7] = _as_from(first[7], 7)
        return replies

    _cfd_round(st, mod, ctxs, grid, 2, replay)
    assert _rej(st, 2) == {0: "replay"} and 0 in st.dropped[2]   # old code: decoded and averaged
    assert not np.array_equal(st.global_labels, labels_before)     # the honest uploads still count
    assert 0 not in st._reset_up                                    # a refused binding resets nothing
    _cfd_round(st, mod, ctxs, grid, 3)                              # node 7's own link is intact
    assert st.dropped[3] == {}


def test_cfd_another_clients_upload_is_refused():
    st, mod, ctxs, grid = _cfd()

    def steal(replies):              # node 9 answers with node 8's upload
        replies[9] = _as_from(replies[8], 9)
        return replies

    _cfd_round(st, mod, ctxs, grid, 1, steal)
    assert _rej(st, 1) == {2: "identity"}
    assert set(st.dropped[1]) == {2}


def test_cfd_upload_for_another_round_is_refused_and_keys_authenticate():
    keys = {p: f"k{p}".encode() for p in NODES.values()}
    st, mod, ctxs, grid = _cfd(keys=keys, key_fn=lambda ctx: f"k{ctx.node_config['partition-id']}".encode())
    _cfd_round(st, mod, ctxs, grid, 1)
    assert st.dropped[1] == {}

    def relabel(replies):            # node 8 rewrites its binding to another round / without its key
        rec = replies[8].content[UPLINK_KEY]
        replies[8].content[UPLINK_KEY] = ConfigRecord({"nnc.client": rec["nnc.client"], "nnc.round": 3,
                                                       "nnc.tag": rec["nnc.tag"]})
        return replies

    _cfd_round(st, mod, ctxs, grid, 2, relabel)
    assert _rej(st, 2) == {1: "identity"}          # the tag does not cover round 3

    st2, mod2, ctxs2, grid2 = _cfd()

    _cfd_round(st2, mod2, ctxs2, grid2, 1, _claiming_round(5))
    assert _rej(st2, 1) == {1: "future-round"}


# ---------------------------------------------------------------------------------------------------------
# CFL
# ---------------------------------------------------------------------------------------------------------
BASE = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(3, np.float32)}


def _cfl_train(rnd):
    def train(msg, ctx):
        p = int(ctx.node_config["partition-id"])
        rng = np.random.default_rng([rnd[0], p])
        new = {k: (msg.content["arrays"][k].numpy() + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
               for k, v in BASE.items()}
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)
    return train


def _cfl(keys=None, key_fn=None):
    st = ClusteredFedAvg(BASE, by_partition=True, min_available_nodes=3, **({"keys": keys} if keys else {}))
    return st, cfl_mod(qp=-40, **({"key_fn": key_fn} if key_fn else {})), _contexts(), PartitionGrid(NODES)


def _cfl_round(st, mod, ctxs, grid, rnd, tamper=None):
    return _round(st, mod, ctxs, grid, rnd, _cfl_train([rnd]), tamper)


def test_cfl_honest_rounds_are_accepted_and_bound():
    st, mod, ctxs, grid = _cfl()
    for rnd in (1, 2):
        replies = _cfl_round(st, mod, ctxs, grid, rnd)
        assert all(UPLINK_KEY in r.content.config_records for r in replies.values())
        assert st.dropped[rnd] == {} and _rej(st, rnd) == {} and st.ledger[-1].get("rejected") == {}
    assert not np.array_equal(st.server.models[0]["w"], BASE["w"])


def test_cfl_replay_and_another_clients_upload_are_refused_and_counted():
    st, mod, ctxs, grid = _cfl()
    first = _cfl_round(st, mod, ctxs, grid, 1)

    def attack(replies):             # node 7 replays its round-1 upload; node 9 relays node 8's upload
        replies[7] = _as_from(first[7], 7)
        replies[9] = _as_from(replies[8], 9)
        return replies

    model_before = st.server.models[0]["w"].copy()
    _cfl_round(st, mod, ctxs, grid, 2, attack)
    assert _rej(st, 2) == {0: "replay", 2: "identity"}   # old code: both applied
    assert st.ledger[-1].get("rejected") == {0: "replay", 2: "identity"}
    assert set(st.dropped[2]) == {0, 2}
    assert not np.array_equal(st.server.models[0]["w"], model_before)   # node 8's honest update applied
    _cfl_round(st, mod, ctxs, grid, 3)
    assert st.dropped[3] == {}


def test_cfl_duplicate_delivery_is_applied_once_and_wrong_round_refused():
    st, mod, ctxs, grid = _cfl()
    msgs = list(st.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    replies = _run_clients(msgs, mod, _cfl_train([1]), ctxs)
    st.aggregate_train(1, list(replies.values()) + [replies[8]])    # node 8's reply delivered twice
    assert st.dropped[1] == {} and _rej(st, 1) == {}

    _cfl_round(st, mod, ctxs, grid, 2, _claiming_round(9))
    assert _rej(st, 2) == {1: "future-round"}


def test_cfl_with_keys_refuses_an_upload_without_the_clients_tag():
    keys = {p: f"k{p}".encode() for p in NODES.values()}
    st, mod, ctxs, grid = _cfl(keys=keys, key_fn=lambda ctx: f"k{ctx.node_config['partition-id']}".encode())
    _cfl_round(st, mod, ctxs, grid, 1)
    assert st.dropped[1] == {}
    st2, mod2, ctxs2, grid2 = _cfl(keys=keys, key_fn=lambda ctx: b"not the key")
    _cfl_round(st2, mod2, ctxs2, grid2, 1)
    assert _rej(st2, 1) == {0: "identity", 1: "identity", 2: "identity"}
