"""Shared by the Flower tests: one FL setup run twice, through Flower's simulation engine (nnc_mod + NNCFedAvg)
and through the in-process loop nnc.fl.sim.simulate, so a test can compare bytes and accuracy."""
from flwr.app import MetricRecord
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from nnc.fl.flower import NNCFedAvg, from_arrayrecord, to_arrayrecord
from nnc.fl.sim.flower_apps import fedavg_client_app
from nnc.fl.sim import dirichlet_partition, evaluate, init_mlp, load_digits_data, simulate


def flower_and_inprocess(uplink, downlink, *, num_clients: int, rounds: int, seed: int = 0):
    """Digits, MLP 64-32-10, Dirichlet alpha 1, 50 % participation. Returns ``(flower, reference)``: a dict with
    per-round ``acc``, ``up``, ``down`` bytes and ``dropped`` uploads, and the :class:`SimResult` of simulate()."""
    data = load_digits_data()
    parts = dirichlet_partition(data[1], num_clients, 1.0, seed)

    def base_fn():
        return init_mlp(64, 10, 32, seed)

    app_c = fedavg_client_app(base_fn, data, parts, uplink=uplink, downlink=downlink, epochs=1, lr=0.1, seed=seed)
    out = {}
    app_s = ServerApp()

    @app_s.main()
    def main(grid, ctx):
        st = NNCFedAvg(base_fn(), uplink, downlink, by_partition=True, fraction_train=0.5,
                       min_available_nodes=num_clients, min_train_nodes=1)
        accs = []

        def ev(rnd, arrays):
            accs.append(evaluate(from_arrayrecord(arrays), data[2], data[3]))
            return MetricRecord({"accuracy": accs[-1]})

        st.start(grid=grid, initial_arrays=to_arrayrecord(base_fn()), num_rounds=rounds, evaluate_fn=ev)
        out.update(acc=accs, up=[r.up_bytes for r in st.server.ledger], down=[r.down_bytes for r in st.server.ledger],
                   dropped=st.dropped)

    run_simulation(app_s, app_c, num_supernodes=num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    ref = simulate(data, uplink=uplink, downlink=downlink, num_clients=num_clients, rounds=rounds, participation=0.5,
                   alpha=1.0, hidden=32, lr=0.1, seed=seed)
    return out, ref
