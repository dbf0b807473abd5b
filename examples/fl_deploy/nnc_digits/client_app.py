"""ClientApp: an ordinary PyTorch ``train`` function inside ``nnc_mod`` (the README's app)."""
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from nnc.fl.flower import nnc_mod, partition_query

from .task import METHODS, base_fn, train

_mods = {m: nnc_mod(base_fn, up, down) for m, (up, down) in METHODS.items()}


def method_mod(msg: Message, ctx: Context, call_next) -> Message:
    """nnc_mod with the transport settings of run-config ``method`` (one fixed nnc_mod is the usual case)."""
    return _mods[str(ctx.run_config.get("method", "nnc"))](msg, ctx, call_next)


app = ClientApp(mods=[method_mod])


@app.train()
def train_fn(msg: Message, ctx: Context) -> Message:
    rc = ctx.run_config
    sd, n = train(msg.content["arrays"].to_torch_state_dict(), int(ctx.node_config["partition-id"]),
                  int(ctx.node_config["num-partitions"]), int(msg.content["config"]["server-round"]),
                  lr=float(rc["lr"]), seed=int(rc["seed"]))
    return Message(RecordDict({"arrays": ArrayRecord(sd), "metrics": MetricRecord({"num-examples": n})}),
                   reply_to=msg)


app.query()(partition_query)
