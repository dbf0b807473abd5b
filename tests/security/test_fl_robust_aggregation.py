"""issue 15 item 2: Byzantine-robust aggregation. On Flower, NNCFedAvg composes nnc's decoding/validation and
downlink coding with Flower's own strategies (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan) through
``aggregator=``; in process, RoundPolicy offers the coordinate-wise median and trimmed mean. A poisoned update
inside the norm bound (~5x the others, opposite direction) must not move the model the way it does under the
plain mean. Fails on 0b8f26e (no aggregator, no policy)."""
import time

import numpy as np
import pytest

from nnc.fl import ClientCodec, DownlinkConfig, ServerCodec, UplinkConfig

UP = UplinkConfig(mode="float32", error_feedback=False)
HONEST = {"a": 0.010, "b": 0.011, "c": 0.012, "d": 0.013, "e": 0.014, "f": 0.015}
POISON = -0.060          # 4.8x the median norm: under the default bound (5x the median), so it is admitted
LO, HI = 0.0095, 0.0155  # the honest range (with nnc's downlink lattice step of 2^-10)


def _base():
    return {"w": np.zeros((4, 5), np.float32), "b": np.zeros(4, np.float32)}


def _delta(v):
    return {k: np.full(s.shape, v, np.float32) for k, s in _base().items()}


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_in_process_robust_rules(rule):
    from nnc.fl import RoundPolicy
    down = DownlinkConfig()
    ups = {c: ClientCodec(_base(), UP, down, client=c).encode_update(_delta(v), 10) for c, v in HONEST.items()}
    ups["evil"] = ClientCodec(_base(), UP, down, client="evil").encode_update(_delta(POISON), 10)
    mean_model, _ = ServerCodec(_base(), UP, down).step(ups)
    assert mean_model["w"][0, 0] < LO                                  # the plain mean is dragged out of it
    robust, _ = ServerCodec(_base(), UP, down, policy=RoundPolicy(aggregation=rule)).step(
        {c: ClientCodec(_base(), UP, down, client=c).encode_update(_delta(v), 10)
         for c, v in {**HONEST, "evil": POISON}.items()})
    assert LO <= robust["w"][0, 0] <= HI                                # within the honest values


def _reply(content, node):
    from flwr.app import Message, MessageType, Metadata
    md = Metadata(run_id=0, message_id="", src_node_id=int(node), dst_node_id=0, reply_to_message_id="",
                  group_id="", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
    return Message(content=content, metadata=md)


def _replies(values):
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    out = []
    for node, v in values.items():
        d = _delta(v)
        out.append(_reply(RecordDict({"arrays": ArrayRecord({k: Array(x) for k, x in d.items()}),
                                      "metrics": MetricRecord({"num-examples": 10}),
                                      "nnc.uplink": ConfigRecord({"nnc.client": str(node), "nnc.round": 1})}),
                          node))
    return out


def _strategies():
    from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
    return {"FedMedian": FedMedian(), "FedTrimmedAvg": FedTrimmedAvg(beta=0.2),
            "Krum": Krum(num_malicious_nodes=1), "MultiKrum": MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3),
            "Bulyan": Bulyan(num_malicious_nodes=1)}


@pytest.mark.parametrize("name", ["FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan"])
def test_nnc_fedavg_composes_flowers_robust_strategies(name):
    pytest.importorskip("flwr")
    from nnc.fl.flower import NNCFedAvg
    values = {i + 1: v for i, v in enumerate([*HONEST.values(), POISON])}
    plain = NNCFedAvg(_base(), UP, DownlinkConfig())
    for n in values:
        plain.server.downlink_for(n)
    arrays, _ = plain.aggregate_train(1, _replies(values))
    assert arrays["w"].numpy()[0, 0] < LO
    st = NNCFedAvg(_base(), UP, DownlinkConfig(mode="nnc", qp=-40), aggregator=_strategies()[name])
    for n in values:
        st.server.downlink_for(n)
    arrays, _ = st.aggregate_train(1, _replies(values))                # 0b8f26e: no aggregator argument
    got = float(arrays["w"].numpy()[0, 0])
    assert LO <= got <= HI, got
    assert st.server.round == 1 and st.server.ledger[0].rejected == {}
