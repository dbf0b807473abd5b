"""ClientApp: an ordinary PyTorch ``train`` function inside ``nnc_mod`` (the README's app)."""
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from nnc.fl.flower import nnc_mod, partition_query

from .task import METHODS, base_fn, train

_mods: dict = {}


def method_mod(msg: Message, ctx: Context, call_next) -> Message:
    """nnc_mod for the run-config's ``method``, ``seed`` and ``hidden`` (one fixed nnc_mod is the usual case)."""
    rc = ctx.run_config
    key = (str(rc.get("method", "nnc")), int(rc.get("seed", 0)), int(rc.get("hidden", 32)))
    if key not in _mods:
        up, down = METHODS[key[0]]
        _mods[key] = nnc_mod(lambda: base_fn(key[1], key[2]), up, down)
    return _mods[key](msg, ctx, call_next)


app = ClientApp(mods=[method_mod])


@app.train()
def train_fn(msg: Message, ctx: Context) -> Message:
    rc = ctx.run_config
    sd, n = train(msg.content["arrays"].to_torch_state_dict(), int(ctx.node_config["partition-id"]),
                  int(ctx.node_config["num-partitions"]), int(msg.content["config"]["server-round"]),
                  lr=float(rc["lr"]), seed=int(rc["seed"]), hidden=int(rc.get("hidden", 32)))
    return Message(RecordDict({"arrays": ArrayRecord(sd), "metrics": MetricRecord({"num-examples": n})}),
                   reply_to=msg)


app.query()(partition_query)
