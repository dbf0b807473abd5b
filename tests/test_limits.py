"""DecoderConfig limits: each one rejects a hostile header with LimitExceededError *before* allocation,
and inputs exactly at a limit still decode. Also the fail-fast/peak-memory measurement for a header that
claims a 10**12-element tensor (in a fresh subprocess, so VmHWM is not polluted by other tests)."""
import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

import nnc
from nnc import bitstream as bs
from conftest import ROOT, VECTORS


def _stream(*ndus, profile=1, parent_signalling=False):
    return (bs.start_unit(profile) + bs.mps_unit(profile=profile, qp_density=2, parent_signalling=parent_signalling)
            + bs.tpl_unit() + b"".join(ndus))


def _ndu(shape, name="w", payload=b"\x00" * 4, **kw):
    h = bs.NduHeaderSpec(payload_type=bs.PayloadType.NNR_PT_FLOAT, name=name, shape=shape, dq_flag=False,
                         unary_length_minus1=10, scan_order=0 if len(shape) > 1 else None, entry_points=[], **kw)
    return bs.ndu_unit(h, payload, profile=1)


def _replace_last_ndu(data: bytes, **fields) -> bytes:
    p = bs.parse(data)
    u = p.units[-1]
    raw = bs.write_unit(replace(u.body, **fields), context=u.context, payload=bytes(u.payload))
    return bs.write_bitstream(p.units[:-1]) + raw


@pytest.fixture(scope="module")
def small_model():
    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.standard_normal((16, 32)).astype("f4"),
               "a.bias": rng.standard_normal(16).astype("f4"),
               "b.weight": rng.standard_normal((8, 16)).astype("f4")}
    return tensors, nnc.encode(tensors, nnc.EncoderConfig(qp=-32))


# -- max_tensor_elements ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(10**6, 10**6), (10**12,), (2**31,), (10**4,) * 16])
def test_huge_tensor_claims_rejected(shape):
    with pytest.raises(nnc.LimitExceededError, match="max_tensor_elements") as ei:
        nnc.decode(_stream(_ndu(shape)))
    assert ei.value.unit_index == 3 and ei.value.syntax_path == "NNR_NDU.tensor_dimensions"


def test_max_tensor_elements_boundary(small_model):
    tensors, data = small_model
    assert set(nnc.decode(data, nnc.DecoderConfig(max_tensor_elements=512))) == set(tensors)   # 16*32 = 512
    with pytest.raises(nnc.LimitExceededError, match="'a.weight' claims 512 elements"):
        nnc.decode(data, nnc.DecoderConfig(max_tensor_elements=511))


# -- max_total_bytes -------------------------------------------------------------------------------------
def _smallest_limit(data, decode=nnc.decode):
    """The smallest max_total_bytes that decodes ``data`` (binary search; the accounting is deterministic)."""
    lo, hi = 1, 1 << 30
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            decode(data, nnc.DecoderConfig(max_total_bytes=mid))
            hi = mid
        except nnc.LimitExceededError:
            lo = mid + 1
    return lo


def test_max_total_bytes_boundary(small_model):
    # the budget counts what decoding holds: outputs, plus the int32 levels and temporaries of the tensor in
    # flight; an exact boundary exists and the error names max_total_bytes
    tensors, data = small_model
    total = sum(a.nbytes for a in tensors.values())                  # float32 out: (512 + 16 + 128) * 4
    need = _smallest_limit(data)
    assert total + 512 * 4 <= need <= 4 * total                      # outputs + a.weight's levels at least
    out = nnc.decode(data, nnc.DecoderConfig(max_total_bytes=need))
    assert sum(a.nbytes for a in out.values()) == total
    with pytest.raises(nnc.LimitExceededError, match="max_total_bytes") as ei:
        nnc.decode(data, nnc.DecoderConfig(max_total_bytes=need - 1))
    assert ei.value.unit_index in (3, 4, 5)


