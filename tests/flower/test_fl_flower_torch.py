"""A PyTorch model with BatchNorm on Flower through nnc_mod + NNCFedAvg, the way a user writes it: the train
function loads ``msg.content["arrays"].to_torch_state_dict()`` and replies with ``ArrayRecord(model.state_dict())``.

Both things this needs were broken before: the 0-d int64 ``num_batches_tracked`` (NNC codes 0-d tensors with
shape (1,), so every upload was rejected) and the running statistics under top-k + ternary + error feedback
(the running variance went negative and the model collapsed to one class)."""
import os

import pytest

flwr = pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from nnc.fl import DownlinkConfig, UplinkConfig  # noqa: E402
from nnc.fl.flower import NNCFedAvg, from_arrayrecord, nnc_mod  # noqa: E402

NODES, ROUNDS = 3, 5


def test_pytorch_batchnorm_cnn_trains_with_sparse_ternary_uplink_and_coded_downlink():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10))

    def base_fn():
        return {k: v.numpy().copy() for k, v in net().state_dict().items()}

    up = UplinkConfig(qp_mode="ternary", sparsity=0.05)
    down = DownlinkConfig(mode="nnc", qp=-40, sparsity=0.1)
    app_c = ClientApp(mods=[nnc_mod(base_fn, up, down)])

    @app_c.train()
    def train(msg, ctx):
        part = torch.arange(int(ctx.node_config["partition-id"]), 1500, NODES)
        model = net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        for i in range(0, len(part), 32):
            b = part[i:i + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[b]), y[b]).backward()
            opt.step()
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(part)})}), reply_to=msg)

    out = {}
    app_s = ServerApp()

    @app_s.main()
    def main(grid, ctx):
        st = NNCFedAvg(base_fn(), up, down, fraction_train=1.0, min_available_nodes=NODES, min_train_nodes=NODES)
        accs = []

        def evaluate(rnd, arrays):
            model = net()
            model.load_state_dict({k: torch.as_tensor(v) for k, v in from_arrayrecord(arrays).items()})
            model.eval()
            with torch.no_grad():
                accs.append(float((model(X[1500:]).argmax(1) == y[1500:]).float().mean()))
            return MetricRecord({"accuracy": accs[-1]})

        st.start(grid=grid, initial_arrays=ArrayRecord(net().state_dict()), num_rounds=ROUNDS, evaluate_fn=evaluate)
        out.update(acc=accs, up=[r.up_bytes for r in st.server.ledger], dropped=st.dropped,
                   model={k: v.copy() for k, v in st.server.model.items()})

    run_simulation(app_s, app_c, num_supernodes=NODES,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    assert all(not d for d in out["dropped"].values()), out["dropped"]
    assert len(out["up"]) == ROUNDS and all(0 < b < 4000 for b in out["up"]), out["up"]
    assert out["acc"][-1] > 0.75, out["acc"]  # dense float32 FedAvg: 0.88 after 5 rounds
    assert out["model"]["1.running_var"].min() > 0
    assert out["model"]["1.num_batches_tracked"].shape == () and float(out["model"]["1.num_batches_tracked"]) > 0
