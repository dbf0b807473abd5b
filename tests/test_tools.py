"""Encoder coding tools (nnc.coding.tools): configs, round trips, ranges, rate control, CLI flags."""
import numpy as np
import pytest

import nnc
from nnc.errors import ConfigError
from nnc.coding.tools import bitdepth, codebook, sparsify
from nnc.coding.tools.ratecontrol import allocate_qps


def _model(seed=0):
    r = np.random.default_rng(seed)
    return {"conv.weight": (r.normal(size=(8, 3, 3, 3)) * 0.1).astype("f4"),
            "fc.weight": (r.integers(-3, 4, size=(16, 20)) * 0.05).astype("f4"),
            "fc.bias": (r.normal(size=16) * 0.01).astype("f4"),
            "idx": r.integers(-9, 9, size=(4, 4)).astype(np.int32)}


@pytest.mark.parametrize("kw", [dict(codebook="maybe"), dict(bitdepth=0), dict(bitdepth=32), dict(bitdepth=True),
                                dict(bitdepth=8, opt_qp=True), dict(bitdepth=8, qp_per_tensor={"a": -30}),
                                dict(sparsity=1.5), dict(struct_sparsity=-0.1),
                                dict(target_bits_per_param=2, max_rel_error=0.01),
                                dict(target_bits_per_param=0), dict(max_rel_error=0.01, opt_qp=True)])
def test_invalid_tool_settings_rejected(kw):
    with pytest.raises(ConfigError):
        nnc.EncoderConfig(**kw)


def test_named_constructors():
    assert nnc.EncoderConfig.with_codebook(-30, "force").codebook == "force"
    assert nnc.EncoderConfig.integer_aligned(8).bitdepth == 8
    assert nnc.EncoderConfig.for_size(3).target_bits_per_param == 3.0
    assert nnc.EncoderConfig.for_error(0.02).max_rel_error == 0.02


@pytest.mark.parametrize("mode", ["auto", "force"])
@pytest.mark.parametrize("dq", [True, False])
def test_codebook_round_trip(mode, dq):
    t = _model()
    dm = nnc.decode_model(nnc.encode(t, nnc.EncoderConfig(qp=-30, codebook=mode, dq=dq)))
    assert list(dm.tensors) == list(t)
    assert np.array_equal(dm.tensors["idx"], t["idx"])
    for k in ("conv.weight", "fc.weight", "fc.bias"):
        step = float(nnc.step_size(dm.details[k].qp, 2))
        bound = 2 * step if dq else step * 0.5     # a DQ fallback (auto): trellis errors exceed step/2
        assert np.abs(dm.tensors[k] - t[k]).max() <= bound + 1e-7


def test_forced_codebook_is_signalled():
    bs = nnc.encode(_model(), nnc.EncoderConfig(qp=-30, codebook="force"))
    info = nnc.inspect(bs)
    assert "codebook" in str(info).lower()


def test_codebook_header_bits_match_writer():
    import nnc.bitstream as B
    from nnc.bitstream.bits import BitWriter
    vals, z, k = [-7, -3, 0, 2, 9, 40], 2, 1
    cb = B.Codebook.from_values(vals, z, k)
    w = BitWriter()
    w.u(4, k); w.ue(2, cb.codebook_size); w.ie(2, cb.codebook_center_offset); w.ie(7, cb.codebook_zero_value)
    for d in cb.codebook_delta_left + cb.codebook_delta_right:
        w.ue(k, d)
    assert codebook.codebook_header_bits(vals, z, k) == w.nbits
    assert codebook.best_egk(vals, z)[1] == min(codebook.codebook_header_bits(vals, z, e) for e in range(16))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dq", [False, True])
def test_bitdepth_levels_fit(bits, dq):
    t = _model()
    t["pos.weight"] = np.abs(t["conv.weight"][:4].reshape(4, -1))
    dm = nnc.decode_model(nnc.encode(t, nnc.EncoderConfig(bitdepth=bits, dq=dq)))
    for k, v in t.items():
        if v.dtype.kind != "f":
            continue
        b = bitdepth.effective_bits(bits, v.ndim > 1)
        lo, hi = bitdepth.level_range(v, b)
        lv = dm.details[k].levels
        assert lv.min() >= lo - 1 and lv.max() <= hi + 1   # DQ may move a clipped value by one (spec §6 item 30)
        if not dq:
            assert lv.min() >= lo and lv.max() <= hi


def test_intaligned_qp_zero_tensor():
    assert bitdepth.intaligned_qp(np.zeros((3, 3), "f4"), 8, 2) == 0


def test_sparsify_reaches_target_and_round_trips():
    r = np.random.default_rng(1)
    t = {"w": r.normal(size=(64, 64)).astype("f4") * 0.1, "b": r.normal(size=64).astype("f4")}
    s = sparsify.sparsify_unstructured(t, qp=-40, target=0.7)
    assert sparsify.sparsity({"w": s["w"]}) >= 0.7
    assert np.array_equal(s["b"], t["b"])
    st = sparsify.sparsify_structured(t, gain=0.9)
    zero_rows = int((np.abs(st["w"]).sum(1) == 0).sum())
    assert zero_rows > 0
    bs = nnc.encode(t, nnc.EncoderConfig(qp=-40, sparsity=0.7, struct_sparsity=0.9))
    assert len(bs) < len(nnc.encode(t, nnc.EncoderConfig(qp=-40)))


def test_opt_qp_changes_weight_qps_only():
    t = _model()
    dm = nnc.decode_model(nnc.encode(t, nnc.EncoderConfig(qp=-30, opt_qp=True)))
    assert dm.details["fc.bias"].qp == -75
    assert dm.details["conv.weight"].qp != -30 or dm.details["fc.weight"].qp != -30


def test_for_error_meets_target():
    r = np.random.default_rng(2)
    t = {"a.weight": (r.normal(size=(64, 96)) * 0.05).astype("f4"), "b.weight": (r.normal(size=(32, 16)) * 2).astype("f4")}
    for target in (0.005, 0.03):
        d = nnc.decode(nnc.encode(t, nnc.EncoderConfig.for_error(target)))
        for k in t:
            rel = np.linalg.norm(d[k] - t[k]) / np.linalg.norm(t[k])
            assert rel <= target * 1.001, (k, rel)


def test_for_size_tracks_budget():
    r = np.random.default_rng(3)
    t = {"a.weight": (r.normal(size=(128, 96)) * 0.05).astype("f4"), "b.weight": (r.normal(size=(64, 32)) * 0.1).astype("f4")}
    n = sum(v.size for v in t.values())
    sizes = [len(nnc.encode(t, nnc.EncoderConfig.for_size(b, dq=False))) * 8 / n for b in (1.0, 2.0, 4.0)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert 2.5 < sizes[2] < 5.0
    qps = allocate_qps(t, nnc.EncoderConfig.for_size(3.0))
    assert set(qps) == set(t)


def test_cli_encode_tool_flags(tmp_path):
    from nnc.cli import main
    src = tmp_path / "m.npz"
    np.savez(src, **_model())
    for flags in (["--codebook", "auto"], ["--bitdepth", "6"], ["--opt-qp"], ["--sparsity", "0.5"],
                  ["--max-rel-error", "0.02"], ["--bits-per-param", "3"]):
        out = tmp_path / "m.nnc"
        assert main(["encode", str(src), "-o", str(out), "--quiet", *flags]) == 0, flags
        assert set(nnc.decode(out.read_bytes())) == set(_model())
    assert main(["encode", str(src), "-o", str(tmp_path / "x.nnc"), "--bitdepth", "40", "--quiet"]) == 2
