"""Client state that survives failures, driven through nnc_mod + NNCFedAvg with Flower's own Message/Context
objects and a small in-process grid that plays the SuperLink (delivery, error replies it generates itself with
``src_node_id = 1``, node restarts with a new node id, duplicate delivery). The real deployment is in
tests/deploy/; these run in a second each."""
import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("sklearn")

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict  # noqa
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from nnc.fl import DownlinkConfig, UplinkConfig  # noqa: E402
from nnc.fl.flower import NNCFedAvg, from_arrayrecord, nnc_mod, partition_query, to_arrayrecord  # noqa: E402

SUPERLINK = 1


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):     # each test's node state files in its own directory
    monkeypatch.setenv("NNC_FL_STATE_DIR", str(tmp_path / "state"))
UP = UplinkConfig(qp_mode="ternary", sparsity=0.1)
DOWN = DownlinkConfig(mode="nnc", qp=-40, sparsity=0.2)
PARTS = 3


def base_fn():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((8, 6)).astype(np.float32), "b": np.zeros(8, np.float32)}


def target(p):
    return {"w": np.full((8, 6), 0.5 * (p + 1), np.float32), "b": np.full(8, -0.25 * p, np.float32)}


class Node:
    def __init__(self, node_id, partition, up=UP, down=DOWN):
        self.id, self.partition = node_id, partition
        self.ctx = Context(run_id=1, node_id=node_id, node_config={"partition-id": partition}, state=RecordDict(),
                           run_config={})
        self.mod = nnc_mod(base_fn, up, down)
        self.fail = None          # None | "raise" | "nan": what the user's train does next round

    def train(self, msg, ctx):
        arrays = from_arrayrecord(msg.content["arrays"])
        if self.fail == "raise":
            self.fail = None
            raise RuntimeError("user train crashed")
        t = target(self.partition)
        new = {k: v + 0.3 * (t[k] - v) for k, v in arrays.items()}
        if self.fail == "nan":
            self.fail = None
            new["w"][0, 0] = np.nan
        return Message(RecordDict({"arrays": to_arrayrecord(new), "metrics": MetricRecord({"num-examples": 10})}),
                       reply_to=msg)

    def handle(self, msg):
        TaskIdentity.node_id = self.id
        if msg.metadata.message_type == MessageType.QUERY:
            return partition_query(msg, self.ctx)
        try:
            return self.mod(msg, self.ctx, self.train)
        except Exception as e:  # what a SuperNode does with an exception in a ClientApp
            return Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)


class Grid:
    """Delivers messages like the SuperLink: to live nodes; for a node that is gone, an error reply that the
    SuperLink itself generates (src_node_id = 1)."""

    def __init__(self, nodes):
        self.nodes = {n.id: n for n in nodes}
        self.duplicate = set()     # node ids whose next reply is delivered twice

    def get_node_ids(self):
        return sorted(self.nodes)

    def send_and_receive(self, messages, timeout=None):
        out = []
        for m in messages:
            TaskIdentity.node_id = SUPERLINK
            m.metadata.__dict__["_message_id"] = m.object_id
            node = self.nodes.get(m.metadata.dst_node_id)
            if node is None:
                err = Message(Error(code=0, reason="Node Unavailable"), reply_to=m)
                err.metadata.__dict__["_src_node_id"] = SUPERLINK      # as linkstate's error replies carry
                out.append(err)
                continue
            rep = node.handle(m)
            out.append(rep)
            if node.id in self.duplicate:
                self.duplicate.discard(node.id)
                out.append(rep)
        TaskIdentity.node_id = SUPERLINK
        return out


def run(st, grid, rounds, hook=None, start=1):
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK
    arrays = to_arrayrecord(base_fn())
    for r in range(start, start + rounds):
        if hook:
            hook(r)
        msgs = list(st.configure_train(r, arrays, ConfigRecord({}), grid))
        arrays, _ = st.aggregate_train(r, grid.send_and_receive(msgs))
    return from_arrayrecord(arrays)


