"""Round trips and hostile input for nnc.deepcabac (no reference needed).

* encode -> decode reproduces the stored integers for many random configurations;
* every prefix of real payloads and thousands of random mutations either decode or raise an
  nnc.errors.BitstreamError subclass (never crash or hang);
* argument errors raise ConfigError / InputError.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from nnc.deepcabac import (
    EncodeOptions,
    TensorCoding,
    decode_payload,
    encode_payload,
    quantize,
)
from nnc.errors import BitstreamError, ConfigError, InputError, TruncatedBitstreamError


def _payloads():
    rng = np.random.default_rng(99)
    out = []
    # 1: plain gaussian, profile 1, scan 2 (several block rows), param opt, row skipping
    q = np.round(rng.standard_normal((70, 40)) * 4).astype(np.int32)
    q[5] = 0
    c = TensorCoding(shape=(70, 40), scan_order=2)
    out.append(([c], [(q, c, -30, EncodeOptions(row_skipping=True))]))
    # 2: DQ with TCA and HDSP, plus a 1-D bias in the same session
    x = (rng.standard_normal((33, 20)) * 0.1).astype(np.float32)
    qd = quantize(x, 0.01, dq=True)
    base = np.round(rng.standard_normal(qd.shape) * 3).astype(np.int32)
    hist = rng.random(qd.shape) < 0.5
    c2 = TensorCoding(shape=(33, 20), dq=True, parent_present=True, tca_base=base, hdsp_history=hist)
    bias = np.round(rng.standard_normal(33) * 100).astype(np.int32)
    c3 = TensorCoding(shape=(33,), qp_bits=9)
    out.append(([c3, c2], [(bias, c3, 5, EncodeOptions()), (qd, c2, -40, EncodeOptions(hdsp=True))]))
    # 3: profile 0 integers with large values
    qi = rng.integers(-10**8, 10**8, (9, 7)).astype(np.int32)
    c4 = TensorCoding(shape=(9, 7), profile=0, qp_bits=None, unary_length=3)
    out.append(([c4], [(qi, c4, 0, EncodeOptions(param_opt=False))]))
    # 4: codebook tensor
    qc = rng.integers(-3, 5, (40, 17)).astype(np.int32)
    c5 = TensorCoding(shape=(40, 17), codebook_size=8, codebook_zero=3, scan_order=1)
    out.append(([c5], [(qc, c5, -20, EncodeOptions())]))
    result = []
    for codings, items in out:
        data, _ = encode_payload(items)
        result.append((codings, items, data))
    return result


PAYLOADS = _payloads()


def _decode_or_bitstream_error(data, codings):
    try:
        decode_payload(data, codings)
    except BitstreamError:
        return False
    return True


@pytest.mark.parametrize("idx", range(len(PAYLOADS)))
def test_round_trip(idx):
    codings, items, data = PAYLOADS[idx]
    dec = decode_payload(data, codings)
    assert dec.consumed == len(data)
    for (q, c, qp, _), lv, qpo in zip(items, dec.levels, dec.qp_offsets):
        np.testing.assert_array_equal(lv, np.asarray(q).reshape(c.shape))
        assert qpo == (qp if c.qp_bits else None)


@pytest.mark.parametrize("idx", range(len(PAYLOADS)))
def test_every_prefix_is_rejected(idx):
    codings, _, data = PAYLOADS[idx]
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            decode_payload(data[:cut], codings)
    with pytest.raises(TruncatedBitstreamError):
        decode_payload(data[: len(data) // 2], codings)


@pytest.mark.parametrize("idx", range(len(PAYLOADS)))
def test_random_mutations_never_crash(idx):
    codings, _, data = PAYLOADS[idx]
    rng = np.random.default_rng(1000 + idx)
    ok = 0
    for trial in range(1500):
        b = bytearray(data)
        kind = trial % 4
        if kind == 0:
            pos = int(rng.integers(0, len(b)))
            b[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            for _ in range(int(rng.integers(1, 8))):
                b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        elif kind == 2:
            pos = int(rng.integers(0, len(b)))
            del b[pos: pos + int(rng.integers(1, 4))]
        else:
            pos = int(rng.integers(0, len(b) + 1))
            b[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8))
        ok += _decode_or_bitstream_error(bytes(b), codings)
    assert ok < 1500


def test_garbage_and_empty_input():
    c = TensorCoding(shape=(100, 100), scan_order=3)
    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 3, 10, 1000):
        _decode_or_bitstream_error(rng.integers(0, 256, n, dtype=np.uint8).tobytes(), [c])
    _decode_or_bitstream_error(b"\xff" * 5000, [c])
    _decode_or_bitstream_error(b"\x00" * 5000, [c])
    with pytest.raises(BitstreamError) as e:
        decode_payload(b"", [c])
    assert "tensor 0" in str(e.value)


def test_trailing_bytes_are_rejected():
    codings, _, data = PAYLOADS[0]
    with pytest.raises(BitstreamError, match="trailing"):
        decode_payload(data + b"\x00", codings)


def test_input_types():
    codings, _, data = PAYLOADS[0]
    a = decode_payload(data, codings).levels[0]
    b = decode_payload(memoryview(data), codings).levels[0]
    c = decode_payload(np.frombuffer(data, np.uint8), codings).levels[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_argument_errors():
    q = np.zeros((4, 4), np.int32)
    with pytest.raises(ConfigError):
        encode_payload([(q, TensorCoding(shape=()), 0, EncodeOptions())])
    with pytest.raises(ConfigError):
        encode_payload([(q, TensorCoding(shape=(4, 4), scan_order=5), 0, EncodeOptions())])
    with pytest.raises(ConfigError):
        encode_payload([(q, TensorCoding(shape=(4, 4), profile=0, tca_base=q), 0, EncodeOptions())])
    with pytest.raises(ConfigError):
        encode_payload([(q, TensorCoding(shape=(4, 4), tca_base=q), 0, EncodeOptions())])
    with pytest.raises(InputError):
        encode_payload([(q, TensorCoding(shape=(5, 4)), 0, EncodeOptions())])
    with pytest.raises(InputError, match="codebook"):
        encode_payload([(q + 9, TensorCoding(shape=(4, 4), codebook_size=4, codebook_zero=1), 0, EncodeOptions())])
    with pytest.raises(InputError, match="parity"):
        encode_payload([(q + 1, TensorCoding(shape=(4, 4), dq=True), 0, EncodeOptions())])
    with pytest.raises(InputError):
        encode_payload([(np.full((4, 4), -2**31, np.int64), TensorCoding(shape=(4, 4)), 0, EncodeOptions())])
    with pytest.raises(InputError):
        quantize(np.array([np.nan], np.float32), 0.1, dq=False)
    with pytest.raises(OverflowError):
        quantize(np.array([1e30], np.float32), 1e-10, dq=True)


def test_random_round_trips():
    rng = np.random.default_rng(31337)
    for _ in range(150):
        h = int(rng.integers(1, 90))
        w = int(rng.integers(1, 90))
        shape = (h, w) if rng.random() < 0.8 else (h * w,)
        n = h * w
        dq = bool(rng.random() < 0.5)
        scan = int(rng.integers(0, 5))
        if dq:
            q = quantize((rng.standard_normal(shape) * 0.2).astype(np.float32), 0.01, dq=True, scan_order=scan)
        else:
            q = np.round(rng.standard_normal(shape) * float(rng.choice([0.5, 5, 5000]))).astype(np.int32)
        c = TensorCoding(shape=shape, dq=dq, scan_order=scan, unary_length=int(rng.integers(1, 20)),
                         profile=int(rng.integers(0, 2)))
        opts = EncodeOptions(param_opt=bool(rng.random() < 0.5), row_skipping=not dq and rng.random() < 0.5)
        data, eps = encode_payload([(q, c, int(rng.integers(-128, 128)), opts)])
        dec = decode_payload(data, [c])
        np.testing.assert_array_equal(dec.levels[0], q.reshape(shape))
        assert dec.entry_points == eps
        assert len(eps[0]) == max(0, _block_rows(c) - 1)


def _block_rows(c):
    from nnc.deepcabac import block_row_count

    return block_row_count(c)


def test_concurrent_decoding_releases_gil():
    codings, items, data = PAYLOADS[0]
    results = []

    def work():
        for _ in range(20):
            results.append(decode_payload(data, codings).levels[0].copy())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, items[0][0])


def test_decode_payloads_in_parallel_keeps_order_and_errors():
    from nnc.deepcabac import decode_payloads

    jobs = [(data, codings) for codings, _, data in PAYLOADS]
    res = decode_payloads(jobs, max_workers=3)
    for (codings, items, _), r in zip(PAYLOADS, res):
        for (q, c, _, _), lv in zip(items, r.levels):
            np.testing.assert_array_equal(lv, np.asarray(q).reshape(c.shape))
    bad = list(jobs)
    bad[2] = (bad[2][0][:3], bad[2][1])
    with pytest.raises(BitstreamError):
        decode_payloads(bad, max_workers=2)


def test_encode_payloads_in_parallel_matches_serial():
    from nnc.deepcabac import encode_payloads

    jobs = [items for _, items, _ in PAYLOADS]
    res = encode_payloads(jobs, max_workers=3)
    assert [r[0] for r in res] == [data for _, _, data in PAYLOADS]


def test_parallel_block_rows_from_entry_points():
    from nnc.deepcabac import EntryPoint

    rng = np.random.default_rng(4)
    for trial in range(40):
        h = int(rng.integers(9, 300))
        w = int(rng.integers(2, 120))
        scan = int(rng.integers(1, 5))
        dq = bool(trial % 2)
        others = []
        if dq:
            q = quantize((rng.standard_normal((h, w)) * 0.1).astype(np.float32), 0.01, dq=True, scan_order=scan)
        else:
            q = np.round(rng.standard_normal((h, w)) * 3).astype(np.int32)
            q[rng.random(h) < 0.3] = 0
        c = TensorCoding(shape=(h, w), scan_order=scan, dq=dq)
        bias = np.arange(h, dtype=np.int32) - h // 2
        cb = TensorCoding(shape=(h,))
        items = [(bias, cb, 3, EncodeOptions()), (q, c, -30, EncodeOptions(row_skipping=not dq))]
        if trial % 3 == 0:  # a second multi-row tensor after the first
            items.append((q.copy(), c, -31, EncodeOptions()))
        data, eps = encode_payload(items)
        codings = [it[1] for it in items]
        seq = decode_payload(data, codings, threads=1)
        par = decode_payload(data, codings, entry_points=eps, threads=4)
        assert par.consumed == seq.consumed == len(data)
        for a, b, it in zip(seq.levels, par.levels, items):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(b, it[0].reshape(it[1].shape))
        assert par.entry_points == seq.entry_points == eps
        assert par.parallel == [len(e) > 0 for e in eps] and not any(seq.parallel)
        # Wrong entry points: decoding falls back to the sequential result.
        bad = [list(e) for e in eps]
        for e in bad:
            if e:
                e[0] = EntryPoint(e[0].value ^ 1, e[0].dq_state, e[0].bit_offset + 3)
        fb = decode_payload(data, codings, entry_points=bad, threads=4)
        assert not any(fb.parallel)
        for a, b in zip(seq.levels, fb.levels):
            np.testing.assert_array_equal(a, b)


def test_tv3_parallel_decode_with_signalled_entry_points():
    from test_deepcabac_vectors import TV3_CABAC

    from nnc.deepcabac import EntryPoint

    c = TensorCoding(shape=(20, 10), scan_order=1)
    eps = [[EntryPoint(0, 0, 690), EntryPoint(17, 0, 798)]]
    par = decode_payload(TV3_CABAC, [c], entry_points=eps, threads=3)
    seq = decode_payload(TV3_CABAC, [c])
    np.testing.assert_array_equal(par.levels[0], seq.levels[0])
    assert par.parallel == [True]
