"""Property tests (hypothesis) of the codec's contract: reconstruction error bounds per quantisation mode,
lossless integer tensors, deterministic encoding.

Error bounds, with step = step_size(qp_used, qp_density) (``qp_used`` from ``decode_model().details``; it
differs from the requested qp only when the overflow guard raised it):

* uniform reconstruction quantisation (``dq=False``): ``|x - x^| <= step/2`` up to float32 rounding.
  q = round(x * float32(1/step)) is computed in float32, so the bound carries a relative term:
  ``step/2 + 2**-21 * max(|x|, |x^|)``.
* dependent quantisation (``dq=True``): ``|x - x^| < 2 * step`` (plus the same rounding term).
  Why: DQ switches between two quantisers whose reconstruction points are 2*step apart (Q0: even multiples
  of step; Q1: zero and odd multiples); the state machine (driven by the parity of each level) fixes which
  one a value must use. The nearest point of the forced quantiser is within step; the trellis may take the
  neighbouring point instead to reach a better next state, which is at most 2*step away. A point further
  away has the same parity as the nearest one (same next state) and more distortion, so with lambda = 0
  (NNCodec's quantiser ignores rate) it is never chosen. Measured: max |x - x^| / step = 1.89 over 300
  random tensors (gauss/laplace/uniform, qp -60..-10, with and without row skipping); the uniform
  quantiser's maximum in the same run was 0.5045 (the rounding term).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nnc
from nnc.coding.quant import step_size

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.one_of(hnp.array_shapes(min_dims=1, max_dims=1, min_side=1, max_side=300),
                   hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=12))


@st.composite
def float_tensors(draw):
    shape = draw(shapes)
    scale = draw(st.sampled_from([1e-4, 1e-2, 1.0, 30.0]))
    elems = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False, width=32)
    x = draw(hnp.arrays(np.float32, shape, elements=elems)) * np.float32(scale)
    return x.astype(np.float32)


def _max_normalised_error(x: np.ndarray, dq: bool, qp: int, qp_density: int, **kw) -> tuple[float, np.ndarray]:
    cfg = nnc.EncoderConfig(qp=qp, nonweight_qp=qp, qp_density=qp_density, dq=dq, **kw)
    model = nnc.decode_model(nnc.encode({"t": x}, cfg))
    y = model.tensors["t"]
    assert y.shape == x.shape and y.dtype == np.float32
    step = float(step_size(model.details["t"].qp, qp_density))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    slack = 2.0 ** -21 * np.maximum(np.abs(x64), np.abs(y64))
    return (np.abs(x64 - y64) - slack) / step, y


@SETTINGS
@given(x=float_tensors(), qp=st.integers(-70, -8), qp_density=st.integers(0, 4), row_skipping=st.booleans())
def test_uniform_error_at_most_half_a_step(x, qp, qp_density, row_skipping):
    lo = -(1 << (5 + qp_density))
    assume(qp >= lo)
    err, _ = _max_normalised_error(x, False, qp, qp_density, row_skipping=row_skipping)
    assert err.max() <= 0.5 + 1e-9


@SETTINGS
@given(x=float_tensors(), qp=st.integers(-70, -8), qp_density=st.integers(0, 4), row_skipping=st.booleans(),
       param_opt=st.booleans())
def test_dq_error_below_two_steps(x, qp, qp_density, row_skipping, param_opt):
    assume(qp >= -(1 << (5 + qp_density)))
    err, _ = _max_normalised_error(x, True, qp, qp_density, row_skipping=row_skipping, param_opt=param_opt)
    assert err.max() < 2.0


def test_dq_bound_is_tight_enough_to_matter():
    # the bound is not vacuous: on real-looking data DQ does use more than one step of error somewhere,
    # and the uniform quantiser never exceeds half a step (up to rounding)
    rng = np.random.default_rng(7)
    x = rng.laplace(size=(64, 256)).astype(np.float32)
    dq_err, _ = _max_normalised_error(x, True, -32, 2)
    urq_err, _ = _max_normalised_error(x, False, -32, 2)
    assert 1.0 < dq_err.max() < 2.0
    assert 0.45 < urq_err.max() <= 0.5 + 1e-9


int_dtypes = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16])


@SETTINGS
@given(data=st.data(), dtype=int_dtypes, shape=shapes)
def test_integer_tensors_exact(data, dtype, shape):
    info = np.iinfo(dtype)
    lo, hi = max(int(info.min), -(2**31) + 1), min(int(info.max), 2**31 - 1)
    x = data.draw(hnp.arrays(dtype, shape, elements=st.integers(lo, hi)))
    try:
        y = nnc.decode(nnc.encode({"i": x}))["i"]
    except nnc.InputError:
        # dtypes without an NNR data format (e.g. uint16) must be refused, never coded lossily
        assert dtype in (np.uint16,)
        return
    assert y.shape == x.shape
    assert np.array_equal(y.astype(np.int64), x.astype(np.int64))


@SETTINGS
@given(x=float_tensors(), qp=st.integers(-60, -20), dq=st.booleans(), scan_order=st.integers(0, 4))
def test_encode_is_deterministic(x, qp, dq, scan_order):
    tensors = {"a": x, "b": (x * 2).astype(np.float32), "c": np.arange(7, dtype=np.int32)}
    cfg = nnc.EncoderConfig(qp=qp, dq=dq, scan_order=scan_order, row_skipping=not (dq and scan_order))
    first = nnc.encode(tensors, cfg)
    assert nnc.encode(tensors, cfg) == first
    assert nnc.Encoder(cfg.replace(threads=3)).encode(tensors) == first     # threads do not change bytes
    assert nnc.encode({k: v.copy() for k, v in tensors.items()}, cfg) == first


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_float_dtypes_keep_dtype_and_bound(dtype):
    x = np.random.default_rng(3).standard_normal((32, 32)).astype(dtype)
    model = nnc.decode_model(nnc.encode({"t": x}, nnc.EncoderConfig(qp=-40, dq=False)))
    y = model.tensors["t"]
    assert y.dtype == dtype
    step = float(step_size(model.details["t"].qp, 2))
    tol = 0.5 * step + (np.finfo(dtype).eps * 4 if dtype == np.float16 else 1e-6) * np.abs(x).max()
    assert np.abs(x.astype(np.float64) - y.astype(np.float64)).max() <= tol
