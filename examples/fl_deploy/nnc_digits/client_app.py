"""ClientApp: an ordinary PyTorch ``train`` function inside ``nnc_mod`` (the README's app)."""
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from nnc.fl.flower import nnc_mod, partition_query

from .task import DOWNLINK, UPLINK, base_fn, train

app = ClientApp(mods=[nnc_mod(base_fn, UPLINK, DOWNLINK)])


@app.train()
def train_fn(msg: Message, ctx: Context) -> Message:
    rc = ctx.run_config
    sd, n = train(msg.content["arrays"].to_torch_state_dict(), int(ctx.node_config["partition-id"]),
                  int(ctx.node_config["num-partitions"]), int(msg.content["config"]["server-round"]),
                  lr=float(rc["lr"]), seed=int(rc["seed"]))
    return Message(RecordDict({"arrays": ArrayRecord(sd), "metrics": MetricRecord({"num-examples": n})}),
                   reply_to=msg)


app.query()(partition_query)
