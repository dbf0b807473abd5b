"""Issue 15 item 4: DecoderConfig limits hold in real memory and bounded work, one test per attack class.

Each bomb runs in a fresh interpreter (benchmarks/bombs.py run_child) so that peak RSS is the child's own
ru_maxrss. Limits are small (64-256 MiB) to keep the suite light; benchmarks/bench_bombs.py runs the same
classes at 1 GiB."""
import numpy as np
import pytest

from _bombs_path import MB, rss_bound
import bombs
import nnc


def _run(tmp_path, data, entry="decode", limit=256 * MB, strict=True, timeout=240):
    p = tmp_path / "bomb.nnc"
    p.write_bytes(data)
    r = bombs.run_child(p, entry, limit, strict, timeout)
    print(r)
    return r


def _outcome_ok(r):
    o = r["outcome"]
    return o == "ok" or o.startswith("exit ") or o in ("LimitExceededError", "BitstreamError",
                                                        "TruncatedBitstreamError", "UnsupportedFeatureError")


# -- amplification: a tiny stream whose output, levels and temporaries together pass the limit -------------
def test_amplification_at_the_limit_stays_within_the_memory_bound(tmp_path):
    limit = 256 * MB
    data = bombs._zeros_stream(4, limit // 8 // 4, __import__("numpy").float64)   # output alone == limit
    r = _run(tmp_path, data, limit=limit)
    assert _outcome_ok(r), r
    assert r["peak_rss"] <= rss_bound(limit), r


# -- parser work per input byte ------------------------------------------------------------------------------
def test_header_parsing_work_is_bounded_per_input_byte(tmp_path):
    # 256 KB of 65536-entry codebooks whose deltas cost one bit each (read in bulk, not per bit in Python);
    # benchmarks/bench_bombs.py measures the other header arrays (entry points, names, performance maps)
    data = bombs.dense_codebook(256 * 1024)
    r = _run(tmp_path, data, limit=1 << 30)
    assert _outcome_ok(r), r
    mb = len(data) / MB
    assert r["cpu_s"] <= 2.0 * max(mb, 0.5), r            # 2 s per MB (1 s floor for a quarter-MB input)
    assert r["peak_rss"] <= rss_bound(1 << 30), r


def test_parsed_headers_count_against_the_memory_limit():
    # 500K entry points hold ~60 MB of Python objects once parsed: refused before they are read under 16 MiB
    data = bombs.entry_points(1 * MB)
    with pytest.raises(nnc.LimitExceededError, match="max_total_bytes") as ei:
        nnc.decode(data, nnc.DecoderConfig.strict(max_total_bytes=16 * MB))
    assert ei.value.unit_index == 3 and "cabac_entry_point_list" in (ei.value.syntax_path or "")


# -- inspect / check / info run under the same budget -------------------------------------------------------
@pytest.mark.parametrize("entry", ["inspect", "check"])
def test_inspect_and_check_are_bounded_by_the_budget(tmp_path, entry):
    limit = 128 * MB
    r = _run(tmp_path, bombs.many_tensors(4 * limit), entry=entry, limit=limit)   # 16x the limit in levels
    assert r["outcome"] == "ok", r
    assert r["peak_rss"] <= rss_bound(limit), r
    assert r["cpu_s"] < 10, r


def test_inspect_reports_the_limit():
    limit = 64 * MB
    info = nnc.inspect(bombs.many_tensors(4 * limit), config=nnc.DecoderConfig.strict(max_total_bytes=limit))
    assert info.limits_hit and "max_total_bytes" in info.limits_hit[0]
    rep = nnc.check(bombs.many_tensors(4 * limit), config=nnc.DecoderConfig.strict(max_total_bytes=limit))
    assert "LIMIT_EXCEEDED" in rep.codes()


# -- topology inflation -------------------------------------------------------------------------------------
def _record_bomb(expanded: int) -> bytes:
    """A deflated NNR_TPL that starts like an nnc.converters record and then inflates to ``expanded`` spaces."""
    import zlib

    from nnc import bitstream as bs
    co = zlib.compressobj(9)
    parts = [co.compress(b'{"nnc_converters":1,"pad":"')] + [co.compress(b" " * MB) for _ in range(expanded // MB)]
    parts.append(co.flush())
    topo = nnc.Topology(int(bs.TopologyStorageFormat.NNR_TPL_PYT), int(bs.TopologyCompressionFormat.NNR_DFL),
                        b"".join(parts))
    w = nnc.encode({"w": np.ones(4, np.float32)})
    head = bs.start_unit(1) + bs.mps_unit(profile=1, qp_density=2, parent_signalling=False)
    return head + bs.tpl_unit(topo) + w[len(head) + len(bs.tpl_unit(nnc.Topology(3, 0, b""))):]


def test_a_deflated_topology_that_is_not_a_record_is_not_inflated(monkeypatch):
    """inspect/check/decode_model look at the first 4 KB of a deflated NNR_TPL before expanding it: a deflate
    bomb (or any payload) that does not start like nnc's record is never inflated in full."""
    from nnc.converters import _common
    data = bombs.deflate_topology(64 * MB)

    calls = []
    real = _common.inflate

    def counted(*a, **k):      # recorded, not raised: the describer and checker catch what the manifest raises
        calls.append(len(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(_common, "inflate", counted)
    cfg = nnc.DecoderConfig.strict(max_total_bytes=1 << 30)
    nnc.inspect(data, config=cfg)
    assert "LIMIT_EXCEEDED" not in nnc.check(data, config=cfg).codes()
    assert list(nnc.decode(data, cfg)) == ["w"]
    assert calls == [], f"the whole topology was inflated {len(calls)} time(s)"


def test_deflate_bomb_in_the_topology_is_bounded():
    from nnc import converters
    from nnc.config import decoder_limits
    data = _record_bomb(256 * MB)
    m = nnc.decode_model(data)
    with decoder_limits(nnc.DecoderConfig(max_total_bytes=16 * MB)):
        with pytest.raises(nnc.LimitExceededError, match="max_total_bytes"):
            converters.restore_tensors(m.tensors, m.topology)
