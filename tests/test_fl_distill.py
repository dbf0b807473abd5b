"""nnc.fl.distill: b-bit soft-label quantisation Q_b, delta coding through real NNC bitstreams, the FD loop."""
import itertools

import numpy as np
import pytest

import nnc
from nnc.fl.distill import (FLOAT_BITS, LabelCodecConfig, Q_b, SoftLabelDecoder, SoftLabelEncoder, dequantize,
                            grid_levels, grid_size, quantize_soft_labels, rank_grid, unrank_grid)


def _probs(n, c, seed=0, alpha=0.5):
    return np.random.default_rng(seed).dirichlet(np.full(c, alpha), size=n)


def _grid(c, bits):
    m = grid_levels(bits)
    return np.array([k for k in itertools.product(range(m + 1), repeat=c) if sum(k) == m]) / m


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_rows_sum_to_one_and_lie_on_the_grid(bits):
    p = _probs(300, 10, bits)
    k = quantize_soft_labels(p, bits)
    assert k.dtype == np.int32 and (k >= 0).all() and (k.sum(1) == 2 ** bits - 1).all()
    assert np.allclose(Q_b(p, bits).sum(1), 1.0, atol=1e-6)


def test_b1_is_the_arg_max_one_hot():
    p = _probs(500, 10, 1)
    p[:5] = 0.1                                         # ties: first index, like numpy.argmax
    k = quantize_soft_labels(p, 1)
    assert (k == np.eye(10, dtype=np.int32)[p.argmax(1)]).all()


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_idempotent(bits):
    q = Q_b(_probs(200, 7, bits), bits)
    assert (quantize_soft_labels(q, bits) == quantize_soft_labels(Q_b(q, bits), bits)).all()
    assert np.array_equal(Q_b(q, bits), q)


@pytest.mark.parametrize("c,bits", [(3, 1), (3, 2), (3, 3), (4, 2), (5, 2), (4, 3)])
def test_l1_nearest_against_exhaustive_search(c, bits):
    grid = _grid(c, bits)
    p = np.concatenate([_probs(400, c, c * 10 + bits, alpha=a) for a in (0.2, 1.0, 5.0)])
    q = Q_b(p, bits).astype(np.float64)
    got = np.abs(q - p).sum(1)
    best = np.abs(p[:, None, :] - grid[None]).sum(2).min(1)
    assert np.allclose(got, best, atol=1e-6)
    assert grid_size(c, bits) == len(grid)


def test_float_bits_passes_through():
    p = _probs(10, 4).astype(np.float32)
    assert np.array_equal(Q_b(p, FLOAT_BITS), p)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_grid_rank_round_trip(bits):
    k = quantize_soft_labels(_probs(300, 10, 3), bits)
    r = rank_grid(k, bits)
    assert r.min() >= 0 and r.max() < grid_size(10, bits)
    assert (unrank_grid(r, 10, bits) == k).all()


@pytest.mark.parametrize("cfg", [LabelCodecConfig(bits=1), LabelCodecConfig(bits=2),
                                 LabelCodecConfig(bits=2, packing="index"), LabelCodecConfig(bits=4),
                                 LabelCodecConfig(bits=32)], ids=lambda c: c.label)
def test_delta_coding_round_trip_through_nnc_bitstreams(cfg):
    rng = np.random.default_rng(1)
    p = _probs(200, 10, 2)
    enc, dec = SoftLabelEncoder(cfg), SoftLabelDecoder(cfg, p.shape)
    sizes = []
    for step in range(4):
        if step:
            rows = rng.choice(200, 15 if step < 3 else 0, replace=False)      # last message: nothing changed
            p = p.copy()
            p[rows] = _probs(len(rows), 10, 10 + step)
        msg = enc.encode(p)
        assert isinstance(msg, bytes)
        t = nnc.decode(msg)                               # a real, standalone NNC bitstream
        assert "sl.meta" in t
        out = dec.decode(msg)
        want = Q_b(p, cfg.bits)
        tol = float(nnc.step_size(cfg.float_qp, 2)) if cfg.bits == FLOAT_BITS else 0.0
        assert np.abs(out - want).max() <= tol
        assert np.array_equal(out, enc.labels())          # both ends hold the same labels
        sizes.append(len(msg))
    if cfg.bits != FLOAT_BITS:
        assert sizes[1] < 0.75 * sizes[0] and sizes[3] < sizes[1]
        assert sum(nnc.decode(enc.encode(p)).get("sl.rows", np.zeros(0)).shape[:1]) == 0


def test_delta_message_needs_a_reference_and_matching_shape():
    cfg = LabelCodecConfig(bits=2)
    p = _probs(50, 10)
    enc = SoftLabelEncoder(cfg)
    enc.encode(p)
    delta = enc.encode(p)
    with pytest.raises(ValueError):
        SoftLabelDecoder(cfg, p.shape).decode(delta)
    with pytest.raises(ValueError):
        SoftLabelDecoder(cfg, (51, 10)).decode(SoftLabelEncoder(cfg).encode(p))
    with pytest.raises(ValueError):
        LabelCodecConfig(bits=2, coding="raw")


def test_raw_fd_is_float32_bytes():
    cfg = LabelCodecConfig(bits=32, delta=False, coding="raw")
    p = _probs(30, 10).astype(np.float32)
    msg = SoftLabelEncoder(cfg).encode(p)
    assert len(msg) == p.nbytes
    assert np.array_equal(SoftLabelDecoder(cfg, p.shape).decode(msg), p)


def test_fd_loop_learns_and_delta_coding_saves_bytes():
    pytest.importorskip("sklearn")
    from nnc.fl.sim import simulate_fd
    from nnc.fl.sim import dirichlet_partition, load_digits_data
    data = load_digits_data()
    perm = np.random.default_rng(0).permutation(len(data[0]))
    pub, priv = np.sort(perm[:300]), np.sort(perm[300:])
    parts = [priv[s] for s in dirichlet_partition(data[1][priv], 5, 1.0, 0)]
    kw = dict(rounds=4, local_epochs=3, distill_epochs=2, server_epochs=3)
    a = simulate_fd(data, parts, pub, up=LabelCodecConfig(bits=2, delta=False), **kw)
    b = simulate_fd(data, parts, pub, up=LabelCodecConfig(bits=2, delta=True), **kw)
    assert a.accuracy == b.accuracy                      # delta coding is lossless w.r.t. the b-bit labels
    assert b.accuracy[-1] > max(0.3, b.accuracy[0] + 0.2)
    assert sum(b.up_bytes) < sum(a.up_bytes) and sum(b.down_bytes) < sum(a.down_bytes)
    assert a.down_bytes[0] == 0 and all(x > 0 for x in a.up_bytes)
