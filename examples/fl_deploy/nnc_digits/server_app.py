"""ServerApp: NNCFedAvg with partition-keyed selection; per-round accuracy, bytes and drops to ``out-file``."""
import json
import time

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from nnc.fl.flower import NNCFedAvg

from .task import METHODS, accuracy, base_fn, net

app = ServerApp()


@app.main()
def main(grid: Grid, ctx: Context) -> None:
    rc = ctx.run_config
    parts, seed, out = int(rc["num-partitions"]), int(rc["seed"]), str(rc["out-file"])
    hidden = int(rc.get("hidden", 32))
    up, down = METHODS[str(rc.get("method", "nnc"))]
    st = NNCFedAvg(base_fn(seed, hidden), up, down, by_partition=True, select_seed=seed,
                   fraction_train=float(rc["fraction-train"]), min_available_nodes=parts, min_train_nodes=1)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        acc = accuracy(arrays.to_torch_state_dict(), parts, seed, hidden)
        if out and server_round > 0:
            rec = st.server.ledger[-1]
            line = {"round": server_round, "t": time.time(), "acc": acc, "up": rec.up_bytes, "down": rec.down_bytes,
                    "down_kind": {str(k): v for k, v in rec.down_kind.items()},
                    "dropped": {str(k): v for k, v in st.dropped.get(server_round, {}).items()},
                    "nodes": {str(p): n for p, n in (st._node_of or {}).items()}}
            with open(out, "a") as f:
                f.write(json.dumps(line) + "\n")
        return MetricRecord({"accuracy": acc})

    st.start(grid=grid, initial_arrays=ArrayRecord(net(seed, hidden).state_dict()),
             num_rounds=int(rc["num-server-rounds"]), evaluate_fn=evaluate)