def test_max_total_bytes_counts_the_signalled_dtype():
    # a float64 tensor decodes to 8 bytes per element; the budget must not count it as 4
    x = np.random.default_rng(1).standard_normal((64, 64))
    d64, d32 = nnc.encode({"w": x}), nnc.encode({"w": x.astype(np.float32)})
    assert nnc.decode(d64)["w"].dtype == np.float64
    assert _smallest_limit(d64) == _smallest_limit(d32) + 64 * 64 * 4


def test_max_total_bytes_sums_many_small_claims():
    ndus = [_ndu((1000, 1000), name=f"t{i}") for i in range(20)]     # each 4 MB, 80 MB together
    with pytest.raises(nnc.LimitExceededError, match="max_total_bytes") as ei:
        nnc.decode(_stream(*ndus), nnc.DecoderConfig(max_total_bytes=10 << 20))
    # outputs count 4 MB each, the second tensor's levels and temporaries another 5 MB: the second claim
    # exceeds 10 MiB
    assert ei.value.unit_index == 3 + 1


# -- max_units -------------------------------------------------------------------------------------------
def test_max_units(small_model):
    _, data = small_model                                             # STR MPS TPL + 3 NDUs = 6 units
    assert len(nnc.decode(data, nnc.DecoderConfig(max_units=6))) == 3
    with pytest.raises(nnc.LimitExceededError, match="more than 5 NNR units"):
        nnc.decode(data, nnc.DecoderConfig(max_units=5))


def test_max_units_in_the_parser_both_modes():
    data = _stream() + bs.tpl_unit() * 1000
    with pytest.raises(nnc.LimitExceededError):
        bs.parse(data, max_units=100)
    lenient = bs.parse(data, max_units=100, strict=False)
    assert len(lenient) == 101 and isinstance(lenient.errors[-1], nnc.LimitExceededError)


# -- max_rank --------------------------------------------------------------------------------------------
def test_max_rank():
    ok = _stream(_ndu((1,) * 16))
    bad = _stream(_ndu((1,) * 17))
    with pytest.raises(nnc.LimitExceededError, match="rank 17 exceeds max_rank=16"):
        nnc.decode(bad)
    with pytest.raises(nnc.LimitExceededError, match="rank 16 exceeds max_rank=4"):
        nnc.decode(ok, nnc.DecoderConfig(max_rank=4))


# -- max_codebook_size -----------------------------------------------------------------------------------
def test_max_codebook_size():
    data = (VECTORS / "cbmix_codebook_best.nnc").read_bytes()       # few.weight has a 5-entry codebook
    assert "few.weight" in nnc.decode(data, nnc.DecoderConfig(max_codebook_size=5))
    with pytest.raises(nnc.LimitExceededError, match="codebook of 5 entries exceeds max_codebook_size=4"):
        nnc.decode(data, nnc.DecoderConfig(max_codebook_size=4))