def setup(up=UP, down=DOWN):
    nodes = [Node(100 + p, p, up, down) for p in range(PARTS)]
    st = NNCFedAvg(base_fn(), up, down, by_partition=True, fraction_train=1.0, min_available_nodes=PARTS)
    return st, Grid(nodes), nodes


def reference(rounds, up=UP, down=DOWN):
    st, grid, _ = setup(up, down)
    return run(st, grid, rounds), st


@pytest.mark.parametrize("fail", ["raise", "nan"])
def test_failed_train_charges_the_client_and_it_trains_again_next_round(fail):
    st, grid, nodes = setup()

    def hook(r):
        if r == 2:
            nodes[1].fail = fail

    run(st, grid, 6, hook)
    assert set(st.dropped[2]) == {1}, st.dropped           # charged to partition 1, which failed
    assert all(not st.dropped[r] for r in (1, 3, 4, 5, 6)), st.dropped
    assert all(1 in st.server.ledger[r - 1].up for r in (3, 4, 5, 6))


def test_superlink_generated_error_is_charged_to_the_dead_node_and_its_state_is_released():
    st, grid, nodes = setup()

    def hook(r):
        if r == 3:
            del grid.nodes[nodes[2].id]          # node of partition 2 is gone; the SuperLink answers for it

    run(st, grid, 3, hook)
    assert set(st.dropped[3]) == {2}, st.dropped           # not partition/node 1 (the SuperLink's src id)
    assert 2 not in st.server.decoders and 2 not in st.server.synced


def test_restarted_node_takes_its_partition_over_and_catches_up():
    st, grid, nodes = setup()

    def hook(r):
        if r == 3:   # restart: the old node id is gone, a new node with an empty state serves partition 2
            del grid.nodes[nodes[2].id]
            grid.nodes[200] = Node(200, 2)

    run(st, grid, 6, hook)
    assert all(not d for d in st.dropped.values()), st.dropped
    assert st.server.ledger[2].down_kind[2] in ("catchup", "full")
    assert all(2 in st.server.ledger[r - 1].up for r in range(3, 7))


def test_client_with_lost_state_resynchronises():
    st, grid, nodes = setup()

    def hook(r):
        if r == 3:
            nodes[0].ctx.state = RecordDict()    # e.g. a SuperNode that kept its id but lost its state

    run(st, grid, 7, hook)
    lost = [r for r, d in st.dropped.items() if d]
    assert len(lost) <= 1 and all(set(st.dropped[r]) == {0} for r in lost), st.dropped
    assert all(0 in st.server.ledger[r - 1].up and not st.dropped[r] for r in (5, 6, 7))


def test_duplicate_delivery_is_applied_once_and_not_resent():
    ref, _ = reference(5)
    st, grid, nodes = setup()

    def hook(r):
        if r == 2:
            grid.duplicate.add(nodes[1].id)

    got = run(st, grid, 5, hook)
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k


