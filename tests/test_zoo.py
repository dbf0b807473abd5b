"""Every ONNX model we can get from packages, int8 versions of them made with onnxruntime's quantisation tools,
and small graphs built around shape-like constants: each decodes to a model onnxruntime runs, at QP -20, -32
and -44 (issue 20, item 1). Tensors that reach shape-like inputs come back exactly; QP extremes do not raise
internal errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import nnc  # noqa: E402
import nnc.converters as C  # noqa: E402
from nnc.errors import InputError  # noqa: E402

import _zoo_models as Z  # noqa: E402

QPS = (-20, -32, -44)
FLOAT = Z.float_models()
GRAPHS = Z.shape_graphs()


@pytest.fixture(scope="session")
def quantized(tmp_path_factory):
    pytest.importorskip("onnxruntime.quantization")
    return Z.quantized_models(FLOAT, str(tmp_path_factory.mktemp("zoo_int8")))


def _run(model, feeds):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _roundtrip(model, cfg, **kw):
    lm = C.from_onnx(model, **kw)
    bs = nnc.encode(lm.tensors, cfg, topology=lm.topology)
    dm = nnc.decode_model(bs)
    return C.to_onnx(dm.tensors, dm.topology), lm


def _initializers(model):
    from onnx import numpy_helper
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _check_runs(key, model, qp, close_rel=None):
    feeds = Z.feeds(model, key=key)
    ref = _run(model, feeds)
    decoded, _ = _roundtrip(model, nnc.EncoderConfig(qp=qp))
    out = _run(decoded, feeds)       # raises if the decoded model does not run
    assert [o.shape for o in out] == [r.shape for r in ref]
    if close_rel is not None:
        for o, r in zip(out, ref):
            if r.dtype.kind == "f" and r.size:
                err = float(np.max(np.abs(o.astype("f8") - r)))
                assert err <= close_rel * max(float(np.max(np.abs(r))), 0.01), (key, qp, err)
    return decoded


@pytest.mark.parametrize("qp", QPS)
@pytest.mark.parametrize("key", sorted(FLOAT))
def test_packaged_float_models_run_after_decoding(key, qp):
    model = onnx.load(FLOAT[key])
    # QP -44 is fine quantisation: the outputs stay close (max |error| <= 10 % of max |output|, floor 0.01)
    _check_runs(key, model, qp, close_rel=0.1 if qp == -44 else None)


@pytest.mark.parametrize("qp", QPS)
@pytest.mark.parametrize("key", ["ocr_cls_qdq_s8_perchannel", "ocr_cls_qop_u8", "ocr_cls_dynamic_u8",
                                 "ocr_det_qdq_u8_perchannel", "ocr_rec_dynamic_s8", "ocr_rec_qop_s8_perchannel",
                                 "silero_seq_dynamic_u8", "silero_seq_dynamic_s8"])
def test_int8_models_run_after_decoding_with_integer_weights_exact(quantized, key, qp):
    if key not in quantized:
        pytest.skip(f"{key}: source model not installed")
    model = onnx.load(quantized[key])
    decoded = _check_runs(key, model, qp)
    before, after = _initializers(model), _initializers(decoded)
    for name, a in before.items():
        if a.dtype.kind in "iub":             # every integer initializer: same dtype, same values
            assert after[name].dtype == a.dtype and np.array_equal(after[name], a), name


@pytest.mark.parametrize("qp", QPS)
@pytest.mark.parametrize("key", sorted(GRAPHS))
@pytest.mark.parametrize("small", [16, 0], ids=["default", "no_size_rule"])
def test_shape_constants_come_back_exactly(key, qp, small):
    """The graph analysis alone (small_tensor_elements=0: no size rule) keeps every tensor that reaches a
    shape-like input exact, with the non-weight QP as coarse as the weights' QP."""
    model = GRAPHS[key]
    feeds = Z.feeds(model, key=key)
    ref = _run(model, feeds)
    decoded, lm = _roundtrip(model, nnc.EncoderConfig(qp=qp, nonweight_qp=qp), small_tensor_elements=small)
    out = _run(decoded, feeds)
    assert [o.shape for o in out] == [r.shape for r in ref]
    shape_like = {"scales", "hw_f", "shp_f", "sl_f", "pads_f", "rep_f", "exp_f", "k_f", "cs_f", "lo", "hi"}
    before, after = _initializers(model), _initializers(decoded)
    for name in shape_like & set(before):
        assert name not in lm.tensors
        assert after[name].dtype == before[name].dtype and np.array_equal(after[name], before[name]), name
    assert "w" in lm.tensors                  # the weights are still coded


def test_exact_value_names_follow_cast_identity_concat():
    from nnc.converters._onnx import exact_value_names
    names = exact_value_names(GRAPHS["reshape_float_shape"])
    assert "shp_f" in names and "w" not in names
    names = exact_value_names(GRAPHS["resize_sizes_cast_concat"])
    assert {"hw_f", "st", "en"} <= names and "w" not in names and "x" not in names


@pytest.mark.parametrize("values", [[1, 1, 2, 2], [0.0, 1.0], [1e-6], [2.0 ** 31, 1.0]])
@pytest.mark.parametrize("dq", [True, False])
def test_qp_minus_128_on_tiny_tensors_codes_without_internal_error(values, dq):
    x = np.array(values, "f4")
    out = nnc.decode(nnc.encode({"t": x, "w": np.ones((2, 2), "f4")},
                                nnc.EncoderConfig(qp=-32, nonweight_qp=-128, qp_per_tensor={"w": -128}, dq=dq)))
    np.testing.assert_allclose(out["t"], x, rtol=1e-5, atol=2e-9 if x.max() < 1e9 else 4.0)


def test_values_too_large_for_any_qp_are_an_input_error_naming_the_tensor():
    with pytest.raises(InputError, match="'big'"):
        nnc.encode({"big": np.array([3e38, -3e38], "f4")}, nnc.EncoderConfig(nonweight_qp=-128))
