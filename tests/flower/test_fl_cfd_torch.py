"""CFD on Flower with a PyTorch model on both sides (issue 18: the CFD strategy takes the server model as an
argument instead of hard-wiring the numpy MLP). The clients are torch MLPs whose weights stay on the node
(``context.state``); only nnc-coded soft labels travel; the server distils its own torch model."""
import os

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from nnc.fl.distill import LabelCodecConfig  # noqa: E402
from nnc.fl.flower import CFDFedAvg, cfd_mod, from_arrayrecord, partition_query  # noqa: E402
from nnc.fl.flower.cfd import TARGET_KEY  # noqa: E402
from nnc.fl.selection import seeded_fraction  # noqa: E402

N, ROUNDS, PUBLIC = 3, 4, 300


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _state(m):
    return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


def _load(arrays):
    m = _net()
    m.load_state_dict({k: torch.tensor(v) for k, v in arrays.items()})
    return m


def _fit(m, x, target, *, soft, epochs=3, lr=0.1):
    torch.set_num_threads(1)
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            b = order[i:i + 32]
            opt.zero_grad()
            logp = torch.log_softmax(m(x[b]), 1)
            loss = -(target[b] * logp).sum(1).mean() if soft else torch.nn.functional.nll_loss(logp, target[b])
            loss.backward()
            opt.step()
    return m


def test_cfd_on_flower_with_torch_models():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = np.random.default_rng(0).permutation(len(X))
    pub, test, priv = perm[:PUBLIC], perm[PUBLIC:700], perm[700:]
    xpub = X[pub]
    up = LabelCodecConfig(bits=2, delta=True)

    app_c = ClientApp(mods=[cfd_mod((PUBLIC, 10), up=up)])

    @app_c.train()
    def train(msg, ctx):
        pid = int(ctx.node_config["partition-id"])
        m = _load(from_arrayrecord(ctx.state["model"])) if "model" in ctx.state else _net()
        if TARGET_KEY in msg.content["arrays"]:
            _fit(m, xpub, torch.tensor(msg.content["arrays"][TARGET_KEY].numpy()), soft=True, epochs=2)
        mine = priv[pid::N]
        _fit(m, X[mine], y[mine], soft=False)
        ctx.state["model"] = ArrayRecord({k: Array(v) for k, v in _state(m).items()})
        with torch.no_grad():
            probs = torch.softmax(m(xpub), 1).numpy()
        return Message(RecordDict({"arrays": ArrayRecord({TARGET_KEY: Array(probs)}),
                                   "metrics": MetricRecord({"num-examples": len(mine)})}), reply_to=msg)

    app_c.query()(partition_query)

    def distill(state, labels, rnd):
        return _state(_fit(_load(state), xpub, torch.tensor(labels), soft=True, epochs=3))

    def evaluate(state):
        with torch.no_grad():
            return float((_load(state)(X[test]).argmax(1) == y[test]).float().mean())

    out = {}
    app_s = ServerApp()

    @app_s.main()
    def main(grid, ctx):
        st = CFDFedAvg((PUBLIC, 10), up=up, model=_state(_net()), distill=distill, evaluate=evaluate,
                       select=seeded_fraction(1.0), min_available_nodes=N)
        st.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=ROUNDS)
        out.update(result=st.result, dropped=st.dropped, model=st.model)

    run_simulation(app_s, app_c, num_supernodes=N,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    res = out["result"]
    assert not any(out["dropped"].values())
    assert set(out["model"]) == set(_net().state_dict())              # the server model is the torch model
    assert len(res.up_bytes) == ROUNDS and all(b > 0 for b in res.up_bytes + res.down_bytes[1:])
    assert max(res.up_bytes) < N * PUBLIC * 10 * 4 / 10               # >10x below float32 soft labels
    assert res.accuracy[-1] > res.accuracy[0] + 0.3, res.accuracy
    print("CFD torch: bytes up", res.up_bytes, "down", res.down_bytes, "accuracy", res.accuracy)
