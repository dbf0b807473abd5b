"""Quantised ONNX models (QDQ, dynamic, QOperator): integer weights coded as NNC integers with their zero points
removed (per tensor and per channel) and restored on decode, dtype kept, smaller than deflate (issue 20, item 2)."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import nnc  # noqa: E402
import nnc.converters as C  # noqa: E402
from nnc.errors import ModelFormatError  # noqa: E402

import _zoo_models as Z  # noqa: E402


def _qdq_graph():
    """x @ dequant(W1) (uint8, per-tensor zp 131) -> MatMulInteger with per-column uint8 zero points -> conv
    weight dequantised per output channel (int8, zero points differing per channel)."""
    from onnx import TensorProto as TP, helper as h, numpy_helper as nh
    rng = np.random.default_rng(3)
    w1 = np.clip(np.rint(rng.normal(131, 9, (32, 24))), 0, 255).astype(np.uint8)
    b_zp = np.clip(np.rint(rng.normal(120, 5, 24)), 0, 255).astype(np.uint8)
    w2 = np.clip(np.rint(rng.normal(0, 12, (24, 24)) + b_zp[None, :]), 0, 255).astype(np.uint8)
    c_zp = np.array([-3, 0, 5, 7, -1, 2], np.int8)
    wc = np.clip(np.rint(rng.normal(0, 20, (6, 1, 3, 3)) + c_zp[:, None, None, None]), -128, 127).astype(np.int8)
    inits = {"w1": w1, "w1_scale": np.array(0.02, "f4"), "w1_zp": np.array(131, np.uint8),
             "w2": w2, "a_zp": np.array(128, np.uint8), "w2_zp": b_zp,
             "wc": wc, "wc_scale": np.linspace(0.01, 0.03, 6).astype("f4"), "wc_zp": c_zp}
    nodes = [
        h.make_node("DequantizeLinear", ["w1", "w1_scale", "w1_zp"], ["w1f"]),
        h.make_node("MatMul", ["x", "w1f"], ["m1"]),
        h.make_node("Relu", ["m1"], ["r1"]),
        h.make_node("DynamicQuantizeLinear", ["r1"], ["q", "qs", "qz"]),
        h.make_node("MatMulInteger", ["q", "w2", "qz", "w2_zp"], ["mi"]),
        h.make_node("Cast", ["mi"], ["mf"], to=TP.FLOAT),
        h.make_node("Reshape", ["mf", "shape"], ["img"]),
        h.make_node("DequantizeLinear", ["wc", "wc_scale", "wc_zp"], ["wcf"], axis=0),
        h.make_node("Conv", ["img", "wcf"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits["shape"] = np.array([1, 1, 4, 6], np.int64)
    g = h.make_graph(nodes, "q", [h.make_tensor_value_info("x", TP.FLOAT, [1, 32])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 6, 4, 6])],
                     [nh.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m, inits


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_zero_points_removed_per_tensor_and_per_channel_and_restored():
    model, inits = _qdq_graph()
    lm = C.from_onnx(model)
    # coded as NNC integers, zero point subtracted: per tensor (131), per column (MatMulInteger B), per channel
    levels = C._onnx.coded_levels(lm.tensors, lm.topology)
    np.testing.assert_array_equal(levels["w1"], inits["w1"].astype(int) - 131)
    np.testing.assert_array_equal(levels["w2"], inits["w2"].astype(int) - inits["w2_zp"].astype(int)[None, :])
    np.testing.assert_array_equal(levels["wc"],
                                  inits["wc"].astype(int) - inits["wc_zp"].astype(int)[:, None, None, None])
    for k in ("w1", "w2", "wc"):
        assert levels[k].dtype.kind == "i" and abs(float(np.mean(levels[k]))) < 8
    # these small weights are coded together, as one group tensor
    assert [k for k in lm.tensors] == ["nnc_int_group"] and lm.tensors["nnc_int_group"].size == 32 * 24 + 24 * 24 + 54
    for k in ("w1_scale", "w1_zp", "w2_zp", "wc_scale", "wc_zp", "a_zp", "shape"):
        assert k not in lm.tensors                    # scales and zero points stay exact in the graph
    bs = nnc.encode(lm.tensors, nnc.EncoderConfig(qp=-20), topology=lm.topology)
    dm = nnc.decode_model(bs)
    rebuilt = C.to_onnx(dm.tensors, dm.topology)
    from onnx import numpy_helper
    after = {t.name: numpy_helper.to_array(t) for t in rebuilt.graph.initializer}
    for k, v in inits.items():
        assert after[k].dtype == v.dtype and np.array_equal(after[k], v), k
    x = np.random.default_rng(0).standard_normal((1, 32)).astype("f4")
    np.testing.assert_array_equal(_run(rebuilt, x), _run(model, x))
    # the other writers restore them too
    restored = C.restore_tensors(dm.tensors, dm.topology)
    assert restored["w2"].dtype == np.uint8 and np.array_equal(restored["w2"], inits["w2"])


def test_unsigned_dtypes_kept_through_the_python_api():
    u8 = np.arange(240, dtype=np.uint8).reshape(12, 20)
    u16 = np.arange(0, 60000, 1000, dtype=np.uint16)
    flags = np.array([True, False, True])
    out = nnc.decode(nnc.encode({"u8": u8, "u16": u16, "flags": flags}, nnc.EncoderConfig(signal_dtype=True)))
    assert out["u8"].dtype == np.uint8 and np.array_equal(out["u8"], u8)
    assert out["u16"].dtype == np.uint16 and np.array_equal(out["u16"], u16)
    assert out["flags"].dtype == np.bool_ and np.array_equal(out["flags"], flags)


def test_bad_zero_point_record_is_a_model_format_error():
    model, _ = _qdq_graph()
    lm = C.from_onnx(model)
    topo_model = C._onnx.parse_topology(lm.topology)
    for t in topo_model.graph.initializer:
        for e in t.external_data:
            if e.key == "nnc_zero_point":
                e.value = json.dumps({"axis": 3, "values": [1, 2]})
    from nnc.topology import Topology
    bad = Topology(2, 1, zlib.compress(topo_model.SerializeToString()))
    dm = nnc.decode_model(nnc.encode(lm.tensors, topology=bad))
    with pytest.raises(ModelFormatError, match="zero point"):
        C.to_onnx(dm.tensors, dm.topology)


def test_group_tensors_listed_by_the_manifest_and_cut_out_on_restore():
    from nnc.converters import manifest
    model, inits = _qdq_graph()
    lm = C.from_onnx(model)
    dm = nnc.decode_model(nnc.encode(lm.tensors, topology=lm.topology))
    # the bitstream carries the group tensor (what `nnc check` verifies), the model its members
    assert manifest.expected_names(dm.topology) == ["nnc_int_group"]
    restored = C.restore_tensors(dm.tensors, dm.topology)
    assert "nnc_int_group" not in restored
    for k in ("w1", "w2", "wc"):
        assert restored[k].dtype == inits[k].dtype and np.array_equal(restored[k], inits[k]), k


@pytest.mark.parametrize("record, match", [({"tensor": "nnc_int_group", "offset": 10 ** 6}, "elements 1000000"),
                                           ({"tensor": "nnc_int_group", "offset": -1}, "bad group record"),
                                           ({"tensor": "missing", "offset": 0}, "'missing'"),
                                           ({"offset": 0}, "bad group record"),
                                           ({"tensor": "nnc_int_group", "offset": 0, "low": "x", "bits": 9},
                                            "bad group record")])
def test_bad_group_record_is_a_model_format_error(record, match):
    model, _ = _qdq_graph()
    lm = C.from_onnx(model)
    topo_model = C._onnx.parse_topology(lm.topology)
    for t in topo_model.graph.initializer:
        for e in t.external_data:
            if e.key == "nnc_group" and t.name == "w2":
                e.value = json.dumps(record)
    from nnc.topology import Topology
    bad = Topology(2, 1, zlib.compress(topo_model.SerializeToString()))
    dm = nnc.decode_model(nnc.encode(lm.tensors, topology=bad))
    with pytest.raises(ModelFormatError, match=match):
        C.to_onnx(dm.tensors, dm.topology)
    with pytest.raises(ModelFormatError, match=match):
        C.restore_tensors(dm.tensors, dm.topology)


def _wide_int8_graph():
    """A MatMul whose int8 weight (256 x 128, levels spread over all 256 values, as dynamic quantisation makes
    them) is dequantised per tensor."""
    from onnx import TensorProto as TP, helper as h, numpy_helper as nh
    rng = np.random.default_rng(5)
    w = np.clip(np.rint(rng.normal(0, 40, (256, 128))), -128, 127).astype(np.int8)
    inits = {"w": w, "s": np.array(0.01, "f4"), "z": np.array(0, np.int8)}
    nodes = [h.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]), h.make_node("MatMul", ["x", "wf"], ["y"])]
    g = h.make_graph(nodes, "wide", [h.make_tensor_value_info("x", TP.FLOAT, [1, 256])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 128])],
                     [nh.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m, w


def test_wide_levels_split_into_low_bits_and_restored():
    model, w = _wide_int8_graph()
    lm = C.from_onnx(model)
    topo = C._onnx.parse_topology(lm.topology)
    (rec,) = [json.loads(e.value) for t in topo.graph.initializer for e in t.external_data if e.key == "nnc_group"]
    assert rec["bits"] in (2, 3) and sorted(lm.tensors) == sorted(["w", rec["low"]])
    k = rec["bits"]
    np.testing.assert_array_equal(lm.tensors["w"], w.astype(int) >> k)
    np.testing.assert_array_equal(lm.tensors[rec["low"]], w.astype(int) & ((1 << k) - 1))
    # the split codes smaller than the levels as one tensor (what the trial chose it for)
    split = len(nnc.encode(lm.tensors))
    whole = len(nnc.encode({"w": w}))
    assert split < whole
    dm = nnc.decode_model(nnc.encode(lm.tensors, topology=lm.topology))
    restored = C.restore_tensors(dm.tensors, dm.topology)
    assert sorted(restored) == ["w"] and restored["w"].dtype == np.int8 and np.array_equal(restored["w"], w)
    x = np.random.default_rng(1).standard_normal((1, 256)).astype("f4")
    np.testing.assert_array_equal(_run(C.to_onnx(dm.tensors, dm.topology), x), _run(model, x))


def test_low_bits_out_of_range_is_a_model_format_error():
    model, _ = _wide_int8_graph()
    lm = C.from_onnx(model)
    topo = C._onnx.parse_topology(lm.topology)
    (rec,) = [json.loads(e.value) for t in topo.graph.initializer for e in t.external_data if e.key == "nnc_group"]
    bad = dict(lm.tensors)
    bad[rec["low"]] = bad[rec["low"]].copy()
    bad[rec["low"]][0] = 1 << rec["bits"]
    dm = nnc.decode_model(nnc.encode(bad, topology=lm.topology))
    with pytest.raises(ModelFormatError, match="low-bits tensor"):
        C.to_onnx(dm.tensors, dm.topology)


@pytest.fixture(scope="module")
def int8_models(tmp_path_factory):
    pytest.importorskip("onnxruntime.quantization")
    return Z.quantized_models(Z.float_models(), str(tmp_path_factory.mktemp("int8")))


def _integer_bytes(path):
    """(NNC bytes of the NDUs holding the model's integer weights, zlib level 9 of those weights' raw bytes as
    the ONNX file stores them, integer weight count, all coded parameters)."""
    from onnx import numpy_helper
    model = onnx.load(path)
    lm = C.load_model(path)
    topo = C._onnx.parse_topology(lm.topology)
    slots = [t for t, _, _ in C._onnx._tensor_slots(topo)
             if C._onnx._is_placeholder(t) and t.data_type in C._onnx._int_types()]
    orig = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    raw = b"".join(np.ascontiguousarray(orig[t.name]).tobytes() for t in slots)
    holders = {n for t in slots for n in C._onnx._bitstream_names(t)}
    stream = nnc.encode(lm.tensors, topology=lm.topology)
    units = nnc.bitstream.parse(stream)
    coded = sum(u.size for u in units if u.nnr_unit_type == nnc.bitstream.UnitType.NNR_NDU
                and u.body.topology_elem_id in holders)
    ints = sum(int(np.prod(t.dims)) for t in slots)
    floats = sum(v.size for k, v in lm.tensors.items() if k not in holders)
    return coded, len(zlib.compress(raw, 9)), ints, ints + floats


@pytest.mark.parametrize("key", ["ocr_rec_dynamic_s8", "silero_seq_dynamic_u8", "silero_seq_dynamic_s8",
                                 "ocr_det_qdq_u8_perchannel", "ocr_rec_qop_s8_perchannel",
                                 "ocr_cls_dynamic_u8", "ocr_cls_qdq_s8_perchannel", "ocr_cls_qop_u8"])
def test_integer_weights_coded_smaller_than_deflate(int8_models, key):
    """Every quantised model's integer weights cost fewer bytes through NNC than zlib level 9 of their bytes,
    the small classifier's too (its few-thousand-element tensors are coded together as group tensors)."""
    if key not in int8_models:
        pytest.skip("source model not installed")
    coded, deflated, ints, params = _integer_bytes(int8_models[key])
    assert ints > 0.9 * params
    assert coded < deflated


