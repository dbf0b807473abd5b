"""nnc.fl.compressors: unbiasedness, error-feedback invariant, PowerSGD exactness, bitstream round trips
(nnc and the reference decoder), rejection of malformed messages, and the in-process FL loop."""
import numpy as np
import pytest

import nnc
from nnc.errors import UpdateStateError
from nnc.fl import UplinkConfig
from nnc.fl.sim import simulate
from nnc.fl import compressors as C

MODEL = {"fc1.weight": np.zeros((16, 40), "f4"), "fc1.bias": np.zeros(16, "f4"),
         "fc2.weight": np.zeros((10, 16), "f4"), "fc2.bias": np.zeros(10, "f4")}


def _update(seed=0, scale=0.01):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(v.shape) * scale).astype("f4") for k, v in MODEL.items()}


def _all():
    return list(C.ALL().items()) + [("nocomp", C.NoCompression()), ("qsgd-ef", C.QSGD(error_feedback=True)),
                                    ("qsgd-256", C.QSGD(levels=300, bucket_size=64)),
                                    ("dgc-sparse", C.TopK(fraction=0.05, momentum=0.9, encoding="sparse"))]


@pytest.mark.parametrize("comp", [C.QSGD(levels=4, bucket_size=64), C.QSGD(levels=1), C.TernGrad(),
                                  C.Atomo(budget=2)], ids=lambda c: c.label)
def test_unbiased_in_expectation(comp):
    """Mean of N independent compressions -> the input, within 5 standard errors per coordinate (and the
    mean relative error shrinks like 1/sqrt(N))."""
    x = _update(3)
    n = 1500
    acc = {k: np.zeros(v.shape) for k, v in x.items()}
    sq = {k: np.zeros(v.shape) for k, v in x.items()}
    st = comp.init_state(MODEL)
    for i in range(n):
        st["step"] = np.array([i], np.int64)       # a different random draw per trial, same input
        _, sent, _ = comp.apply(x, st)
        for k in x:
            acc[k] += sent[k]
            sq[k] += sent[k].astype(np.float64) ** 2
    zs = []
    for k in x:
        mean = acc[k] / n
        var = np.maximum(sq[k] / n - mean ** 2, 0)
        se = np.sqrt(var / n) + 1e-9
        zs.append((np.abs(mean - x[k]) / se).ravel())
        # a systematic bias would add up over the tensor: the summed error is within 5 standard errors
        assert abs(float((mean - x[k]).sum())) < 5 * float(np.sqrt(var.sum() / n)) + 1e-7, k
        # and the bias is far below one compression's error
        assert np.abs(mean - x[k]).mean() < 0.15 * np.sqrt(var.mean()) + 1e-7, k
    # per coordinate (pooled over the model): coordinates whose rare event never or hardly ever fired in N
    # draws have an unreliable sample variance, so allow 1%
    z = np.concatenate(zs)
    assert np.mean(z < 5) > 0.99, float(np.median(z))


def test_biased_compressors_are_detectably_biased():
    """Sanity check of the statistic above: sign compression without EF is biased."""
    x = _update(3)
    comp = C.SignSGD(error_feedback=False)
    _, sent, _ = comp.apply(x, comp.init_state(MODEL))
    assert np.abs(sent["fc1.weight"] - x["fc1.weight"]).mean() > 0.3 * np.abs(x["fc1.weight"]).mean()


@pytest.mark.parametrize("label,comp", [(lab, c) for lab, c in _all() if c.error_feedback and
                                        not getattr(c, "momentum", 0)])
def test_error_feedback_residual_invariant(label, comp):
    """sent + residual_new == update + residual_old, round after round (float32 tolerance)."""
    st = comp.init_state(MODEL)
    for r in range(4):
        x = _update(10 + r)
        prev = {k: v.copy() for k, v in comp.residual(st).items()}
        data, sent, st = comp.encode(x, st)
        res = comp.residual(st)
        for k in MODEL:
            np.testing.assert_allclose(sent[k] + res[k], x[k] + prev[k], rtol=0, atol=1e-6)
        dec = comp.decode(data, MODEL)
        for k in MODEL:
            assert np.array_equal(dec[k], sent[k])


@pytest.mark.parametrize("comp", [C.TopK(fraction=0.05, momentum=0.9), C.SignSGD(momentum=0.9)],
                         ids=lambda c: c.label)
