"""benchmarks/bench_rd.py --smooth compares each nnc point with the reference at equal distortion, interpolated on
the reference's curve (its best uniform settings), never extrapolated (issue 20, item 4)."""
from __future__ import annotations

import importlib.util
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_rd", os.path.join(ROOT, "benchmarks", "bench_rd.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ref(setting, size, q):
    return {"method": "reference*", "setting": setting, "bytes": size, "q": q}


def test_envelope_keeps_only_points_no_cheaper_point_beats(bench):
    rows = [_ref("a", 100, 0.5), _ref("b", 120, 0.6), _ref("c", 150, 0.2), _ref("d", 160, 0.3),
            _ref("e", 200, 0.05), {"method": "nnc x", "setting": "n", "bytes": 90, "q": 0.01}]
    assert [r["setting"] for r in bench.reference_envelope(rows)] == ["a", "c", "e"]


def test_reference_bytes_interpolated_in_log_log_and_none_outside(bench):
    env = bench.reference_envelope([_ref("a", 100, 0.4), _ref("b", 400, 0.1)])
    # halfway in log q between 0.4 and 0.1 is 0.2: halfway in log bytes is 200
    assert math.isclose(bench.reference_bytes_at(env, 0.2), 200.0, rel_tol=1e-12)
    assert bench.reference_bytes_at(env, 0.4) == pytest.approx(100.0)
    assert bench.reference_bytes_at(env, 0.5) is None        # worse than the reference's cheapest point
    assert bench.reference_bytes_at(env, 0.05) is None       # better than its best: not extrapolated


def test_summary_reports_every_nnc_point_and_where_it_lies(bench):
    rows = [_ref("a", 100, 0.4), _ref("b", 400, 0.1),
            {"method": "nnc t", "setting": "bpp=1", "bytes": 150, "q": 0.2, "task": 1.0},
            {"method": "nnc t", "setting": "bpp=2", "bytes": 300, "q": 0.01, "task": 1.0},
            {"method": "nnc t", "setting": "bpp=0.5", "bytes": 50, "q": 0.9, "task": 0.5}]
    s = bench.summarise_smooth("ocr_rec", rows)
    by = {p["setting"]: p for p in s["points"]}
    assert by["bpp=1"]["saving_percent"] == pytest.approx(25.0)          # 150 B where the reference needs 200 B
    assert by["bpp=2"]["where"] == "better than every reference point" and by["bpp=2"]["saving_percent"] is None
    assert by["bpp=0.5"]["where"] == "worse than every reference point"
    assert s["methods"]["nnc t"]["savings_inside"] == [pytest.approx(25.0)]


def test_fitted_comparison_of_two_power_laws(bench):
    # reference: q = (bytes / 1000) ** -2 for both DQ modes; nnc needs 20 % fewer bytes for any q
    rows = [{"method": "reference*", "setting": f"qp={-i} dq={m}", "bytes": b, "q": (b / 1000) ** -2}
            for m in (0, 1) for i, b in enumerate((1000, 2000, 4000, 8000))]
    rows += [{"method": "nnc t", "setting": f"bpp={b}", "bytes": 0.8 * b, "q": (b / 1000) ** -2}
             for b in (1500, 3000, 6000)]
    f = bench.fitted_comparison(rows, "nnc t")
    assert f["q_range"] == [pytest.approx((6000 / 1000) ** -2), pytest.approx((1500 / 1000) ** -2)]
    assert all(v == pytest.approx(20.0) for v in f["savings"].values()) and len(f["savings"]) == 3


def test_a_reference_setting_at_exactly_the_same_distortion_gives_its_bytes(bench):
    # the uint8 model: integer weights lossless in both codecs, every reference setting decodes to the same
    # outputs (one envelope point, distortion 0); nnc's point at distortion 0 is compared with it
    env = bench.reference_envelope([_ref("qp=-26 dq=1", 235703, 0.0), _ref("qp=-32 dq=1", 235703, 0.0)])
    assert bench.reference_bytes_at(env, 0.0) == 235703.0
    assert bench.reference_bytes_at(env, 1e-9) is None                 # still never extrapolated


def test_summary_names_the_variant_the_calibration_data_chooses(bench):
    rows = [_ref("a", 100, 0.5), _ref("b", 200, 0.05),
            {"method": "nnc A", "setting": "bpp=4", "bytes": 120, "q": 0.2, "calib_distortion": 0.01},
            {"method": "nnc A", "setting": "bpp=5", "bytes": 150, "q": 0.1, "calib_distortion": 0.01},
            {"method": "nnc B", "setting": "bpp=4", "bytes": 120, "q": 0.1, "calib_distortion": 0.02},
            {"method": "nnc B", "setting": "bpp=5", "bytes": 150, "q": 0.06, "calib_distortion": 0.02}]
    s = bench.summarise_smooth("silero_vad", rows)
    assert s["calibration_choice"] == "nnc A"        # lower on calibration, though B is better on evaluation


def test_silero_moments_use_the_columns_of_each_convolution(bench):
    # the im2col columns of the task-aware rounding's input moments, in the weight's (in, k) order: W @ cols is
    # the convolution the model computes (stride and padding included)
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 11))
    w = rng.standard_normal((3, 4, 3))
    for stride, pad in ((1, 1), (2, 1), (2, 0)):
        cols = bench._im2col1d(x, 3, stride, pad)
        xp = np.pad(x[0], ((0, 0), (pad, pad)))
        direct = np.array([[sum(np.dot(w[o, c], xp[c, t * stride:t * stride + 3]) for c in range(4))
                            for t in range((xp.shape[1] - 3) // stride + 1)] for o in range(3)])
        assert np.allclose(cols @ w.reshape(3, -1).T, direct.T)
