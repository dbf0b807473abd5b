"""Clustered FL on Flower with a PyTorch model (issue 18: the CFL strategy serves a real model). Two groups of
clients with incongruent labels (group B's labels are shifted by 5); ClusteredFedAvg must split them and
each cluster's torch model must fit its own group."""
import os

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from nnc.fl.clustered import CFLConfig  # noqa: E402
from nnc.fl.flower import ClusteredFedAvg, cfl_mod, partition_query  # noqa: E402

N, ROUNDS = 4, 8


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 10))


def test_cfl_on_flower_with_a_torch_model_splits_incongruent_groups():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)

    def labels(pid):
        return y if pid < N // 2 else (y + 5) % 10

    app_c = ClientApp(mods=[cfl_mod(qp=-40)])

    @app_c.train()
    def train(msg, ctx):
        torch.set_num_threads(1)
        pid = int(ctx.node_config["partition-id"])
        m = _net()
        m.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        idx = torch.arange(pid, 1200, N)
        for i in range(0, len(idx), 64):
            b = idx[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(X[b]), labels(pid)[b]).backward()
            opt.step()
        return Message(RecordDict({"arrays": ArrayRecord(m.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(idx)})}), reply_to=msg)

    app_c.query()(partition_query)
    base = {k: v.numpy().copy() for k, v in _net().state_dict().items()}
    out = {}
    app_s = ServerApp()

    @app_s.main()
    def main(grid, ctx):
        st = ClusteredFedAvg(base, CFLConfig(eps1=10.0, eps2=0.0, warmup_rounds=3, max_cross_sim=0.0),
                             by_partition=True, min_available_nodes=N, min_train_nodes=N, fraction_train=1.0)
        st.start(grid=grid, initial_arrays=ArrayRecord(_net().state_dict()), num_rounds=ROUNDS)
        out.update(server=st.server, ledger=st.ledger, dropped=st.dropped)

    run_simulation(app_s, app_c, num_supernodes=N,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    server = out["server"]
    assert not any(out["dropped"].values())
    assert sorted(map(sorted, server.clusters)) == [[0, 1], [2, 3]], server.history
    held = torch.arange(1200, len(X))
    for pid in (0, N - 1):
        m = _net()
        m.load_state_dict({k: torch.tensor(v) for k, v in server.model_for(pid).items()})
        with torch.no_grad():
            acc = float((m(X[held]).argmax(1) == labels(pid)[held]).float().mean())
        assert acc > 0.8, (pid, acc)
    assert all(r["up"] > 0 for r in out["ledger"])
    print("CFL torch: clusters", server.clusters, "up bytes", [r["up"] for r in out["ledger"]])
