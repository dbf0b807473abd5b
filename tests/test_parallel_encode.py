"""Block rows coded on several threads (issue 16): the same payload and entry points as on one thread."""
from __future__ import annotations

import numpy as np
import pytest

from nnc import deepcabac
from nnc.deepcabac import _core


def _levels(rng, shape, scale, zero_rows=0):
    q = np.round(rng.laplace(0, scale, size=shape)).astype(np.int32)
    if zero_rows:
        q[rng.choice(shape[0], size=zero_rows, replace=False)] = 0
    return q


CASES = [
    # shape, scan, dq, param_opt, row_skipping, scale, zero rows
    ((256, 256), 1, False, True, False, 1.5, 0),
    ((256, 256), 2, True, True, False, 3.0, 0),
    ((300, 250), 3, True, False, False, 0.7, 0),
    ((513, 130), 4, False, True, True, 2.0, 40),
    ((1000, 70), 1, True, True, False, 0.4, 100),   # DQ with scan order > 0: row skipping off (spec)
    ((257, 1024), 2, False, False, False, 12.0, 0),
    ((640, 128), 2, True, True, False, 0.05, 0),     # nearly all zeros
    ((320, 320), 4, False, True, True, 6.0, 20),
    ((320, 320), 4, True, True, False, 6.0, 20),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0][0]}x{c[0][1]}-s{c[1]}-dq{int(c[2])}" for c in CASES])
@pytest.mark.parametrize("threads", [2, 3, 5])
def test_block_rows_on_threads_give_the_same_payload_and_entry_points(case, threads):
    shape, scan, dq, po, rs, scale, zero_rows = case
    rng = np.random.default_rng(hash((shape, scan, dq)) % 2**32)
    q = _levels(rng, shape, scale, zero_rows)
    if dq:   # a level sequence that DQ can code: the quantiser's own output
        x = (q.astype(np.float32) + rng.uniform(-0.5, 0.5, size=shape).astype(np.float32)) * 0.01
        q = deepcabac.quantize(x, 0.01, dq=True, scan_order=scan)
    coding = deepcabac.TensorCoding(shape=shape, scan_order=scan, dq=dq)
    opts = deepcabac.EncodeOptions(param_opt=po, row_skipping=rs)
    one, eps1 = deepcabac.encode_payload([(q, coding, 3, opts)], threads=1)
    before = _core.parallel_pass_count()
    many, eps = deepcabac.encode_payload([(q, coding, 3, opts)], threads=threads)
    assert _core.parallel_pass_count() == before + 1, "the block rows were not coded on threads"
    assert many == one
    assert eps == eps1 and len(eps[0]) == deepcabac.block_row_count(coding) - 1
    got = deepcabac.decode_payload(many, [coding], entry_points=eps, threads=threads)
    assert got.parallel == [True]
    assert np.array_equal(got.levels[0], q)


def test_several_tensors_in_one_payload_with_threads():
    """Tensors before and after a parallel one continue the same arithmetic coder."""
    rng = np.random.default_rng(7)
    small = _levels(rng, (40, 30), 2.0)
    big = _levels(rng, (512, 200), 1.0)
    tail = _levels(rng, (300, 300), 0.8)
    items = [(small, deepcabac.TensorCoding(shape=small.shape, scan_order=1), 1, deepcabac.EncodeOptions()),
             (big, deepcabac.TensorCoding(shape=big.shape, scan_order=2), 2, deepcabac.EncodeOptions()),
             (tail, deepcabac.TensorCoding(shape=tail.shape, scan_order=3), 3, deepcabac.EncodeOptions())]
    one, eps1 = deepcabac.encode_payload(items, threads=1)
    before = _core.parallel_pass_count()
    two, eps2 = deepcabac.encode_payload(items, threads=2)
    assert _core.parallel_pass_count() == before + 2      # big and tail; small is below the threshold
    assert two == one and eps2 == eps1


def test_small_tensors_and_scan_order_0_stay_on_one_thread():
    rng = np.random.default_rng(8)
    q = _levels(rng, (512, 256), 1.0)
    before = _core.parallel_pass_count()
    deepcabac.encode_payload([(q, deepcabac.TensorCoding(shape=q.shape, scan_order=0), 0, None)], threads=4)
    deepcabac.encode_payload([(q[:64, :64], deepcabac.TensorCoding(shape=(64, 64), scan_order=1), 0, None)],
                             threads=4)
    assert _core.parallel_pass_count() == before


@pytest.mark.parametrize("dq", [False, True])
def test_parallel_rows_with_tca_hdsp_and_a_codebook(dq):
    rng = np.random.default_rng(11)
    shape = (384, 200)
    q = _levels(rng, shape, 1.2)
    if dq:
        x = (q.astype(np.float32) + rng.uniform(-0.5, 0.5, size=shape).astype(np.float32)) * 0.02
        q = deepcabac.quantize(x, 0.02, dq=True, scan_order=2)
    base = _levels(rng, shape, 1.0)
    hist = rng.random(shape) < 0.3
    for coding, opts in [
        (deepcabac.TensorCoding(shape=shape, scan_order=2, dq=dq, parent_present=True, tca_base=base,
                                hdsp_history=hist), deepcabac.EncodeOptions(hdsp=True)),
        (deepcabac.TensorCoding(shape=shape, scan_order=2 if dq else 3, dq=dq, parent_present=True,
                                hdsp_history=hist), deepcabac.EncodeOptions(hdsp=True, row_skipping=not dq)),
    ]:
        one, eps1 = deepcabac.encode_payload([(q, coding, 0, opts)], threads=1)
        before = _core.parallel_pass_count()
        two, eps2 = deepcabac.encode_payload([(q, coding, 0, opts)], threads=2)
        assert _core.parallel_pass_count() == before + 1
        assert two == one and eps2 == eps1
    if not dq:   # codebook indices: bounded magnitudes (profile 1)
        lo, hi = int(q.min()), int(q.max())
        coding = deepcabac.TensorCoding(shape=shape, scan_order=2, codebook_size=hi - lo + 1, codebook_zero=-lo)
        one, eps1 = deepcabac.encode_payload([(q, coding, 0, None)], threads=1)
        two, eps2 = deepcabac.encode_payload([(q, coding, 0, None)], threads=3)
        assert two == one and eps2 == eps1


@pytest.mark.reference
def test_reference_decodes_streams_whose_block_rows_were_coded_on_threads(reference):
    import nnc
    rng = np.random.default_rng(5)
    w = {"emb": (rng.standard_normal((600, 200)) * 0.05).astype(np.float32),
         "bias": (rng.standard_normal(600) * 0.01).astype(np.float32)}
    streams = []
    for s, dq, rs in ((1, False, True), (2, True, False), (4, True, False)):
        before = _core.parallel_pass_count()
        data = nnc.encode(w, nnc.EncoderConfig(qp=-36, scan_order=s, dq=dq, row_skipping=rs, threads=3))
        assert _core.parallel_pass_count() == before + 1
        assert data == nnc.encode(w, nnc.EncoderConfig(qp=-36, scan_order=s, dq=dq, row_skipping=rs, threads=1))
        streams.append(data)
    for data, ref in zip(streams, reference.decode_many(streams)):
        mine = nnc.decode(data)
        assert list(ref) == list(mine)
        for k in mine:
            assert np.array_equal(np.asarray(ref[k], np.float32), mine[k]), k