@pytest.mark.parametrize("method", ["nnc", "float32"])
def test_one_record_per_message_framing_is_counted_and_small(method):
    # 24 tensors: per-tensor records would cost Flower an Array + ArrayChunk object (ids, dtype, shape) each
    many = {f"layer{i}.weight": np.full((4, 3), 0.1 * i, np.float32) for i in range(24)}
    up, down = ((UP, DOWN) if method == "nnc" else
                (UplinkConfig(mode="float32", error_feedback=False), DownlinkConfig(mode="float32")))
    st = NNCFedAvg(many, up, down, by_partition=True, fraction_train=1.0, min_available_nodes=2)
    nodes = [Node(100 + p, p, up, down) for p in range(2)]
    for n in nodes:
        n.mod = nnc_mod(lambda: many, up, down)
        n.train = lambda msg, ctx: Message(RecordDict({
            "arrays": to_arrayrecord({k: v + 0.01 for k, v in from_arrayrecord(msg.content["arrays"]).items()}),
            "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK
    arrays, grid = to_arrayrecord(many), Grid(nodes)
    for r in (1, 2):
        arrays, _ = st.aggregate_train(r, grid.send_and_receive(list(st.configure_train(r, arrays, ConfigRecord({}),
                                                                                          grid))))
    assert all(not d for d in st.dropped.values())
    for rec in st.server.ledger:
        for k in rec.up:
            assert rec.up[k] < rec.up_wire[k] < rec.up[k] + 400, (rec.up, rec.up_wire)
        for k in rec.down:
            assert rec.down[k] < rec.down_wire[k] < rec.down[k] + 400, (rec.down, rec.down_wire)


def test_federated_evaluation_goes_through_the_codec_and_is_counted():
    nodes = [Node(100 + p, p) for p in range(PARTS)]
    seen = {}

    def evaluate(node):
        def fn(msg, ctx):
            seen[node.partition] = from_arrayrecord(msg.content["arrays"])
            return Message(RecordDict({"metrics": MetricRecord({"acc": 1.0, "num-examples": 1})}), reply_to=msg)
        return fn

    st = NNCFedAvg(base_fn(), UP, DOWN, by_partition=True, fraction_train=0.67, fraction_evaluate=1.0,
                   min_available_nodes=PARTS, min_evaluate_nodes=PARTS)
    grid = Grid(nodes)
    for n in nodes:
        orig, ev = n.handle, evaluate(n)

        def handle(msg, n=n, orig=orig, ev=ev):
            if msg.metadata.message_type == MessageType.EVALUATE:
                TaskIdentity.node_id = n.id
                return n.mod(msg, n.ctx, ev)
            return orig(msg)
        n.handle = handle
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK
    arrays = to_arrayrecord(base_fn())
    for r in (1, 2, 3):
        arrays, _ = st.aggregate_train(r, grid.send_and_receive(list(st.configure_train(r, arrays, ConfigRecord({}),
                                                                                          grid))))
        msgs = list(st.configure_evaluate(r, arrays, ConfigRecord({}), grid))
        assert len(msgs) == PARTS
        for m in msgs:     # no float32 model outside the codec
            assert [m.content["arrays"][k].stype for k in m.content["arrays"].keys()] == ["nnc/downlink"]
        seen.clear()
        st.aggregate_evaluate(r, grid.send_and_receive(msgs))
        for p in range(PARTS):   # every client evaluated exactly the server's model
            for k, v in st.server.model.items():
                assert np.array_equal(seen[p][k], v)
        assert all(st.server.synced[p] == r for p in range(PARTS))
        assert all(not d for d in st.dropped.values())
    evals = st.server.ledger[-1]            # the evaluation downlinks of round 3 opened record 4
    assert evals.round == 4 and set(evals.down) == set(range(PARTS)) and all(evals.down[p] > 0 for p in evals.down)


def test_client_state_is_at_most_8_bytes_per_parameter_and_lossless():
    from nnc.fl import ClientCodec, ServerCodec
    rng = np.random.default_rng(1)
    base = {"a": rng.standard_normal((300, 200)).astype(np.float32), "b": np.zeros(300, np.float32)}
    n = sum(v.size for v in base.values())
    up, down = UplinkConfig(qp_mode="ternary", sparsity=0.02, sparsity_scope="global"), DOWN
    server, client = ServerCodec(base, up, down), ClientCodec(base, up, down)
    for r in range(4):
        arrays, scalars = client.state_dict()
        assert sum(np.asarray(v).nbytes for v in arrays.values()) <= 8 * n
        again = ClientCodec(base, up, down)            # what the next round's ClientApp process rebuilds
        again.load_state_dict(arrays, scalars)
        msg = server.downlink_for(0)
        m1, m2 = client.receive(msg), again.receive(msg)
        trained = {k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.05 for k, v in m1.items()}
        u1, u2 = client.encode(trained, 5), again.encode(trained, 5)
        assert u1.payload == u2.payload and all(np.array_equal(m1[k], m2[k]) for k in m1)
        assert all(np.array_equal(client.residual[k], again.residual[k]) for k in base)
        server.step({0: u1})
