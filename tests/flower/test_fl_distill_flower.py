"""CFD (compressed federated distillation) under Flower's run_simulation matches the in-process simulate_fd.

Same data, partition, seed and settings (4 clients, 75% participation so that delta coding runs on links
that skip rounds, b=2 soft labels with index packing and delta coding, 4 rounds). The client computation is
the same numpy code with the same per-(seed, round, client) generators, the server averages the decoded
labels in partition order like simulate_fd, and the codec state survives rounds in ``context.state``; so
parity is exact: the bitstream lengths up and down, every client's accuracy and the server model's accuracy
are equal, not just close.
"""
import os

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("sklearn")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from flwr.app import ArrayRecord  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from nnc.fl.distill import LabelCodecConfig  # noqa: E402
from nnc.fl.sim import simulate_fd  # noqa: E402
from nnc.fl.sim.flower_apps import cfd_client_app, mlp_cfd_strategy  # noqa: E402
from nnc.fl.sim import dirichlet_partition, load_digits_data  # noqa: E402

N, ROUNDS = 4, 4


def test_cfd_on_flower_matches_simulate_fd():
    data = load_digits_data()
    xtr, ytr, xte, yte = data
    perm = np.random.default_rng(0).permutation(len(xtr))
    pub, priv = np.sort(perm[:300]), np.sort(perm[300:])
    parts = [priv[s] for s in dirichlet_partition(ytr[priv], N, 1.0, 0)]
    up = LabelCodecConfig(bits=2, delta=True, packing="index")
    client_kw = dict(up=up, hidden=32, local_epochs=3, distill_epochs=2, lr=0.1, batch=32, seed=0)
    ref = simulate_fd(data, parts, pub, rounds=ROUNDS, participation=0.75, server_epochs=3, **client_kw)

    out = {}
    app_s = ServerApp()

    @app_s.main()
    def main(grid, ctx):
        st = mlp_cfd_strategy(xtr[pub], 10, up=up, participation=0.75, hidden=32, server_epochs=3, lr=0.1, batch=32,
                              seed=0, test=(xte, yte), min_available_nodes=N)
        st.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=ROUNDS)
        out.update(result=st.result, dropped=st.dropped)

    run_simulation(app_s, cfd_client_app(data, parts, pub, **client_kw), num_supernodes=N,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    res = out["result"]
    assert not any(out["dropped"].values())
    assert res.up_bytes == ref.up_bytes and res.down_bytes == ref.down_bytes
    assert res.down_bytes[0] == 0 and all(b > 0 for b in res.up_bytes + res.down_bytes[1:])
    assert max(res.up_bytes) < 3 * 300 * 10 * 4 / 20     # >20x smaller than float32 soft labels (plain FD)
    assert res.changed_rows_up == ref.changed_rows_up
    assert res.client_accuracy == ref.client_accuracy
    assert res.accuracy == ref.accuracy
    assert res.accuracy[-1] > res.accuracy[0] + 0.2
    print("bytes up", res.up_bytes, "down", res.down_bytes, "accuracy", res.accuracy)