def test_error_feedback_with_momentum(comp):
    """With momentum the error-fed input is the momentum: sent + residual_new == m_new + residual_old, with
    DGC's ``m_new = 0.9 m_old + g`` (then masked where sent) and Signum's ``m_new = 0.9 m_old + 0.1 g``."""
    st = comp.init_state(MODEL)
    for r in range(3):
        g = _update(20 + r)
        prev = {k: v.copy() for k, v in comp.residual(st).items()}
        mom = {k: st[f"momentum/{k}"].copy() for k in MODEL}
        _, sent, st = comp.encode(g, st)
        res = comp.residual(st)
        for k in MODEL:
            m_new = 0.9 * mom[k] + (g[k] if isinstance(comp, C.TopK) else 0.1 * g[k])
            np.testing.assert_allclose(sent[k] + res[k], m_new + prev[k], rtol=0, atol=1e-6)
            if isinstance(comp, C.TopK):     # momentum factor masking: sent positions restart
                assert np.all(st[f"momentum/{k}"].reshape(-1)[np.flatnonzero(sent[k].reshape(-1))] == 0)


def test_topk_momentum_free_invariant_and_sparse_equals_dense():
    x = _update(5)
    a = C.TopK(fraction=0.1)
    b = C.TopK(fraction=0.1, encoding="sparse")
    da, sa, _ = a.encode(x, a.init_state(MODEL))
    db, sb, _ = b.encode(x, b.init_state(MODEL))
    for k in MODEL:
        assert np.array_equal(sa[k], sb[k])
        assert np.count_nonzero(sa[k]) <= int(np.ceil(0.1 * sa[k].size))
    assert a.decode(da, MODEL)["fc1.weight"].tolist() == b.decode(db, MODEL)["fc1.weight"].tolist()


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_powersgd_exact_on_rank_r_matrices(rank):
    rng = np.random.default_rng(rank)
    model = {"w": np.zeros((30, 50), "f4"), "conv": np.zeros((12, 3, 3, 3), "f4"), "b": np.zeros(30, "f4")}
    x = {"w": (rng.standard_normal((30, rank)) @ rng.standard_normal((rank, 50))).astype("f4"),
         "conv": (rng.standard_normal((12, rank)) @ rng.standard_normal((rank, 27))).reshape(12, 3, 3, 3).astype("f4"),
         "b": rng.standard_normal(30).astype("f4")}
    comp = C.PowerSGD(rank=rank, factor_bits=24, vector_bits=24)
    st = comp.init_state(model)
    data, sent, st = comp.encode(x, st)
    for k in ("w", "conv"):
        rel = np.linalg.norm(sent[k] - x[k]) / np.linalg.norm(x[k])
        assert rel < 1e-5, (k, rel)
    dec = comp.decode(data, model)
    assert all(np.array_equal(dec[k], sent[k]) for k in model)
    # at the default 12-bit factors the error is small and error feedback removes it over rounds
    comp = C.PowerSGD(rank=rank)
    st = comp.init_state(model)
    total = {k: np.zeros_like(v) for k, v in model.items()}
    errs = []
    for r in range(3):
        _, sent, st = comp.encode(x if r == 0 else {k: np.zeros_like(v) for k, v in x.items()}, st)
        total = {k: total[k] + sent[k] for k in model}
        errs.append(np.linalg.norm(total["w"] - x["w"]) / np.linalg.norm(x["w"]))
    assert errs[0] < 2e-3 and errs[-1] < errs[0] / 10


def test_powersgd_warm_start_keeps_q():
    comp = C.PowerSGD(rank=2)
    st = comp.init_state(MODEL)
    q0 = st["q/fc1.weight"].copy()
    _, _, st = comp.encode(_update(1), st)
    assert st["q/fc1.weight"].shape == q0.shape and not np.array_equal(st["q/fc1.weight"], q0)
    assert "q/fc1.bias" not in st


def test_atomo_probabilities():
    s = np.array([10.0, 1.0, 1.0, 0.5, 0.0])
    p = C.atomo_probabilities(s, 2)
    assert p[0] == 1 and abs(p.sum() - 2) < 1e-12 and p[-1] == 0 and (p <= 1).all()
    assert C.atomo_probabilities(s, 10).tolist() == [1, 1, 1, 1, 0]


