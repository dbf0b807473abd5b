"""Task-aware rounding (nnc.coding.tools.compensate, issue 20): error compensation from calibration input
moments gives a lower layer-output error than plain rounding at the same qp and about the same payload, and the
encoder codes exactly the levels it chose."""
import numpy as np
import pytest

import nnc
from nnc.coding.quant import quantize_tensor, reconstruct_uniform
from nnc.coding.tools import compensate as cp
from nnc.coding.tools import ratecontrol as rc
from nnc.errors import ConfigError, InputError

QP = -36


def _layer(seed=0, out=48, inn=80, n=3000, rank=6):
    """A linear layer and correlated inputs (a few latent factors plus noise); calibration and evaluation
    samples are disjoint draws."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((inn, rank))
    x = rng.standard_normal((n, rank)) @ mix.T + 0.2 * rng.standard_normal((n, inn))
    w = (0.05 * rng.standard_normal((out, inn))).astype(np.float32)
    return w, x[: n // 2], x[n // 2:]


def _plain(w, qp=QP):
    q, _ = quantize_tensor(w, qp, 2, dq=False)
    return reconstruct_uniform(q, qp, 2), q


def test_compensated_rounding_lowers_the_output_error_on_held_out_inputs_at_equal_payload():
    w, x_cal, x_eval = _layer()
    h_cal, h_eval = cp.input_moments(x_cal), cp.input_moments(x_eval)
    values, levels = cp.compensate_tensor(w, h_cal, QP)
    plain, _ = _plain(w)
    err_plain = cp.output_error(w, plain, h_eval)
    err_comp = cp.output_error(w, values, h_eval)
    # measured: about 50x lower; plain rounding of the same tensor cannot get below it by chance
    assert err_comp < 0.25 * err_plain, (err_comp, err_plain)
    cfg = nnc.EncoderConfig(dq=False)
    bits_plain, bits_comp = rc.payload_bits(plain, QP, cfg), rc.payload_bits(values, QP, cfg)
    assert abs(bits_comp - bits_plain) <= 0.03 * bits_plain, (bits_comp, bits_plain)
    # the weights themselves move away from the nearest levels: this is not plain rounding
    assert np.mean(levels != _plain(w)[1]) > 0.05


def test_the_encoder_codes_exactly_the_chosen_levels():
    w, x_cal, _ = _layer(seed=1)
    conv = (0.05 * np.random.default_rng(2).standard_normal((16, 5, 3, 3))).astype(np.float32)
    x_conv = np.random.default_rng(3).standard_normal((500, 5 * 3 * 3))      # im2col columns, (in, kh, kw) order
    tensors = {"fc.weight": w, "conv.weight": conv, "fc.bias": np.ones(48, np.float32)}
    moments = {"fc.weight": cp.input_moments(x_cal), "conv.weight": cp.input_moments(x_conv)}
    qps = {"fc.weight": QP, "conv.weight": QP - 4}
    cfg = nnc.EncoderConfig(dq=False, qp_per_tensor=qps)
    coded = cp.compensate(tensors, moments, qps, cfg)
    assert coded["fc.bias"] is tensors["fc.bias"]                 # no moments: passed through
    decoded = nnc.decode(nnc.encode(coded, cfg))
    for name in moments:
        _, levels = cp.compensate_tensor(tensors[name], moments[name], qps[name])
        assert coded[name].shape == tensors[name].shape and coded[name].dtype == np.float32
        assert np.array_equal(decoded[name], coded[name]), name
        q, qp_used = quantize_tensor(coded[name], qps[name], 2, dq=False)
        assert qp_used == qps[name] and np.array_equal(q, levels), name


def test_bad_requests_raise_typed_errors_naming_the_tensor():
    w, x_cal, _ = _layer()
    h = cp.input_moments(x_cal)
    with pytest.raises(ConfigError, match="dq=False"):
        cp.compensate({"w": w}, {"w": h}, {"w": QP}, nnc.EncoderConfig())          # DQ would re-choose levels
    with pytest.raises(InputError, match="'w'.*80 x 80"):
        cp.compensate({"w": w}, {"w": h[:10, :10]}, {"w": QP}, nnc.EncoderConfig(dq=False))
    with pytest.raises(InputError, match="not in the model"):
        cp.compensate({"w": w}, {"other": h}, {"w": QP}, nnc.EncoderConfig(dq=False))
    bad = h.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="'w'.*not finite"):
        cp.compensate({"w": w}, {"w": bad}, {"w": QP}, nnc.EncoderConfig(dq=False))
    with pytest.raises(ConfigError, match="damp"):
        cp.compensate({"w": w}, {"w": h}, {"w": QP}, nnc.EncoderConfig(dq=False), damp=-1.0)
    with pytest.raises(ConfigError, match="order"):
        cp.compensate_tensor(w, h, QP, order="random")
    with pytest.raises(InputError, match="'fc'.*positive definite"):      # singular moments and no ridge
        cp.compensate_tensor(w, np.ones((80, 80)), QP, damp=0.0, name="fc")
    with pytest.raises(InputError, match="'b'.*rank >= 2"):
        cp.compensate({"b": w[0]}, {"b": h[:1, :1]}, {"b": QP}, nnc.EncoderConfig(dq=False))


def test_a_layer_no_input_reached_is_plain_rounding():
    w, _, _ = _layer()
    values, levels = cp.compensate_tensor(w, np.zeros((80, 80)), QP)
    plain, q = _plain(w)
    assert np.array_equal(values, plain) and np.array_equal(levels, q)


def test_grouped_moments_compensate_each_group_with_its_own_inputs():
    # a depthwise 3x3 convolution: output channel g reads only input channel g (one 9 x 9 moment matrix each)
    rng = np.random.default_rng(4)
    chans, n = 8, 4000
    w = (0.2 * rng.standard_normal((chans, 1, 3, 3))).astype(np.float32)
    base = rng.standard_normal((chans, n, 2))
    mix = rng.standard_normal((chans, 9, 2))
    cols = np.einsum("gnr,gkr->gnk", base, mix) + 0.1 * rng.standard_normal((chans, n, 9))   # correlated taps
    cal = np.stack([cp.input_moments(c[: n // 2]) for c in cols])
    ev = np.stack([cp.input_moments(c[n // 2:]) for c in cols])
    qp = -28
    values, levels = cp.compensate_tensor(w, cal, qp)
    for g in range(chans):                                     # the same as compensating each row on its own
        v_g, _ = cp.compensate_tensor(w[g:g + 1], cal[g], qp)
        assert np.array_equal(values[g:g + 1], v_g)
    plain, _ = _plain(w, qp)
    err_comp = sum(cp.output_error(w[g:g + 1], values[g:g + 1], ev[g]) for g in range(chans))
    err_plain = sum(cp.output_error(w[g:g + 1], plain[g:g + 1], ev[g]) for g in range(chans))
    assert err_comp < 0.5 * err_plain, (err_comp, err_plain)
    with pytest.raises(InputError, match="'dw'.*groups"):
        cp.compensate_tensor(w, cal[:3], qp, name="dw")           # 3 groups do not divide 8 rows


def test_transposed_matmul_weights_are_compensated_as_their_transpose():
    w, x_cal, _ = _layer(seed=5)                  # (out, in); an ONNX MatMul stores it as (in, out)
    h = cp.input_moments(x_cal)
    cfg = nnc.EncoderConfig(dq=False, qp_per_tensor={"mm": QP})
    coded = cp.compensate({"mm": np.ascontiguousarray(w.T)}, {"mm": h}, {"mm": QP}, cfg, transposed={"mm"})
    expected, _ = cp.compensate_tensor(w, h, QP)
    assert coded["mm"].shape == w.T.shape and np.array_equal(coded["mm"], expected.T)
    assert np.array_equal(nnc.decode(nnc.encode(coded, cfg))["mm"], coded["mm"])
    with pytest.raises(InputError, match="'c'.*transposed"):
        cp.compensate({"c": np.zeros((2, 3, 4), np.float32)}, {"c": np.eye(12)}, {"c": QP}, cfg, transposed={"c"})
