"""ClusteredFedAvg under Flower's run_simulation: splits a constructed two-concept federation, nnc-coded uplink."""
import os

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from nnc.fl.clustered import CFLConfig  # noqa: E402
from nnc.fl.flower import ClusteredFedAvg, cfl_mod  # noqa: E402
from nnc.fl.flower import partition_query  # noqa: E402

N = 4


def test_clustered_fedavg_run_simulation_splits_incongruent_clients():
    # clients 0,1 pull the weights towards +target, clients 2,3 towards -target: the mean update vanishes
    target = np.linspace(0.5, 1.5, 12, dtype=np.float32).reshape(3, 4)
    base = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(3, np.float32)}

    app_c = ClientApp(mods=[cfl_mod(qp=-40)])

    @app_c.train()
    def train(msg, ctx):
        pid = int(ctx.node_config["partition-id"])
        w = msg.content["arrays"]["w"].numpy()
        goal = target if pid < N // 2 else -target
        new = {"w": (w + 0.5 * (goal - w)).astype(np.float32), "b": msg.content["arrays"]["b"].numpy()}
        rec = ArrayRecord({k: __import__("flwr").app.Array(v) for k, v in new.items()})
        return Message(RecordDict({"arrays": rec, "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    app_c.query()(partition_query)
    out = {}
    app_s = ServerApp()

    @app_s.main()
    def main(grid, ctx):
        st = ClusteredFedAvg(base, CFLConfig(eps1=0.5, eps2=1.0, warmup_rounds=1, max_cross_sim=0.0),
                             by_partition=True, min_available_nodes=N, min_train_nodes=N, fraction_train=1.0)
        st.start(grid=grid, initial_arrays=ArrayRecord({k: __import__("flwr").app.Array(v) for k, v in base.items()}),
                 num_rounds=4)
        out.update(clusters=st.server.clusters, models=st.server.models, ledger=st.ledger, dropped=st.dropped)

    run_simulation(app_s, app_c, num_supernodes=N,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    assert sorted(map(sorted, out["clusters"])) == [[0, 1], [2, 3]]
    m0 = out["models"][[i for i, c in enumerate(out["clusters"]) if 0 in c][0]]["w"]
    m2 = out["models"][[i for i, c in enumerate(out["clusters"]) if 2 in c][0]]["w"]
    assert np.abs(m0 - target).max() < 0.3 and np.abs(m2 + target).max() < 0.3
    assert all(r["up"] > 0 and r["down"] == N * 60 for r in out["ledger"])      # float32 downlink: 15 values
    assert not any(out["dropped"].values())
