"""ClientApp: ``nnc_mod`` around a numpy ``train`` (the codec state goes to the node's state directory)."""
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from nnc.fl.flower import nnc_mod, partition_query

from .task import DOWNLINK, UPLINK, base_fn, local_step

_mods: dict = {}


def scale_mod(msg: Message, ctx: Context, call_next) -> Message:
    rc = ctx.run_config
    key = (int(rc["params"]), int(rc["layers"]), int(rc["seed"]))
    if key not in _mods:
        _mods[key] = nnc_mod(lambda: base_fn(*key), UPLINK, DOWNLINK)
    return _mods[key](msg, ctx, call_next)


app = ClientApp(mods=[scale_mod])


@app.train()
def train_fn(msg: Message, ctx: Context) -> Message:
    rec = msg.content["arrays"]
    arrays = {k: rec[k].numpy() for k in rec.keys()}      # the user's own (writable) copy
    local_step(arrays, int(ctx.node_config["partition-id"]), int(msg.content["config"]["server-round"]),
               float(ctx.run_config["lr"]))
    reply = ArrayRecord({})
    for k in list(arrays):
        reply[k] = Array(arrays.pop(k))                     # into the reply tensor by tensor
    return Message(RecordDict({"arrays": reply, "metrics": MetricRecord({"num-examples": 100})}), reply_to=msg)


app.query()(partition_query)
