"""issue 15 item 1: a round is a transaction. One upload (or an honest client that diverges) cannot break the
round, poison the global model, or leave the server without a broadcast. Each test fails on 0b8f26e."""
import numpy as np
import pytest

import nnc
import nnc.codec as _codec
import nnc.fl
from nnc.fl import ClientCodec, DownlinkConfig, ServerCodec, UplinkConfig, UplinkMessage

# written so that they run (and fail by behaviour) on the tree before the fix too, which lacks these names
RoundPolicy = getattr(nnc.fl, "RoundPolicy", None)
OFF = RoundPolicy(median_factor=None, model_factor=None) if RoundPolicy else "off"   # culprit search alone


def _server(base, up, down, policy=None):
    if RoundPolicy is None:
        return ServerCodec(base, up, down)
    return ServerCodec(base, up, down, policy=policy)


def _client(base, up, down, client):
    try:
        return ClientCodec(base, up, down, client=client)
    except TypeError:
        return ClientCodec(base, up, down)


def _msg(payload, n, client, rnd):
    m = UplinkMessage(payload, n)
    m.client, m.round = client, rnd
    return m


def _model():
    rng = np.random.default_rng(0)
    return {"fc.weight": (0.1 * rng.standard_normal((8, 16))).astype(np.float32),
            "fc.bias": np.zeros(8, np.float32)}


def _honest_round(server, clients, rnd, extra=None):
    """Every client syncs and uploads a small update; ``extra`` adds uploads (attackers)."""
    ups = {}
    for c, cc in clients.items():
        m = cc.receive(server.downlink_for(c))
        rng = np.random.default_rng([rnd, len(str(c))])
        ups[c] = cc.encode({k: v + 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in m.items()},
                           num_examples=10)
    ups.update(extra or {})
    return ups


def _evil_update(base, down, value):
    """A well-formed upload from a fresh client whose delta holds ``value`` in one tensor."""
    cc = _client(base, UplinkConfig(), down, "evil")
    d = {k: np.zeros_like(v) for k, v in base.items()}
    d["fc.weight"][0, 0] = value
    return cc.encode_update(d, num_examples=10)


@pytest.mark.parametrize("policy", [OFF, None], ids=["culprit-search", "default-norm-bound"])
def test_huge_finite_delta_cannot_break_the_broadcast(policy):
    base = _model()
    down = DownlinkConfig(mode="nnc", qp=-40)
    server = _server(base, UplinkConfig(), down, policy)
    honest = {c: _client(base, UplinkConfig(), down, c) for c in ("a", "b", "c")}
    ups = _honest_round(server, honest, 1, {"evil": _evil_update(base, down, 1e7)})
    model, dropped = server.step(ups)                               # 0b8f26e: raises while coding the broadcast
    assert server.round == 1 and 1 in server._broadcasts
    assert all(np.isfinite(v).all() for v in model.values())
    assert np.abs(model["fc.weight"] - base["fc.weight"]).max() < 1.0     # the 1e7 did not get through
    for c in ("a", "b", "c", "newcomer"):                            # every later downlink works
        server.downlink_for(c)
    if policy is OFF:
        assert "evil" in dropped and server.ledger[0].rejected["evil"] == "aggregate"
        # the honest updates were applied exactly as without the attacker
        ref = _server(base, UplinkConfig(), down, OFF)
        ref_clients = {c: _client(base, UplinkConfig(), down, c) for c in ("a", "b", "c")}
        ref_model, _ = ref.step(_honest_round(ref, ref_clients, 1))
        assert all(np.array_equal(model[k], ref_model[k]) for k in model)
    else:
        assert server.ledger[0].clipped["evil"] > 1e6 and server.ledger[0].rejected["evil"] == "norm-bound"


def test_diverging_honest_client_is_bounded_by_default():
    # an honest client whose training diverged (finite but enormous) must not take the model with it
    base = _model()
    server = ServerCodec(base, UplinkConfig(mode="float32", error_feedback=False), DownlinkConfig())
    ups = {}
    for c in ("a", "b", "c", "d"):
        d = {k: np.full_like(v, 0.01) for k, v in base.items()}
        if c == "d":
            d = {k: np.full_like(v, 1e30) for k, v in base.items()}
        ups[c] = _msg(d, 10, c, 1)
    model, _ = server.step(ups)
    step = max(float(np.abs(model[k] - base[k]).max()) for k in model)
    assert step < 0.1, step                                           # 0b8f26e: 2.5e29
    assert "d" in server.ledger[0].clipped


