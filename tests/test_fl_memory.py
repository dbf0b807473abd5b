"""What keeps an FL round's working memory near the state's size (benchmarks/fl_state.py measures it): levels
in the smallest integer dtype on both ends, a global top-k threshold without a concatenated copy, the trained
model released tensor by tensor, the reply read without a copy; and none of it changes a result."""
import numpy as np
import pytest

from nnc.fl import ClientCodec, DownlinkConfig, ServerCodec, UplinkConfig
from nnc.fl import sparsify as sp


def test_global_threshold_equals_the_threshold_of_all_values_sorted():
    rng = np.random.default_rng(3)
    x = {"a": rng.standard_normal((40, 30)).astype(np.float32), "b": np.float32(rng.standard_normal(5)),
         "c": np.round(rng.standard_normal(2000), 1).astype(np.float32),       # many ties
         "d": np.zeros(7, np.float32), "e": np.array(0.5, np.float32)}
    mags = np.concatenate([np.abs(np.asarray(v, np.float32)).reshape(-1) for v in x.values()])
    for frac in (1e-4, 0.003, 0.01, 0.2, 0.5, 0.999, 1.0):
        keep = max(1, min(mags.size, int(np.ceil(frac * mags.size))))
        want = float(np.sort(mags)[mags.size - keep])
        assert sp.global_threshold(x, frac) == want, frac


def _codecs_after_rounds(seed: int, rounds: int):
    """A server and one client (id 0, 3 samples) of a small model with the coded downlink, after ``rounds``
    rounds of noisy training; returns them with the model."""
    rng = np.random.default_rng(seed)
    base = {"w": rng.standard_normal((64, 32)).astype(np.float32), "b": np.zeros(64, np.float32)}
    up = UplinkConfig(qp_mode="ternary", sparsity=0.05, sparsity_scope="global")
    down = DownlinkConfig(mode="nnc", qp=-40, sparsity=0.1)
    server, client = ServerCodec(base, up, down), ClientCodec(base, up, down)
    for _ in range(rounds):
        m = client.receive(server.downlink_for(0))
        server.step({0: client.encode({k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.05
                                       for k, v in m.items()}, 3)})
    return server, client, base


def test_levels_are_held_in_the_smallest_integer_dtype_and_match_the_server():
    server, client, base = _codecs_after_rounds(0, 4)
    m = client.receive(server.downlink_for(0))
    for k in base:
        assert np.array_equal(client.levels[k], server.levels[k])
        assert client.levels[k].dtype.itemsize <= 2 and server.levels[k].dtype.itemsize <= 2
        assert np.array_equal(m[k], server.model[k])
    from nnc.fl.transport import _add_levels                 # past int16: the dtype grows, values stay exact
    got = _add_levels(np.full(4, 30000, np.int16), np.full(4, 40000, np.int32))
    assert got.dtype == np.int32 and (got == 70000).all()


def test_encode_can_release_the_trained_model_tensor_by_tensor_with_the_same_upload():
    rng = np.random.default_rng(1)
    base = {f"l{i}": rng.standard_normal((50, 20)).astype(np.float32) for i in range(3)}
    up = UplinkConfig(qp_mode="ternary", sparsity=0.02, sparsity_scope="global")
    down = DownlinkConfig(mode="nnc", qp=-40, sparsity=0.1)
    server = ServerCodec(base, up, down)
    a, b = ClientCodec(base, up, down), ClientCodec(base, up, down)
    for _ in range(3):
        msg = server.downlink_for(0)
        ma = a.receive(msg)
        assert all(np.array_equal(ma[k], v) for k, v in b.receive(msg).items())
        trained = {k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.1 for k, v in ma.items()}
        handed = dict(trained)
        ua, ub = a.encode(trained, 2), b.encode(handed, 2, release=True)
        assert handed == {} and len(trained) == 3
        assert ua.payload == ub.payload
        assert all(np.array_equal(a.residual[k], b.residual[k]) for k in base)
        server.step({0: ua})


def test_view_arrayrecord_reads_the_reply_without_a_copy():
    pytest.importorskip("flwr")
    from nnc.fl.flower.records import to_arrayrecord, view_arrayrecord
    x = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
         "s": np.array(3, np.int64), "e": np.zeros((0, 2), np.float16)}
    rec = to_arrayrecord(x)
    v = view_arrayrecord(rec)
    for k in x:
        assert v[k].dtype == x[k].dtype and v[k].shape == x[k].shape and np.array_equal(v[k], x[k])
    assert not v["a"].flags.writeable and v["a"].base is not None         # a view of the record's bytes


