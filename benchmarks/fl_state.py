"""Client state size and peak memory per client, as a SuperNode's ClientApp process lives it.

For each model size, one subprocess builds a server and a client and runs two warm-up rounds; a fresh subprocess
then runs what ``nnc_mod`` does in a round (measured): load the
client state from ``context.state`` (through Flower's protobuf, as the SuperNode hands the Context over),
apply a coded downlink, encode a top-1 % ternary upload with error feedback, save the state, serialise the
Context to protobuf again. Reported: state bytes per parameter (``ClientCodec.state_nbytes``), the Context
protobuf size, seconds, and the subprocess's peak RSS (``ru_maxrss``), next to the float32 model size.

    OMP_NUM_THREADS=1 nice python benchmarks/fl_state.py --sizes 1e6 4e6 16e6 --json benchmarks/results/fl_state.json
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
ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
_save_codec(ctx, client)
open(sys.argv[2], "wb").write(context_to_proto(ctx).SerializeToString())
rec, _ = _downlink_to_records(server.downlink_for(0), list(server.base))
open(sys.argv[3], "wb").write(bytes(rec["nnc"].data))
'''

CLIENT = r'''
import json, resource, sys, time
import numpy as np
from flwr.app import ArrayRecord
from flwr.common.serde import context_from_proto, context_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from nnc.fl.flower.fedavg import STYPE_DOWNLINK, _downlink_from_records, _load_codec, _save_codec
from nnc.fl.flower.records import bytes_array
exec(COMMON)
proto, dl = open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
t0 = time.perf_counter()
pc = ProtoContext(); pc.ParseFromString(proto); del proto
ctx = context_from_proto(pc); del pc
codec = _load_codec(ctx, base_fn, up, down)
m = codec.receive(_downlink_from_records(ArrayRecord({"nnc": bytes_array(dl, STYPE_DOWNLINK)}), codec.base))
upm = codec.encode({k: v + rng.standard_normal(v.shape).astype(np.float32) * 1e-3 for k, v in m.items()}, 10)
del m
_save_codec(ctx, codec)
out = len(context_to_proto(ctx).SerializeToString())
dt = time.perf_counter() - t0
print(json.dumps({"params": n, "state_bytes": codec.state_nbytes(), "state_b_per_param": codec.state_nbytes() / n,
                  "context_proto_bytes": out, "upload_bytes": len(upm.payload), "downlink_bytes": len(dl),
                  "seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "float32_model_mb": 4 * n / 2 ** 20}))
'''

COMMON = r'''
import numpy as np
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


def _child(code: str, *args) -> str:
    prog = f"COMMON = {COMMON!r}\n" + code
    p = subprocess.run([sys.executable, "-c", prog, *map(str, args)], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    return p.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 4e6, 16e6])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.sizes:
            ctx, dl = Path(tmp) / "context.pb", Path(tmp) / "downlink.bin"
            _child(SETUP, int(n), ctx, dl)                  # server + warm-up rounds: not measured
            rows.append(json.loads(_child(CLIENT, int(n), ctx, dl).strip().splitlines()[-1]))
    print("| params | float32 model MB | state B/param | Context protobuf MB | upload B | s per round | "
          "peak RSS MB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['params']:,} | {r['float32_model_mb']:.0f} | {r['state_b_per_param']:.2f} | "
              f"{r['context_proto_bytes'] / 2 ** 20:.1f} | {r['upload_bytes']:,} | {r['seconds']:.1f} | "
              f"{r['peak_rss_mb']:.0f} |")
    if a.json:
        a.json.write_text(json.dumps({"conditions": "8 equal tensors, global top-1 % ternary uplink + EF, coded "
                                      "top-1 % downlink (QP -44), one round after two warm-up rounds; peak RSS of "
                                      "the client subprocess (the server and the warm-up rounds ran in another)",
                                      "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