def test_per_channel_dynamic_classifier_smaller_than_deflate(tmp_path):
    """A variant the zoo does not make (dynamic, int8, per channel): the classifier's weights, which coded each as
    an NDU of its own cost 3 % more than zlib -9 and grouped alone 0.1 % more."""
    pytest.importorskip("onnxruntime.quantization")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src = Z.float_models().get("ocr_cls") or pytest.skip("source model not installed")
    prep = Z._constants_to_initializers(src, str(tmp_path / "prep.onnx"))
    path = str(tmp_path / "cls_dyn_s8.onnx")
    quantize_dynamic(prep, path, weight_type=QuantType.QInt8, per_channel=True)
    coded, deflated, ints, params = _integer_bytes(path)
    assert ints > 0.9 * params
    assert coded < deflated


def test_cli_summary_separates_coded_and_carried_bytes(int8_models, tmp_path, capsys):
    from nnc.cli import main
    path = int8_models.get("ocr_cls_qop_u8") or pytest.skip("source model not installed")
    assert main(["encode", path, "-o", str(tmp_path / "m.nnc"), "--json", "--quiet"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["carried_bytes"] > 0 and s["coded_bytes"] > 0
    assert s["coded_bytes"] + s["carried_bytes"] < s["bitstream_bytes"] <= s["coded_bytes"] + s["carried_bytes"] + 64
    assert s["coded_bits_per_param"] < 12           # int8 weights: about 8 bits each, not thousands
    assert s["file_ratio"] > 1
