"""Client state size and working memory of one client round, as a SuperNode's ClientApp process lives it.

For each model size, one subprocess builds a server and a client and runs two warm-up rounds, leaving the client
state where ``nnc_mod`` keeps it (the node's state file, its handle in the Context); a fresh subprocess then runs
one train message through ``nnc_mod`` (measured): parse the Context protobuf the SuperNode hands over, load the
state, apply a coded downlink, the user's ``train`` (here: the model plus small noise, as a new array per tensor,
like any training function returns), encode a top-1 % ternary upload with error feedback, save the state,
serialise the Context again. A thread samples the process's RSS every 2 ms and charges it to the step running
(load / receive / train / encode / save); ``VmHWM`` gives the peak (not ``ru_maxrss``, which Linux carries
over ``exec`` from the parent: a child of a large process would report the parent's size).

Reported per size: state B/param (``ClientCodec.state_nbytes``), the Context protobuf, seconds, peak RSS, and
``B/param`` = (peak RSS - RSS before the round, after imports and the train message arrived) / params: the
working memory of a round, the model the user's train returns included.

    OMP_NUM_THREADS=1 nice python benchmarks/fl_state.py --sizes 1e6 4e6 16e6 --json benchmarks/results/fl_state.json

``--server``: the ServerApp's side instead. A setup subprocess runs ``NNCFedAvg.start`` with ``--clients`` in-process
nodes (``nnc_mod``) for ``--rounds`` rounds and records every upload; a fresh subprocess then runs
``NNCFedAvg.start`` as examples/fl_deploy/scale's ServerApp does, over a grid that replays those uploads (so only the
server's work is in the process), and checks that its final model equals the setup run's. Reported: peak RSS and
``B/param`` = (peak RSS - RSS after imports) / params, and per step (base model, strategy, configure_train, the
grid, ``ServerCodec.receive``, ``ServerCodec._stage``, ``to_arrayrecord``, the rest of ``aggregate_train``) the
peak RSS while it ran, same baseline.

    OMP_NUM_THREADS=1 nice python benchmarks/fl_state.py --server --sizes 4e6 16e6 32e6 \
        --json benchmarks/results/fl_server_state.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SETUP = r'''
import sys
import numpy as np
from flwr.app import Context, RecordDict
from flwr.common.serde import context_to_proto
from nnc.fl import ClientCodec, ServerCodec
from nnc.fl.flower.fedavg import _downlink_to_records, _save_codec
exec(COMMON)
server, client = ServerCodec(base_fn(), up, down), ClientCodec(base_fn(), up, down)
for r in range(2):                               # two rounds so that residual, TCA history and levels exist
    m = client.receive(server.downlink_for(0))
    server.step({0: client.encode({k: v + rng.standard_normal(v.shape).astype(np.float32) * 1e-3
                                   for k, v in m.items()}, 10)})
ctx = Context(run_id=1, node_id=1, node_config={"nnc-state-dir": sys.argv[4]}, state=RecordDict(), run_config={})
_save_codec(ctx, client)
open(sys.argv[2], "wb").write(context_to_proto(ctx).SerializeToString())
rec, _ = _downlink_to_records(server.downlink_for(0), list(server.base))
open(sys.argv[3], "wb").write(bytes(rec["nnc"].data))
'''

CLIENT = r'''
import json, os, sys, threading, time
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.serde import context_from_proto, context_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from nnc.fl.flower import fedavg
from nnc.fl.flower.fedavg import STYPE_DOWNLINK, nnc_mod
from nnc.fl.flower.records import bytes_array, from_arrayrecord, to_arrayrecord
from nnc.fl.transport import ClientCodec
from flwr.supercore.task_identity import TaskIdentity
exec(COMMON)
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1

fedavg._load_codec = labelled("load", fedavg._load_codec)
fedavg._save_codec = labelled("save", fedavg._save_codec)
ClientCodec.receive = labelled("receive", ClientCodec.receive)
ClientCodec.encode = labelled("encode", ClientCodec.encode)

def train(msg, ctx):
    step[0] = "train"
    arrays = from_arrayrecord(msg.content["arrays"])
    new = {k: v + noise[k] for k, v in arrays.items()}
    del arrays
    out = Message(RecordDict({"arrays": to_arrayrecord(new), "metrics": MetricRecord({"num-examples": 10})}),
                  reply_to=msg)
    step[0] = "mod"
    return out

proto, dl = open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
noise = {k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in base_fn().items()}
noise_bytes = sum(v.nbytes for v in noise.values())
msg = Message(RecordDict({"arrays": ArrayRecord({"nnc": bytes_array(dl, STYPE_DOWNLINK)}),
                          "config": ConfigRecord({"nnc.client": "0"})}), message_type=MessageType.TRAIN,
              dst_node_id=1)
mod = nnc_mod(base_fn, up, down)
th = threading.Thread(target=sampler, daemon=True)
before = rss()
th.start()
t0, c0 = time.perf_counter(), time.process_time()
step[0] = "context"
pc = ProtoContext(); pc.ParseFromString(proto); del proto
ctx = context_from_proto(pc); del pc
step[0] = "mod"
reply = mod(msg, ctx, train)
assert not reply.has_error() and "nnc" in reply.content["arrays"], reply.content
step[0] = "context"
out = len(context_to_proto(ctx).SerializeToString())
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
step[0] = "done"
time.sleep(0.02)
stop.append(1); th.join()
peak = hwm()      # this process's own peak (ru_maxrss would carry the parent's over exec)
codec = fedavg._load_codec(ctx, base_fn, up, down)
state_file = max([os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(sys.argv[4]) for f in fs] or [0])
print(json.dumps({"params": n, "state_bytes": codec.state_nbytes(), "state_b_per_param": codec.state_nbytes() / n,
                  "state_file_bytes": state_file, "context_proto_bytes": out,
                  "upload_bytes": len(bytes(reply.content["arrays"]["nnc"].data)), "downlink_bytes": len(dl),
                  "seconds": dt, "cpu_seconds": cpu, "peak_rss_mb": peak / 2 ** 20,
                  "rss_before_mb": (before - noise_bytes) / 2 ** 20,
                  "b_per_param": (peak - before) / n,
                  "step_b_per_param": {k: (v - before) / n for k, v in peaks.items()},
                  "float32_model_mb": 4 * n / 2 ** 20}))
'''
SERVER_SETUP = r'''
import os, sys, json
import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from nnc.fl.flower import NNCFedAvg, nnc_mod, partition_query, from_arrayrecord, to_arrayrecord
exec(COMMON)
out = sys.argv[2]
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1

class Node:
    def __init__(self, nid, p):
        self.id, self.p = nid, p
        self.ctx = Context(run_id=1, node_id=nid, node_config={"partition-id": p, "nnc-state-dir": out + "/state"},
                           state=RecordDict(), run_config={})
        self.mod = nnc_mod(base_fn, up, down)
    def train(self, msg, ctx):
        arrays = from_arrayrecord(msg.content["arrays"])
        r = int(msg.content["config"]["server-round"])
        g = np.random.default_rng([self.p, r])
        new = {k: v + (g.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in arrays.items()}
        return Message(RecordDict({"arrays": to_arrayrecord(new),
                                   "metrics": MetricRecord({"num-examples": 10 + self.p})}), reply_to=msg)
    def handle(self, msg):
        TaskIdentity.node_id = self.id
        if msg.metadata.message_type == MessageType.QUERY:
            return partition_query(msg, self.ctx)
        rep = self.mod(msg, self.ctx, self.train)
        r = int(msg.content["config"]["server-round"])
        c = rep.content
        open(f"{out}/up.{r}.{self.p}", "wb").write(bytes(c["arrays"]["nnc"].data))
        json.dump({"binding": dict(c["nnc.uplink"]), "n": int(c["metrics"]["num-examples"]),
                   "stype": c["arrays"]["nnc"].stype}, open(f"{out}/up.{r}.{self.p}.json", "w"))
        return rep

class Grid:
    def __init__(self, nodes):
        self.nodes = {n.id: n for n in nodes}
    def get_node_ids(self):
        return sorted(self.nodes)
    def send_and_receive(self, messages, timeout=None):
        res = []
        for m in messages:
            TaskIdentity.node_id = 1
            m.metadata.__dict__["_message_id"] = m.object_id
            res.append(self.nodes[m.metadata.dst_node_id].handle(m))
        TaskIdentity.node_id = 1
        return res

st = NNCFedAvg(base_fn(), up, down, by_partition=True, fraction_train=1.0, min_available_nodes=CLIENTS)
st.start(grid=Grid([Node(100 + p, p) for p in range(CLIENTS)]), initial_arrays=to_arrayrecord(base_fn()),
         num_rounds=ROUNDS)
m = st.server.model
np.save(f"{out}/model.npy", np.concatenate([v.ravel() for v in m.values()]))
'''

SERVER = r'''
import json, os, sys, threading, time
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from nnc.fl import transport
from nnc.fl.flower import fedavg, NNCFedAvg, to_arrayrecord, from_arrayrecord
from nnc.fl.flower.records import bytes_array
exec(COMMON)
out = sys.argv[2]
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1

NNCFedAvg.configure_train = labelled("configure", NNCFedAvg.configure_train)
NNCFedAvg.aggregate_train = labelled("aggregate_train", NNCFedAvg.aggregate_train)
transport.ServerCodec.receive = labelled("receive", transport.ServerCodec.receive)
transport.ServerCodec._stage = labelled("stage", transport.ServerCodec._stage)
fedavg.to_arrayrecord = labelled("to_arrayrecord", fedavg.to_arrayrecord)

class Grid:       # plays the SuperLink: replies are the uploads the setup run recorded
    def get_node_ids(self):
        return [100 + p for p in range(CLIENTS)]
    def send_and_receive(self, messages, timeout=None):
        prev, step[0] = step[0], "grid"
        res = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            p = m.metadata.dst_node_id - 100
            if m.metadata.message_type == MessageType.QUERY:
                content = RecordDict({"config": ConfigRecord({"partition-id": p})})
            else:
                r = int(m.content["config"]["server-round"])
                meta = json.load(open(f"{out}/up.{r}.{p}.json"))
                data = open(f"{out}/up.{r}.{p}", "rb").read()
                b = meta["binding"]
                b = {k: (bytes(v) if k == "nnc.tag" else v) for k, v in b.items()}
                content = RecordDict({"arrays": ArrayRecord({"nnc": bytes_array(data, meta["stype"])}),
                                      "metrics": MetricRecord({"num-examples": meta["n"]}),
                                      "nnc.uplink": ConfigRecord(b)})
                del data
            TaskIdentity.node_id = m.metadata.dst_node_id
            rep = Message(content, reply_to=m)
            TaskIdentity.node_id = 1
            res.append(rep)
        step[0] = prev
        return res

th = threading.Thread(target=sampler, daemon=True)
before = rss()
th.start()
t0, c0 = time.perf_counter(), time.process_time()
step[0] = "base"
base = base_fn()                         # as examples/fl_deploy/scale's ServerApp does
step[0] = "init"
st = NNCFedAvg(base, up, down, by_partition=True, fraction_train=1.0, min_available_nodes=CLIENTS)
initial = to_arrayrecord(base)
del base
step[0] = "start"
res = st.start(grid=Grid(), initial_arrays=initial, num_rounds=ROUNDS)
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
step[0] = "done"
time.sleep(0.02)
stop.append(1); th.join()
peak = hwm()      # this process's own peak (ru_maxrss would carry the parent's over exec)
m = from_arrayrecord(res.arrays)
want = np.load(f"{out}/model.npy")
same = bool(np.array_equal(np.concatenate([v.ravel() for v in m.values()]), want))
print(json.dumps({"params": n, "clients": CLIENTS, "rounds": ROUNDS, "seconds": dt, "cpu_seconds": cpu,
                  "peak_rss_mb": peak / 2 ** 20, "rss_before_mb": before / 2 ** 20,
                  "b_per_param": (peak - before) / n, "same_model_as_setup": same,
                  "dropped": {str(r): {str(k): v for k, v in d.items()} for r, d in st.dropped.items()},
                  "step_b_per_param": {k: (v - before) / n for k, v in peaks.items()}}))
'''

COMMON = r'''
import time
import numpy as np
def rss(key="VmRSS:"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
def hwm():
    return rss("VmHWM:")
step, peaks, stop = ["idle"], {}, []
def sampler():
    while not stop:
        r = rss()
        peaks[step[0]] = max(peaks.get(step[0], 0), r)
        time.sleep(0.002)


def labelled(name, fn):
    def wrapped(*a, **k):
        prev, step[0] = step[0], name
        try:
            return fn(*a, **k)
        finally:
            step[0] = prev
    return wrapped
from nnc.fl import DownlinkConfig, UplinkConfig
n = int(float(sys.argv[1]))
layers = 8
rng = np.random.default_rng(0)
def base_fn():
    r = np.random.default_rng(0)
    return {f"l{i}.weight": (r.standard_normal(n // layers) * 0.02).astype(np.float32) for i in range(layers)}
up = UplinkConfig(qp_mode="ternary", sparsity=0.01, sparsity_scope="global")
down = DownlinkConfig(mode="nnc", qp=-44, sparsity=0.01)
'''


def _child(code: str, *args, clients: int = 2, rounds: int = 2) -> str:
    prog = f"COMMON = {COMMON!r}\nCLIENTS = {clients}\nROUNDS = {rounds}\n" + code
    p = subprocess.run([sys.executable, "-c", prog, *map(str, args)], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    return p.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 4e6, 16e6])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--label", default="after", help="key of this run in the JSON (before / after a change)")
    ap.add_argument("--server", action="store_true", help="measure the ServerApp's side instead (see below)")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    if a.server:
        return _server(a)
    rows = []
    for n in a.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            ctx, dl, sdir = Path(tmp) / "context.pb", Path(tmp) / "downlink.bin", Path(tmp) / "state"
            _child(SETUP, int(n), ctx, dl, sdir)                  # server + warm-up rounds: not measured
            rows.append(json.loads(_child(CLIENT, int(n), ctx, dl, sdir).strip().splitlines()[-1]))
    steps = ["load", "receive", "train", "encode", "save"]
    print("| params | float32 model MB | state B/param | Context protobuf B | upload B | s per round | CPU s | "
          "peak RSS MB | round B/param | " + " | ".join(steps) + " |\n|" + "---|" * (9 + len(steps)))
    for r in rows:
        sb = r["step_b_per_param"]
        print(f"| {r['params']:,} | {r['float32_model_mb']:.0f} | {r['state_b_per_param']:.2f} | "
              f"{r['context_proto_bytes']:,} | {r['upload_bytes']:,} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['b_per_param']:.1f} | "
              + " | ".join(f"{sb.get(s, 0):.1f}" for s in steps) + " |")
    if a.json:
        _save_runs(a.json, a.label, rows,
                   "8 equal tensors, global top-1 % ternary uplink + EF, coded top-1 % downlink (QP -44), one train "
                   "message through nnc_mod after two warm-up rounds; the user's train returns model + noise; "
                   "B/param = (peak RSS - RSS before the round) / params; per step: peak RSS while that step ran, "
                   "minus RSS before the round, / params")
    return 0


def _save_runs(path: Path, label: str, rows: list, conditions: str) -> None:
    """Write ``rows`` under ``label`` into the JSON at ``path``, keeping the runs of other labels."""
    runs = json.loads(path.read_text()).get("runs", {}) if path.exists() else {}
    runs[label] = rows
    path.write_text(json.dumps({"conditions": conditions, "runs": runs}, indent=1))


def _server(a) -> int:
    rows = []
    for n in a.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            _child(SERVER_SETUP, int(n), tmp, clients=a.clients, rounds=a.rounds)    # records the uploads
            rows.append(json.loads(_child(SERVER, int(n), tmp, clients=a.clients,
                                          rounds=a.rounds).strip().splitlines()[-1]))
    steps = ["base", "init", "configure", "grid", "receive", "stage", "to_arrayrecord", "aggregate_train"]
    print("| params | clients | rounds | s | CPU s | peak RSS MB | B/param | " + " | ".join(steps) + " |\n|"
          + "---|" * (7 + len(steps)))
    for r in rows:
        sb = r["step_b_per_param"]
        print(f"| {r['params']:,} | {r['clients']} | {r['rounds']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['b_per_param']:.1f} | " + " | ".join(f"{sb.get(s, 0):.1f}" for s in steps)
              + f" |{'' if r['same_model_as_setup'] else ' MODEL DIFFERS'}")
    if a.json:
        _save_runs(a.json, a.label, rows,
                   "ServerApp side: NNCFedAvg.start over a grid that replays the uploads a setup run recorded (8 "
                   "equal tensors, global top-1 % ternary uplink + EF, coded top-1 % downlink, QP -44); the base "
                   "model held by the caller as the ServerApp's main does; B/param = (peak RSS - RSS after imports) "
                   "/ params; per step: peak RSS while it ran, same baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
