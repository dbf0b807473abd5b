"""nnc.fl.flower under Flower's simulation engine: same bytes and accuracy as the in-process loop."""
import os

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("sklearn")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from flwr.app import Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from nnc.fl import presets  # noqa: E402
from nnc.fl.flower import NNCFedAvg, from_arrayrecord, nnc_mod, partition_query, to_arrayrecord  # noqa: E402
from nnc.fl.simulate import (client_rng, dirichlet_partition, evaluate, init_mlp, load_digits_data,  # noqa: E402
                             simulate, train_local)

SEED, N, ROUNDS = 0, 6, 4


def test_flower_run_simulation_matches_the_in_process_loop():
    u, d = presets(sparsity=0.05)["nnc_bidir_cache"]
    data = load_digits_data()
    parts = dirichlet_partition(data[1], N, 1.0, SEED)

    def base_fn():
        return init_mlp(64, 10, 32, SEED)

    app_c = ClientApp(mods=[nnc_mod(base_fn, u, d)])

    @app_c.train()
    def train(msg, ctx):
        pid, r = int(ctx.node_config["partition-id"]), int(msg.content["config"]["server-round"])
        xs, ys = data[0][parts[pid]], data[1][parts[pid]]
        new = train_local(from_arrayrecord(msg.content["arrays"]), xs, ys, epochs=1, lr=0.1,
                          rng=client_rng(SEED, r, pid))
        return Message(RecordDict({"arrays": to_arrayrecord(new),
                                   "metrics": MetricRecord({"num-examples": len(xs)})}), reply_to=msg)

    app_c.query()(partition_query)
    out = {}
    app_s = ServerApp()

    @app_s.main()
    def main(grid, ctx):
        st = NNCFedAvg(base_fn(), u, d, by_partition=True, fraction_train=0.5, min_available_nodes=N,
                       min_train_nodes=1)
        accs = []

        def ev(rnd, arrays):
            accs.append(evaluate(from_arrayrecord(arrays), data[2], data[3]))
            return MetricRecord({"accuracy": accs[-1]})

        st.start(grid=grid, initial_arrays=to_arrayrecord(base_fn()), num_rounds=ROUNDS, evaluate_fn=ev)
        out.update(acc=accs, up=[r.up_bytes for r in st.server.ledger], down=[r.down_bytes for r in st.server.ledger],
                   dropped=st.dropped)

    run_simulation(app_s, app_c, num_supernodes=N,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    ref = simulate(data, uplink=u, downlink=d, num_clients=N, rounds=ROUNDS, participation=0.5, alpha=1.0,
                   hidden=32, lr=0.1, seed=SEED)
    assert out["up"] == ref.up_bytes and out["down"] == ref.down_bytes
    assert np.allclose(out["acc"], ref.accuracy)
    assert all(not v for v in out["dropped"].values())
    assert sum(out["up"]) > 0