# --- the server's side (issue 17: a 200 M-parameter deployment) -------------------------------------------------
def test_sparse_update_reads_back_the_decoded_values_bit_for_bit():
    from nnc.fl.transport import SparseUpdate
    rng = np.random.default_rng(5)
    sparse = np.zeros((300, 40), np.float32)
    sparse.reshape(-1)[rng.choice(sparse.size, 90, replace=False)] = rng.standard_normal(90).astype(np.float32)
    sparse[0, :3] = [-0.0, np.float32(1e-45), -np.float32(1e-45)]         # signed zero and subnormals kept
    dense = rng.standard_normal((20, 5)).astype(np.float32)
    shapes = {"s": sparse, "d": dense, "absent": np.zeros(7, np.float32), "scalar": np.float32(0.0)}
    u = SparseUpdate({"s": sparse, "d": dense, "scalar": np.array(-0.0, np.float32)}, shapes)
    assert list(u) == list(shapes)
    for k, want in (("s", sparse), ("d", dense), ("absent", np.zeros(7, np.float32)),
                    ("scalar", np.array(-0.0, np.float32))):
        got = u[k]
        assert got.dtype == np.float32 and got.shape == np.shape(want)
        assert np.array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32)), k
    assert u.nbytes < sparse.nbytes / 10 + dense.nbytes + 64


def test_compact_decoder_history_decodes_exactly_like_the_plain_one():
    from nnc.incremental import UpdateDecoder, UpdateEncoder
    from nnc.config import EncoderConfig
    from nnc.fl.transport import _CompactState
    rng = np.random.default_rng(2)
    enc = UpdateEncoder(config=EncoderConfig(qp=-30, dq=False), tca=True, hdsp=True)
    plain, compact = UpdateDecoder(), UpdateDecoder()
    compact.state = _CompactState()
    for r in range(4):
        d = {"w": np.where(rng.random((128, 64)) < 0.02, rng.standard_normal((128, 64)), 0).astype(np.float32),
             "b": rng.standard_normal(64).astype(np.float32) * 0.1}
        stream = enc.encode_update(d)
        a, b = plain.decode_update(stream), compact.decode_update(stream)
        assert set(a) == set(b)
        for k in a:
            assert np.array_equal(a[k], b[k]), (r, k)
    dense = sum(h.levels.nbytes + h.seen_nonzero.nbytes for h in plain.state.tensors.values())
    assert compact.state.nbytes < dense / 2
    assert all(h.levels is None and h.seen_nonzero is None for h in compact.state.tensors.values())


def test_server_with_the_coded_downlink_holds_no_float32_model():
    server, client, base = _codecs_after_rounds(4, 3)
    assert server._model is None
    view, m = server.model_view(), client.receive(server.downlink_for(0))
    for k in base:
        assert np.array_equal(view[k], m[k]) and np.array_equal(server.model[k], m[k])


def test_server_round_memory_per_parameter_is_bounded():
    """Peak RSS of a subprocess running the ServerApp's path (NNCFedAvg.start, 2 clients, 2 rounds, 4 M
    parameters; benchmarks/fl_state.py --server): the decoded uploads and the decoder histories are held
    compactly and the server keeps no float32 model of its own. It was 60-65 B/param (the dense update and a
    5 B/param decoder history per client, a float32 model besides Flower's); now 37-40 (glibc keeps part of the
    freed heap at this size), 31.5 in a 200 M-parameter deployment."""
    pytest.importorskip("flwr")
    import importlib.util
    import json
    import tempfile
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fl_state.py"
    spec = importlib.util.spec_from_file_location("fl_state_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with tempfile.TemporaryDirectory() as tmp:
        bench._child(bench.SERVER_SETUP, 4_000_000, tmp)
        row = json.loads(bench._child(bench.SERVER, 4_000_000, tmp).strip().splitlines()[-1])
    assert row["same_model_as_setup"] and row["dropped"] == {"1": {}, "2": {}}
    assert row["b_per_param"] < 50, row