# -- hostile counts elsewhere in the header --------------------------------------------------------------
def test_entry_point_count_from_a_huge_first_dimension_fails_fast():
    # d0 = 10**12 with scan_order 0; flipping each header bit in turn also produces scan_order 1..15, which
    # asks for ~1e11 entry points: the parser must refuse from the bits left, not try to read them.
    import time
    data = _stream(_ndu((10**12, 4)))
    ndu_at = bs.parse(data).units[-1].offset
    t = time.perf_counter()
    paths = set()
    for bit in range((len(data) - ndu_at) * 8):
        mutated = bytearray(data)
        mutated[ndu_at + bit // 8] ^= 0x80 >> (bit % 8)
        with pytest.raises(nnc.NNCError) as ei:
            nnc.decode(bytes(mutated))
        paths.add(getattr(ei.value, "syntax_path", None) or "")
    assert any("cabac_entry_point_list" in p for p in paths), paths
    assert time.perf_counter() - t < 10


def test_reserved_scan_order_is_a_bitstream_error():
    data = nnc.encode({"w": np.ones((64, 64), "f4")}, nnc.EncoderConfig(scan_order=1, row_skipping=False))
    bad = _replace_last_ndu(data, scan_order=7, cabac_entry_point_list=[])
    with pytest.raises(nnc.BitstreamError, match="reserved scan_order 7"):
        nnc.decode(bad)


def test_reserved_profile_is_unsupported():
    data = bytearray(nnc.encode({"w": np.ones((4, 4), "f4")}))
    assert data[:4] == b"\x00\x04\x02\x01"
    data[3] = 7
    with pytest.raises(nnc.NNCError):
        nnc.decode(bytes(data))


# -- the incremental decoder goes through the same limits ------------------------------------------------
def _tca_seq():
    return [(VECTORS / "tca_seq" / f"{i:03d}.nnc").read_bytes() for i in range(2)]


def test_update_decoder_enforces_limits():
    seq = _tca_seq()
    dec = nnc.UpdateDecoder(config=nnc.DecoderConfig(max_tensor_elements=64 * 96 - 1))
    with pytest.raises(nnc.LimitExceededError):
        dec.decode_update(seq[0])
    assert dec.state.tensors == {}                                    # nothing recorded from a rejected stream
    # 4x the float32 model size, as the FL server derives it: outputs, the levels the decoder keeps for the
    # next update and the temporaries of one tensor fit
    dec = nnc.UpdateDecoder(config=nnc.DecoderConfig(max_total_bytes=4 * 64 * 96 * 4))
    for s in seq:
        dec.decode_update(s)
    huge = _replace_last_ndu(seq[1], tensor_dimensions=[10**6, 10**6])   # a real update header, huge dims
    with pytest.raises(nnc.LimitExceededError):
        dec.decode_update(huge)


def test_update_with_a_changed_shape_is_an_update_state_error():
    seq = _tca_seq()
    dec = nnc.UpdateDecoder()
    dec.decode_update(seq[0])
    bad = _replace_last_ndu(seq[1], tensor_dimensions=[32, 96])
    with pytest.raises(nnc.UpdateStateError, match="changed shape"):
        dec.decode_update(bad)


# -- config validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["max_tensor_elements", "max_total_bytes", "max_units", "max_rank",
                                   "max_codebook_size", "threads"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
def test_decoder_config_rejects_bad_limits(field, value):
    with pytest.raises(nnc.ConfigError):
        nnc.DecoderConfig(**{field: value})


def test_strict_config_is_tighter():
    s = nnc.DecoderConfig.strict()
    d = nnc.DecoderConfig()
    assert s.max_total_bytes < d.max_total_bytes and s.max_units < d.max_units


# -- fail fast, no large allocation: measured in a fresh interpreter -------------------------------------
_PEAK_SCRIPT = textwrap.dedent(r"""
    import json, resource, sys, time, tracemalloc
    sys.path.insert(0, sys.argv[1])
    from test_limits import _ndu, _stream
    import nnc

    def vm(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    results = {}
    for label, shape in [("1e12 (1e6 x 1e6)", (10**6, 10**6)), ("1e12 (rank 1)", (10**12,)),
                         ("2**31", (2**31,))]:
        data = _stream(_ndu(shape))
        nnc.decode(nnc.encode({"w": [[1.0, 2.0]]}))   # warm up imports and the core
        hwm0 = vm("VmHWM")
        tracemalloc.start()
        t = time.perf_counter()
        try:
            nnc.decode(data)
            err = None
        except nnc.NNCError as e:
            err = type(e).__name__ + ": " + str(e)
        dt = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results[label] = {"bytes": len(data), "error": err, "seconds": dt, "tracemalloc_peak": peak,
                          "vmhwm_before": hwm0, "vmhwm_after": vm("VmHWM"),
                          "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    print(json.dumps(results))
""")


def test_huge_claim_fails_fast_without_large_allocation():
    r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(ROOT / "tests")], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for label, m in results.items():
        print(label, m)
        assert m["error"] and m["error"].startswith("LimitExceededError"), m
        assert m["seconds"] < 0.5, m
        assert m["tracemalloc_peak"] < 256 * 1024, m                     # Python allocations: < 256 KiB
        assert m["vmhwm_after"] - m["vmhwm_before"] < 8 * 1024 * 1024, m  # resident peak: grew < 8 MiB
