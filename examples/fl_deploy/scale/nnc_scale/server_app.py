"""ServerApp: NNCFedAvg over all partitions; per round seconds, bytes and drops to ``out-file``."""
import json
import time

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from nnc.fl.flower import NNCFedAvg, to_arrayrecord

from .task import DOWNLINK, UPLINK, base_fn

app = ServerApp()


@app.main()
def main(grid: Grid, ctx: Context) -> None:
    rc = ctx.run_config
    parts, out = int(rc["num-partitions"]), str(rc["out-file"])
    base = base_fn(int(rc["params"]), int(rc["layers"]), int(rc["seed"]))
    st = NNCFedAvg(base, UPLINK, DOWNLINK, by_partition=True, fraction_train=1.0, min_available_nodes=parts,
                   min_train_nodes=1)
    t0 = time.time()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if out and server_round > 0:
            rec = st.server.ledger[-1]
            line = {"round": server_round, "t": time.time(), "seconds": time.time() - t0, "up": rec.up_bytes,
                    "down": rec.down_bytes, "down_kind": {str(k): v for k, v in rec.down_kind.items()},
                    "dropped": {str(k): v for k, v in st.dropped.get(server_round, {}).items()},
                    "nodes": {str(p): n for p, n in (st._node_of or {}).items()}}
            with open(out, "a") as f:
                f.write(json.dumps(line) + "\n")
        return MetricRecord({"round": server_round})

    # Flower keeps the initial model as a float32 ArrayRecord for the whole run; NNCFedAvg.start makes the
    # codec's initial model views of it, so the app drops its own copy
    initial = to_arrayrecord(base)
    del base
    st.start(grid=grid, initial_arrays=initial, num_rounds=int(rc["num-server-rounds"]), evaluate_fn=evaluate)