@pytest.mark.parametrize("label,comp", _all())
def test_bitstream_round_trip_and_nnc_modes(label, comp):
    """The bitstream alone rebuilds exactly what the client believes it sent; integer parts are INT tensors."""
    st = comp.init_state(MODEL)
    for r in range(2):
        data, sent, st = comp.encode(_update(30 + r), st)
        dec = comp.decode(data, MODEL)
        assert all(np.array_equal(dec[k], sent[k]) for k in MODEL)
        raw = nnc.decode(data)
        for name, a in raw.items():
            if name.endswith((".qsgd_levels", ".terngrad", ".sign", ".topk_idx")):
                assert a.dtype.kind in "iu", name
            else:
                assert a.dtype.kind == "f", name
        assert len(data) < sum(v.nbytes for v in MODEL.values())


@pytest.mark.parametrize("label,comp", [("qsgd", C.QSGD()), ("topk-sparse", C.TopK(encoding="sparse")),
                                        ("powersgd", C.PowerSGD())])
def test_malformed_messages_are_rejected(label, comp):
    data, _, _ = comp.encode(_update(1), comp.init_state(MODEL))
    t = nnc.decode(data)
    bad = dict(t)
    bad["extra"] = np.zeros(3, np.int8)
    cfg = nnc.EncoderConfig(qp=-40, dq=False)
    with pytest.raises(UpdateStateError):
        comp.decode(nnc.encode(bad, cfg), MODEL)
    bad = dict(t)
    bad.pop(sorted(bad)[0])
    with pytest.raises(UpdateStateError):
        comp.decode(nnc.encode(bad, cfg), MODEL)
    small = {k: np.zeros((3, 3), "f4") if v.ndim == 2 else v for k, v in MODEL.items()}
    with pytest.raises((UpdateStateError, nnc.NNCError)):
        comp.decode(data, small)


def test_reproducible_and_client_specific_randomness():
    comp = C.QSGD(levels=2)
    st = comp.init_state(MODEL)
    a, _, _ = comp.encode(_update(1), st)
    b, _, _ = comp.encode(_update(1), st)
    c, _, _ = comp.encode(_update(2), st)
    assert a == b and a != c


@pytest.mark.reference
def test_reference_decodes_every_compressor(reference):
    """NNCodec decodes each compressor's bitstreams (two rounds each) to the same arrays as nnc (one oracle
    call for all of them)."""
    streams, labels = [], []
    for label, comp in _all():
        st = comp.init_state(MODEL)
        for r in range(2):
            data, _, st = comp.encode(_update(40 + r), st)
            streams.append(data)
            labels.append(f"{label}#{r}")
    refs = reference.decode_many(streams)
    assert len(refs) == len(streams)
    for label, data, ref in zip(labels, streams, refs):
        ours = nnc.decode(data)
        assert sorted(ours) == sorted(ref), label
        for k in ours:
            assert np.array_equal(ours[k], ref[k]), (label, k)


def test_in_process_loop_with_compressors():
    from nnc.fl.sim import load_digits_data
    data = load_digits_data()
    accs = {}
    for comp in (C.QSGD(levels=4), C.TopK(fraction=0.05), C.PowerSGD(rank=2)):
        r = simulate(data, uplink=UplinkConfig(compressor=comp), num_clients=6, rounds=6, participation=0.5,
                     hidden=16, lr=0.1)
        assert all(not d for d in r.dropped)
        assert r.accuracy[-1] > r.accuracy[0] + 0.2
        assert sum(r.up_bytes) < 0.25 * 6 * 3 * sum(v.nbytes for v in r.server.model.values())
        accs[comp.label] = r.accuracy[-1]
        # the client's state survives a state_dict round trip (what the Flower Mod stores in context.state)
        cl = r.clients[0]
        arrays, scalars = cl.state_dict()
        from nnc.fl import ClientCodec
        other = ClientCodec(cl.base, cl.uplink, cl.downlink)
        other.load_state_dict(arrays, scalars)
        assert sorted(other.comp_state) == sorted(cl.comp_state)
        assert all(np.array_equal(other.comp_state[k], cl.comp_state[k]) for k in cl.comp_state)


def test_corrupt_compressed_upload_is_dropped():
    from nnc.fl.sim import load_digits_data

    def tamper(r, c, payload):
        return payload[: len(payload) // 2] if (r, c) == (2, 0) or r == 2 else payload

    r = simulate(load_digits_data(), uplink=UplinkConfig(compressor=C.TernGrad()), num_clients=4, rounds=3,
                 participation=1.0, hidden=8, lr=0.1, tamper=tamper)
    assert len(r.dropped[1]) == 4 and not r.dropped[0] and not r.dropped[2]
