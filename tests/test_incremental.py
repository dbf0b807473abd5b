"""Incremental (ICNN) update coding: reference interoperability, TCA/HDSP state, omitted zero updates."""
import numpy as np
import pytest

import nnc
from conftest import VECTORS, load_npz


def _updates(n=4, seed=0, shape=(48, 40)):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        d = (rng.standard_normal(shape) * 0.01).astype(np.float32)
        d[rng.random(shape) < 0.6] = 0          # sparse, like a sparsified FL update
        d[: shape[0] // 4] = 0                  # zero rows for row skipping
        out.append({"layer.weight": d, "layer.bias": (rng.standard_normal(shape[0]) * 1e-3).astype(np.float32),
                    "frozen.weight": np.zeros((8, 8), np.float32)})
    return out


def test_reference_sequence_is_reproduced_byte_exactly():
    enc = nnc.UpdateEncoder(config=nnc.EncoderConfig(qp=-32), tca=True)
    for i, name in enumerate(["in_tca_upd0.npz", "in_tca_upd1.npz"]):
        ours = enc.encode_update(load_npz(VECTORS / name))
        assert ours == (VECTORS / f"tca_seq/{i:03d}.nnc").read_bytes()


@pytest.mark.parametrize("tca", [False, True])
def test_all_zero_tensors_are_omitted_and_state_stays_in_step(tca):
    ups = _updates()
    enc = nnc.UpdateEncoder(config=nnc.EncoderConfig(qp=-36), tca=tca)
    dec = nnc.UpdateDecoder()
    for u in ups:
        got = dec.decode_update(enc.encode_update(u))
        assert "frozen.weight" not in got
        assert set(got) == {"layer.weight", "layer.bias"}
        assert np.abs(got["layer.weight"] - u["layer.weight"]).max() <= 2 * float(nnc.step_size(-36, 2))
    assert dec.state.tensors["layer.weight"].put_node_depth == len(ups)


def test_hdsp_and_tca_round_trip_and_help():
    ups = _updates(6, seed=3)
    sizes = {}
    for hdsp in (False, True):
        enc = nnc.UpdateEncoder(config=nnc.EncoderConfig(qp=-36), tca=True, hdsp=hdsp)
        dec = nnc.UpdateDecoder()
        ref = nnc.UpdateDecoder()
        total = 0
        for u in ups:
            b = enc.encode_update(u)
            total += len(b)
            got = dec.decode_update(b)
            assert np.abs(got["layer.weight"] - u["layer.weight"]).max() <= 2 * float(nnc.step_size(-36, 2))
        sizes[hdsp] = total
    assert sizes[True] <= sizes[False]


def test_model_level_encode_and_apply_track_each_other():
    rng = np.random.default_rng(7)
    base = {"w": rng.standard_normal((16, 16)).astype(np.float32), "steps": np.array([0], np.int64)}
    enc = nnc.UpdateEncoder(base=base, config=nnc.EncoderConfig(qp=-40))
    dec = nnc.UpdateDecoder(base=base)
    model = {k: v.copy() for k, v in base.items()}
    for _ in range(3):
        model["w"] = model["w"] + (rng.standard_normal((16, 16)) * 0.01).astype(np.float32)
        model["steps"] = model["steps"] + 1
        restored = dec.apply(enc.encode(model))
        assert np.array_equal(restored["w"], enc.model["w"])       # both sides hold the same model
        assert np.array_equal(restored["steps"], model["steps"])   # integers exact
        assert np.abs(restored["w"] - model["w"]).max() < 2 * float(nnc.step_size(-40, 2)) * 3


def test_missed_update_is_detected():
    ups = _updates(3, seed=5)
    enc = nnc.UpdateEncoder(config=nnc.EncoderConfig(qp=-36), tca=True)
    streams = [enc.encode_update(u) for u in ups]
    dec = nnc.UpdateDecoder()
    dec.decode_update(streams[0])
    with pytest.raises(nnc.UpdateStateError, match="put_node_depth"):
        dec.decode_update(streams[2])


@pytest.mark.reference
def test_sequences_interoperate_with_reference(reference):
    ups = _updates(4, seed=11)
    settings = {"qp": -34, "qp_density": 2, "nonweight_qp": -75, "dq": True, "row_skipping": True,
                "param_opt": True}
    theirs = reference.encode_sequence(ups, settings, tca=True)
    enc = nnc.UpdateEncoder(config=nnc.EncoderConfig(qp=-34), tca=True)
    ours = [enc.encode_update(u) for u in ups]
    assert ours == theirs
    ref_dec = reference.decode_sequence(ours)
    dec = nnc.UpdateDecoder()
    for b, r in zip(theirs, ref_dec):
        got = dec.decode_update(b)
        assert list(got) == list(r)
        assert all(got[k].tobytes() == r[k].tobytes() for k in r)


def test_0d_tensors_keep_their_shape_through_encode_and_apply():
    # NNC codes 0-d tensors with shape (1,); the models on both sides keep the 0-d shape (the encoder's model
    # used to become (1,), so the second encode() refused the caller's 0-d tensor, and apply() refused the update)
    base = {"w": np.zeros((4, 4), np.float32), "bn.num_batches_tracked": np.array(0, np.int64)}
    enc, dec = nnc.UpdateEncoder(base, nnc.EncoderConfig(qp=-36)), nnc.UpdateDecoder(base)
    for r in range(1, 4):
        model = dec.apply(enc.encode({"w": np.full((4, 4), 0.1 * r, np.float32),
                                      "bn.num_batches_tracked": np.array(16 * r, np.int64)}))
        assert model["bn.num_batches_tracked"].shape == () and int(model["bn.num_batches_tracked"]) == 16 * r
        assert enc.model["bn.num_batches_tracked"].shape == ()


def test_update_coders_take_their_config_positionally_like_encoder_and_decoder():
    assert nnc.UpdateEncoder(nnc.EncoderConfig(qp=-30)).config.qp == -30
    assert nnc.UpdateEncoder(nnc.EncoderConfig(qp=-30)).model is None
    assert nnc.UpdateDecoder(nnc.DecoderConfig(threads=2)).model is None
    with pytest.raises(TypeError, match="base must be a mapping"):
        nnc.UpdateEncoder([1, 2])


def test_update_encoder_public_hooks_change_qp_and_expose_the_reconstruction():
    """set_config changes the QP between updates (history kept, so TCA continues) and last_reconstruction is
    exactly what the decoder adds: the FL transport uses both instead of subclassing the encoder."""
    rng = np.random.default_rng(7)
    w = {"w": rng.normal(size=(16, 32)).astype("f4")}
    enc = nnc.UpdateEncoder(base=w, config=nnc.EncoderConfig(qp=-30))
    dec = nnc.UpdateDecoder(base=w)
    errors = []
    for qp in (-30, -36, -40):
        enc.set_config(nnc.EncoderConfig(qp=qp, nonweight_qp=qp))
        delta = {"w": (rng.normal(size=(16, 32)) * 0.05).astype("f4")}
        got = dec.decode_update(enc.encode_update(delta))
        assert np.array_equal(got["w"], enc.last_reconstruction["w"])
        errors.append(float(np.abs(got["w"] - delta["w"]).max()))
        assert errors[-1] <= 2 * float(nnc.step_size(qp, 2))      # DQ: within two steps
    assert errors[2] < errors[0] / 4                                 # the finer QP was used
    with pytest.raises(nnc.ConfigError):
        enc.set_config(nnc.EncoderConfig(profile=0))