def _codebook_overflow_upload(mps_qp=100):
    """45 bytes: the MPS signals qp_density 0 and base QP 100, so a codebook entry 2^30 decodes to 2^130 (finite
    in float64, beyond float32). Crafted by patching what the encoder writes into the MPS."""
    orig = _codec.bs.mps_unit

    def patched(**kw):
        kw["qp_density"], kw["quantization_parameter"] = 0, mps_qp
        return orig(**kw)

    _codec.bs.mps_unit = patched
    try:
        w = np.zeros((8, 16), np.float32)
        w[0, 0], w[0, 1] = 2.0 ** 30, 1.0
        return nnc.encode({"fc.weight": w}, nnc.EncoderConfig(qp=0, nonweight_qp=0, qp_density=0,
                                                                codebook="force", dq=False))
    finally:
        _codec.bs.mps_unit = orig


def test_codebook_value_times_step_overflowing_float32_is_refused():
    data = _codebook_overflow_upload()
    assert len(data) < 64 and np.abs(nnc.decode(data)["fc.weight"]).max() > np.finfo(np.float32).max
    base = _model()
    server = ServerCodec(base, UplinkConfig(), DownlinkConfig())
    model, dropped = server.step({"evil": _msg(data, 10, "evil", 1)})
    assert all(np.isfinite(v).all() for v in model.values())          # 0b8f26e: inf after one round
    assert "evil" in dropped and server.ledger[0].rejected["evil"] == "invalid"


def test_max_float_twice_cannot_reach_inf():
    base = _model()
    server = ServerCodec(base, UplinkConfig(mode="float32", error_feedback=False), DownlinkConfig())
    big = np.finfo(np.float32).max
    for rnd in (1, 2):
        up = {k: np.full_like(v, big) for k, v in base.items()}
        server.step({"evil": _msg(up, 10, "evil", rnd)})
        assert all(np.isfinite(v).all() for v in server.model.values()), rnd    # 0b8f26e: inf in round 2
    assert server.round == 2


def test_nan_update_cannot_poison_a_cfl_cluster():
    from nnc.fl.clustered import ClusterServer
    base = _model()
    srv = ClusterServer(base, ["a", "b", "evil"])
    good = {k: np.full_like(v, 0.01) for k, v in base.items()}
    bad = {k: np.full_like(v, np.nan) for k, v in base.items()}
    info = srv.step(1, {"a": (good, 10), "b": (good, 10), "evil": (bad, 10)})
    assert all(np.isfinite(v).all() for v in srv.model_for("a").values())   # 0b8f26e: NaN model
    assert "evil" in info["dropped"]
    assert np.allclose(srv.model_for("a")["fc.bias"], 0.01)


def test_nnc_fedavg_round_survives_a_broadcast_breaking_upload():
    pytest.importorskip("flwr")
    from flwr.app import ConfigRecord, MetricRecord, RecordDict
    from flwr.app import ArrayRecord
    from nnc.fl.flower import STYPE_UPDATE, NNCFedAvg
    from nnc.fl.flower import to_arrayrecord  # noqa: F401 - present before and after the change
    base = _model()
    down = DownlinkConfig(mode="nnc", qp=-40)
    st = NNCFedAvg(base, UplinkConfig(), down, **({"policy": OFF.replace(require_binding=True)} if RoundPolicy else {}))
    replies = []
    for node, value in ((1, 0.01), (2, 0.02), (3, 1e7)):
        st.server.downlink_for(node)
        cc = _client(base, UplinkConfig(), down, str(node))
        d = {k: np.zeros_like(v) for k, v in base.items()}
        d["fc.weight"][0, 0] = value
        up = cc.encode_update(d, 10)
        replies.append(_reply(RecordDict({
            "arrays": ArrayRecord({"nnc.update": _bytes(up.payload, STYPE_UPDATE)}),
            "metrics": MetricRecord({"num-examples": 10}),
            "nnc.uplink": ConfigRecord({"nnc.client": str(node), "nnc.round": 1})}), node))
    arrays, metrics = st.aggregate_train(1, replies)                  # 0b8f26e: raises
    assert st.server.round == 1 and 3 in st.dropped[1] and 1 not in st.dropped[1]
    assert abs(float(arrays["fc.weight"].numpy()[0, 0] - base["fc.weight"][0, 0]) - 0.015) < 1e-3


def _bytes(data, stype):
    from flwr.app import Array
    return Array(dtype="uint8", shape=(len(data),), stype=stype, data=bytes(data))


def _reply(content, node):
    import time
    from flwr.app import Message, MessageType, Metadata
    md = Metadata(run_id=0, message_id="", src_node_id=int(node), dst_node_id=0, reply_to_message_id="",
                  group_id="", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
    return Message(content=content, metadata=md)
