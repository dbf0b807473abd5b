"""FL under attack: 1 of 5 clients is malicious every round; the honest accuracy with it vs without it.

The malicious client cycles through four attacks, one per round: ``huge`` (a well-formed NNC upload whose
update is 1e7 in every value), ``maxfloat`` (a crafted bitstream whose codebook entry x step decodes to
~1.7e38, the float32 range's edge), ``replay`` (its upload of an earlier round sent again) and ``nan``
(raw arrays full of NaN). The server runs with its defaults (:class:`nnc.fl.RoundPolicy`: validation in
float32, norm bound 5x the round's median update norm / 10x the model norm, updates over it left out,
binding checks); ``inprocess-clip`` is the same in-process server with ``RoundPolicy(over_bound="clip")``
(updates over the bound scaled down to it instead), to show what the default buys.

Two engines, same data, partitions, seeds and transport (top-10 % ternary uplink with error feedback and
TCA, coded downlink):

* ``inprocess``: :class:`~nnc.fl.ServerCodec` / :class:`~nnc.fl.ClientCodec` driven by this script;
* ``flower``: :class:`~nnc.fl.flower.NNCFedAvg` + :func:`~nnc.fl.flower.nnc_mod` under Flower's
  ``run_simulation``; the malicious node's ClientApp has an extra Mod outside ``nnc_mod`` that replaces its
  reply. Each Flower run is a fresh subprocess (Ray cannot start twice in one process).

    python benchmarks/fl_attack.py                     # digits, 20 rounds, both engines (~3 min on 2 cores)
    python benchmarks/fl_attack.py --engines inprocess

Prints a table (accuracy of the global model after the last round, mean of the last 3 rounds, what the
server refused / clipped) and writes JSON (benchmarks/results/fl_attack.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nnc  # noqa: E402
import nnc.codec as _codec  # noqa: E402
from nnc.fl import ClientCodec, DownlinkConfig, RoundPolicy, ServerCodec, UplinkConfig, UplinkMessage  # noqa: E402
from nnc.fl.sim import client_rng, dirichlet_partition, evaluate, init_mlp, load_digits_data, train_local  # noqa: E402

ATTACKS = ("huge", "maxfloat", "replay", "nan")
UP = UplinkConfig(qp_mode="ternary", sparsity=0.1, error_feedback=True)
DOWN = DownlinkConfig(mode="nnc", qp=-40, sparsity=0.2)
HIDDEN, LR, EPOCHS = 32, 0.1, 1


def crafted_maxfloat(model: dict, mps_qp: int = 97) -> bytes:
    """A valid NNC bitstream for the model's first matrix whose codebook entry 2^30 times the step 2^97
    (signalled through the MPS base QP at qp_density 0) decodes to ~1.7e38."""
    name = next(k for k, v in model.items() if np.ndim(v) == 2)
    orig = _codec.bs.mps_unit

    def patched(**kw):
        kw["qp_density"], kw["quantization_parameter"] = 0, mps_qp
        return orig(**kw)

    _codec.bs.mps_unit = patched
    try:
        w = np.zeros(np.shape(model[name]), np.float32)
        w.flat[0], w.flat[1] = 2.0 ** 30, 1.0
        return nnc.encode({name: w}, nnc.EncoderConfig(qp=0, nonweight_qp=0, qp_density=0, codebook="force",
                                                        dq=False))
    finally:
        _codec.bs.mps_unit = orig


def attack_payload(kind: str, model: dict, codec: ClientCodec, history: list):
    """What the malicious client sends (payload object), given the global model it holds."""
    if kind == "huge":
        return codec.encode_update({k: np.full(np.shape(v), 1e7, np.float32) for k, v in model.items()}).payload
    if kind == "maxfloat":
        return crafted_maxfloat(model)
    if kind == "replay":
        return history[-1] if history else b""
    return {k: np.full(np.shape(v), np.nan, np.float32) for k, v in model.items()}


def setup(seed: int, clients: int):
    data = load_digits_data(seed)
    parts = dirichlet_partition(data[1], clients, 1.0, seed)
    return data, parts


def run_inprocess(*, malicious: bool, rounds: int, seed: int, clients: int = 5, policy=None) -> dict:
    data, parts = setup(seed, clients)
    xtr, ytr, xte, yte = data
    base = init_mlp(xtr.shape[1], 10, HIDDEN, seed)
    server = ServerCodec(base, UP, DOWN, policy=policy)
    honest = list(range(clients - 1))
    evil = clients - 1
    codecs = {c: ClientCodec(base, UP, DOWN, client=c) for c in range(clients)}
    acc, refused, clipped, history = [evaluate(server.model, xte, yte)], {}, {}, []
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        ups = {}
        for c in honest:
            model = codecs[c].receive(server.downlink_for(c))
            xs, ys = xtr[parts[c]], ytr[parts[c]]
            new = train_local(model, xs, ys, epochs=EPOCHS, lr=LR, rng=client_rng(seed, r, c))
            ups[c] = codecs[c].encode(new, num_examples=len(xs))
        if malicious:
            kind = ATTACKS[(r - 1) % len(ATTACKS)]
            model = codecs[evil].receive(server.downlink_for(evil))
            payload = attack_payload(kind, model, codecs[evil], history)
            ups[evil] = UplinkMessage(payload, len(parts[evil]), client=evil, round=r)
            if kind == "replay" and history:
                ups[evil].round = r - 1                   # the captured message, as it was sent
            if kind == "huge":
                history.append(payload)
        server.step(ups)
        rec = server.ledger[r - 1]
        for c, cat in rec.rejected.items():
            refused[f"{r}:{c}"] = cat
        for c, n in rec.clipped.items():
            clipped[f"{r}:{c}"] = n
        acc.append(evaluate(server.model, xte, yte))
    return {"accuracy": acc, "refused": refused, "clipped": clipped, "seconds": time.perf_counter() - t0,
            "finite": bool(all(np.isfinite(v).all() for v in server.model.values()))}


# --------------------------------------------------------------------------------------------------------
# Flower
# --------------------------------------------------------------------------------------------------------
def run_flower(*, malicious: bool, rounds: int, seed: int, clients: int = 5) -> dict:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from nnc.fl.flower import NNCFedAvg, STYPE_UPDATE, bytes_array, from_arrayrecord, nnc_mod, partition_query
    from nnc.fl.flower.fedavg import UPLINK_KEY

    data, parts = setup(seed, clients)
    xtr, ytr, xte, yte = data
    n_nodes = clients if malicious else clients - 1

    def base_fn():
        return init_mlp(xtr.shape[1], 10, HIDDEN, seed)

    def attack_mod(msg: Message, ctx: Context, call_next) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctx)
        pid = int(ctx.node_config["partition-id"])
        reply = call_next(msg, ctx)
        if not malicious or pid != clients - 1 or reply.has_error():
            return reply
        r = int(msg.content["config"]["server-round"])
        kind = ATTACKS[(r - 1) % len(ATTACKS)]
        model = base_fn()
        arrays = reply.content["arrays"]
        if kind == "huge":
            cc = ClientCodec(model, UP, DOWN, client=str(pid))
            payload = attack_payload("huge", model, cc, [])
            ctx.state["attack.replay"] = ArrayRecord({"p": bytes_array(payload, STYPE_UPDATE)})
            ctx.state["attack.replay-round"] = ConfigRecord({"round": r})
        elif kind == "maxfloat":
            payload = crafted_maxfloat(model)
        elif kind == "replay" and "attack.replay" in ctx.state:
            payload = bytes(ctx.state["attack.replay"]["p"].data)
            reply.content[UPLINK_KEY] = ConfigRecord({"nnc.client": str(pid),
                                                      "nnc.round": int(ctx.state["attack.replay-round"]["round"])})
        else:
            payload = None
        del arrays
        if payload is None:   # NaN: raw arrays instead of a bitstream
            reply.content["arrays"] = ArrayRecord({k: Array(np.full(np.shape(v), np.nan, np.float32))
                                                   for k, v in model.items()})
        else:
            reply.content["arrays"] = ArrayRecord({"nnc.update": bytes_array(payload, STYPE_UPDATE)})
        return reply

    app_c = ClientApp(mods=[attack_mod, nnc_mod(base_fn, UP, DOWN)])

    @app_c.train()
    def train(msg, ctx):
        pid, r = int(ctx.node_config["partition-id"]), int(msg.content["config"]["server-round"])
        xs, ys = xtr[parts[pid]], ytr[parts[pid]]
        new = train_local(from_arrayrecord(msg.content["arrays"]), xs, ys, epochs=EPOCHS, lr=LR,
                          rng=client_rng(seed, r, pid))
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                                   "metrics": MetricRecord({"num-examples": len(xs)})}), reply_to=msg)

    app_c.query()(partition_query)
    out = {}
    app_s = ServerApp()

    @app_s.main()
    def main(grid, ctx):
        st = NNCFedAvg(base_fn(), UP, DOWN, by_partition=True, fraction_train=1.0, min_available_nodes=n_nodes,
                       min_train_nodes=n_nodes)
        accs = [evaluate(base_fn(), xte, yte)]

        def ev(rnd, arrays):
            if rnd > 0:
                accs.append(evaluate(from_arrayrecord(arrays), xte, yte))
            return MetricRecord({"accuracy": accs[-1]})

        from nnc.fl.flower import to_arrayrecord
        st.start(grid=grid, initial_arrays=to_arrayrecord(base_fn()), num_rounds=rounds, evaluate_fn=ev)
        out.update(accuracy=accs,
                   refused={f"{r.round}:{c}": cat for r in st.server.ledger for c, cat in r.rejected.items()},
                   clipped={f"{r.round}:{c}": v for r in st.server.ledger for c, v in r.clipped.items()},
                   finite=bool(all(np.isfinite(v).all() for v in st.server.model.values())))

    t0 = time.perf_counter()
    run_simulation(app_s, app_c, num_supernodes=n_nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    out["seconds"] = time.perf_counter() - t0
    return out


def _flower_subprocess(malicious: bool, rounds: int, seed: int) -> dict:
    """One Flower run in a fresh interpreter; returns its result dict."""
    cmd = [sys.executable, __file__, "--flower-child", "1" if malicious else "0", "--rounds", str(rounds),
           "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"Flower run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engines", default="inprocess,inprocess-clip,flower")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "fl_attack.json"))
    ap.add_argument("--flower-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.flower_child is not None:
        res = run_flower(malicious=a.flower_child == "1", rounds=a.rounds, seed=a.seed)
        print("RESULT " + json.dumps(res))
        return res
    results = {}
    for engine in a.engines.split(","):
        for malicious in (False, True):
            key = f"{engine}/{'attacked' if malicious else 'clean'}"
            if engine == "inprocess":
                results[key] = run_inprocess(malicious=malicious, rounds=a.rounds, seed=a.seed)
            elif engine == "inprocess-clip":     # the same server with over_bound="clip", for contrast
                results[key] = run_inprocess(malicious=malicious, rounds=a.rounds, seed=a.seed,
                                             policy=RoundPolicy(over_bound="clip"))
            else:
                results[key] = _flower_subprocess(malicious, a.rounds, a.seed)
    print(f"\ndigits, MLP 64-{HIDDEN}-10, 4 honest clients (+1 malicious), Dirichlet alpha 1, {a.rounds} rounds, "
          f"attacks cycling {', '.join(ATTACKS)}; server defaults\n")
    print("| engine | run | final acc | mean acc last 3 | refused (round:client=category) | clipped | finite |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for key, r in results.items():
        engine, run = key.split("/")
        acc = r["accuracy"]
        last3 = float(np.mean(acc[-3:]))
        summary[key] = {"final": acc[-1], "last3": last3}
        print(f"| {engine} | {run} | {acc[-1]:.3f} | {last3:.3f} | {len(r['refused'])}: "
              f"{sorted(set(r['refused'].values()))} | {len(r['clipped'])} | {r['finite']} |")
    print()
    for engine in a.engines.split(","):
        c, t = summary.get(f"{engine}/clean"), summary.get(f"{engine}/attacked")
        if c and t:
            d = 100 * (t["last3"] - c["last3"])
            summary[f"{engine}/delta_points"] = d
            print(f"{engine}: attacked - clean = {d:+.2f} points (mean of the last 3 rounds), "
                  f"final {100 * (t['final'] - c['final']):+.2f}")
    out = {"args": vars(a), "results": results, "summary": summary}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {a.json}")
    return out


if __name__ == "__main__":
    main()
