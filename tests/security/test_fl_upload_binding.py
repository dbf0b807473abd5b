"""issue 15 item 3: uploads are bound to their client and round. A replayed upload, another client's bitstream
or a claimed partition id is refused and counted; a duplicate delivery of an accepted upload is applied once
and resets nobody. Runs (and fails by behaviour) on 0b8f26e too."""
import time

import numpy as np
import pytest

from nnc.fl import (
    ClientCodec,
    DownlinkConfig,
    RejectedUpdateError,
    ServerCodec,
    UplinkConfig,
)

UP = UplinkConfig(qp_mode="ternary", sparsity=0.1)     # stateful per-pair stream (TCA) + error feedback
DOWN = DownlinkConfig(mode="nnc", qp=-40)


def _model():
    rng = np.random.default_rng(1)
    return {"w": (0.1 * rng.standard_normal((6, 10))).astype(np.float32), "b": np.zeros(6, np.float32)}


def _client(base, name, **kw):
    try:
        return ClientCodec(base, UP, DOWN, client=name, **kw)
    except TypeError:
        return ClientCodec(base, UP, DOWN)


def _upload(server, cc, name, rnd):
    m = cc.receive(server.downlink_for(name))
    rng = np.random.default_rng([rnd, ord(name[0])])
    return cc.encode({k: v + 0.02 * rng.standard_normal(v.shape).astype(np.float32) for k, v in m.items()}, 10)


def _setup(**server_kw):
    base = _model()
    server = ServerCodec(base, UP, DOWN, **server_kw)
    clients = {n: _client(base, n) for n in ("a", "b", "c")}
    return base, server, clients


def _category(server, client):
    for rec in server.ledger:
        if client in getattr(rec, "rejected", {}):
            return rec.rejected[client]
    return None


def test_replayed_upload_from_an_earlier_round_is_refused_and_counted():
    base, server, clients = _setup()
    ups = {n: _upload(server, cc, n, 1) for n, cc in clients.items()}
    server.step(ups)
    replay = ups["a"]                                    # captured in round 1, sent again in round 2
    model_before = {k: v.copy() for k, v in server.model.items()}
    ups2 = {n: _upload(server, cc, n, 2) for n, cc in clients.items() if n != "a"}
    ups2["a"] = replay
    _, dropped = server.step(ups2)
    assert "a" in dropped                                 # 0b8f26e: applied a second time
    assert _category(server, "a") == "replay"
    assert "a" not in server.pending_reset                # a forged upload does not reset the honest client
    assert server.round == 2 and not np.array_equal(model_before["w"], server.model["w"])


def test_another_clients_bitstream_is_refused():
    base, server, clients = _setup()
    ups = {n: _upload(server, cc, n, 1) for n, cc in clients.items()}
    stolen = ups["a"]
    server.downlink_for("mallory")
    with pytest.raises(RejectedUpdateError):             # 0b8f26e: accepted as mallory's update
        server.receive("mallory", stolen)
    assert _category(server, "mallory") == "identity"


def test_duplicate_delivery_is_applied_once_and_resets_nobody():
    base, server, clients = _setup()
    ups = {n: _upload(server, cc, n, 1) for n, cc in clients.items()}
    deltas = {n: (server.receive(n, m), 10) for n, m in ups.items()}
    with pytest.raises(RejectedUpdateError) as ei:       # the transport delivered a's upload twice
        server.receive("a", ups["a"])
    assert type(ei.value).__name__ == "DuplicateUploadError"
    assert "a" not in server.pending_reset and server.ledger[-1].duplicates == {"a": 1}
    server.aggregate(deltas)
    # the pair's stream is intact: a's next upload decodes and is accepted
    server.receive("a", _upload(server, clients["a"], "a", 2))


def test_forged_round_is_refused_with_keys():
    base = _model()
    keys = {"a": b"secret-a", "b": b"secret-b"}
    server = ServerCodec(base, UP, DOWN, keys=keys)       # 0b8f26e: no keys -> TypeError
    a = ClientCodec(base, UP, DOWN, client="a", key=keys["a"])
    up = _upload(server, a, "a", 1)
    up.round = 2                                           # relabelled to pass the round check later
    with pytest.raises(RejectedUpdateError):
        server.receive("a", up)
    assert _category(server, "a") == "identity"
    up.round = 1
    server.receive("a", up)                                # the genuine one still goes through


def test_claimed_partition_id_cannot_displace_another_node(monkeypatch):
    pytest.importorskip("flwr")
    from support.flower_grid import PartitionGrid

    from nnc.fl.flower import NNCFedAvg

    from flwr.supercore.task_identity import (
        TaskIdentity,  # query messages are built outside a ServerApp
    )
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1, raising=False)
    st = NNCFedAvg(_model(), UP, DOWN, by_partition=True)
    st._discover(PartitionGrid({7: 0, 8: 1, 9: 0}))   # node 7 holds partition 0; node 9 claims it as well
    assert st._node_of[0] == 7                             # 0b8f26e: node 9 took partition 0 over
    assert st._node_of[1] == 8


def test_nnc_fedavg_with_keys_refuses_an_upload_without_the_nodes_secret():
    pytest.importorskip("flwr")
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
    from nnc.fl.flower import NNCFedAvg

    up = UplinkConfig(mode="float32", error_feedback=False)
    base = _model()
    st = NNCFedAvg(base, up, DownlinkConfig(), keys={1: b"k1", 2: b"k2"})   # 0b8f26e: no keys argument

    def reply(node, rnd_claimed, key):
        st.server.downlink_for(node)
        cc = ClientCodec(base, up, DownlinkConfig(), client=str(node), key=key)
        m = cc.encode_update({k: np.full_like(v, 0.01) for k, v in base.items()}, 10)
        binding = {"nnc.client": str(node), "nnc.round": rnd_claimed, "nnc.tag": m.tag}
        md = Metadata(run_id=0, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                      group_id="", created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN)
        return Message(content=RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in m.payload.items()}),
                                           "metrics": MetricRecord({"num-examples": 10}),
                                           "nnc.uplink": ConfigRecord(binding)}), metadata=md)

    good = reply(1, 1, b"k1")
    forged = reply(2, 1, b"wrong")          # a tag made without node 2's secret
    st.aggregate_train(1, [good, forged])
    assert 1 not in st.dropped[1] and st.server.ledger[0].rejected == {2: "identity"}
