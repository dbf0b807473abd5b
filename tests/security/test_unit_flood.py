"""Issue 15 item 4 (work per input byte): a flood of minimal NDUs costs what its units cost, once, and under
``DecoderConfig.strict()`` no more units than the input's size allows.

The CPU figure itself is measured by benchmarks/bench_bombs.py (``--bombs many_units``); these tests pin the
costs that made the flood dearer than its units (the cyclic collector walking every parsed header over and over
while a stream is planned, the CLI parsing a sound stream a second time to classify it) and the density bound
of strict() (``min_unit_bytes``)."""
import gc
import io
import contextlib

import numpy as np
import pytest

from _bombs_path import MB  # noqa: F401 - puts benchmarks/ on sys.path
import bombs
import nnc
import nnc.bitstream.parser as parser
from nnc.cli import main as cli


def _count_unit_parses(monkeypatch) -> list:
    """A list that gets one entry per unit the parser reads from now on (in this test)."""
    calls = []
    real = parser._parse_unit

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(parser, "_parse_unit", counting)
    return calls


@pytest.fixture(scope="module")
def flood():
    return bombs.many_units(20_000 * 19)      # ~20,000 one-element NDUs


def test_decoding_a_unit_flood_runs_the_collector_at_most_once(flood):
    runs = []

    def watch(phase, info):
        if phase == "start":
            runs.append(info["generation"])

    gc.collect()
    gc.callbacks.append(watch)
    try:
        # strict() refuses a flood this dense (test_strict_limits_bound_the_units_per_input_byte): not here
        out = nnc.decode(flood, nnc.DecoderConfig.strict(threads=1, min_unit_bytes=0))
    finally:
        gc.callbacks.remove(watch)
    assert len(out) > 19_000
    # every parsed header, plan and entry is acyclic: nothing for the collector to find while they are built
    # (it ran dozens of times over them, a quarter of the decode's CPU); one pass when it is enabled again
    assert len(runs) <= 1, runs


def test_a_stream_of_tensors_with_one_header_shape_shares_one_plan():
    from nnc.coding.ndu import plan_ndu
    import nnc.bitstream as bs

    data = nnc.encode({"a": np.ones(3, np.float32), "b": np.full(3, 2, np.float32), "c": np.zeros(4, np.float32)})
    heads = [u.body for u in bs.parse(data).ndus()]
    plans = [plan_ndu(h, profile=1, qp_density=2) for h in heads]
    assert [p.names for p in plans] == [["a"], ["b"], ["c"]]
    assert plans[0].members[0].coding is plans[1].members[0].coding         # same header but the name
    assert plans[2].members[0].shape == (4,) and plans[2].members[0].coding.shape == (4,)
    assert np.allclose(nnc.decode(data)["b"], 2, atol=1e-4)


@pytest.mark.parametrize("command", ["check", "info", "decode"])
def test_the_cli_parses_a_sound_stream_once(flood, tmp_path, command, monkeypatch):
    path = tmp_path / "flood.nnc"
    path.write_bytes(flood)
    units = len(nnc.bitstream.parse(flood).units)
    calls = _count_unit_parses(monkeypatch)
    argv = [command, str(path), "--quiet"] + (["-o", str(tmp_path / "out.npz")] if command == "decode" else [])
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli(argv) == 0
    assert len(calls) <= units + 1      # the whole stream once, and its first unit to see that it is NNC at all


def test_a_damaged_flood_still_gets_the_one_classification(flood, tmp_path):
    path = tmp_path / "cut.nnc"
    path.write_bytes(flood[:-7])        # cut inside the last unit
    for command in ("check", "info", "decode"):
        argv = [command, str(path), "--quiet"] + (["-o", str(tmp_path / "o.npz")] if command == "decode" else [])
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            assert cli(argv) == 1, command
        assert "is damaged" in err.getvalue(), (command, err.getvalue())
    assert not (tmp_path / "o.npz").exists()


def test_npz_output_is_written_front_to_back_and_reads_back(tmp_path):
    # zipfile seeks back to patch every entry's header on a seekable file (a flush per tensor: 60k tiny tensors
    # cost 1.9 s to write); nnc writes each entry's sizes after its data instead
    import zipfile
    from nnc.converters._npz import write_npz

    t = {"scalar": np.array(123456789012), "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
         "b": np.array([True, False]), "e": np.zeros(0, np.int32), "u": np.arange(5, dtype=np.uint8),
         "big": np.arange(70_000, dtype=np.float32)}
    write_npz(str(tmp_path / "x.npz"), t, None)
    with np.load(tmp_path / "x.npz", allow_pickle=False) as z:
        assert list(z.files) == list(t)
        for k, v in t.items():
            assert z[k].dtype == v.dtype and z[k].shape == v.shape and np.array_equal(z[k], v), k
    with zipfile.ZipFile(tmp_path / "x.npz") as zf:
        assert all(i.flag_bits & 0x08 for i in zf.infolist())     # sizes in a data descriptor after the data


def test_errors_kept_by_a_lenient_parse_hold_no_frames():
    # a stream of damaged units: each error is kept (inspect/check go on); with its traceback it kept the
    # reader's frame and locals alive, twice the memory and a cycle per unit for the collector
    data = bombs.damaged_units(6 * 5_000)
    units = nnc.bitstream.parse(data, strict=False).units
    errors = [e for u in units for e in u.errors]
    assert len(errors) >= 4_000
    assert all(e.__traceback__ is None for e in errors)
    assert all(e.unit_index is not None and e.byte_offset is not None for e in errors)   # still located


@pytest.mark.parametrize("damage", ["cut", "payload"])
@pytest.mark.parametrize("command", ["check", "info", "decode"])
def test_the_cli_reads_a_damaged_stream_once_more_at_most(flood, tmp_path, command, damage, monkeypatch):
    # the command's own pass, then (info, decode) one conformance check that gives the classification decode,
    # info and check share: it checks the units inspect or the decoder already parsed (it parsed them again,
    # and before that a third full parse classified them); only decode's strict parse, which stops at the
    # damage, leaves a damaged header (cut) to the check's own lenient parse
    passes = 2 if (command, damage) == ("decode", "cut") else 1
    data = bytearray(flood[:-7] if damage == "cut" else flood)
    if damage == "payload":
        data[-1] ^= 0x40          # the last NDU's terminating bin: its header parses, its payload does not
    path = tmp_path / "bad.nnc"
    path.write_bytes(bytes(data))
    units = len(nnc.bitstream.parse(bytes(data), strict=False).units)
    calls = _count_unit_parses(monkeypatch)
    argv = [command, str(path), "--quiet"] + (["-o", str(tmp_path / "o.npz")] if command == "decode" else [])
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert cli(argv) == 1
    assert "is damaged" in err.getvalue()
    assert len(calls) <= passes * units + 1, (len(calls), units)


def _first_units(data: bytes, k: int) -> bytes:
    """The first ``k`` units of ``data``."""
    return data[:nnc.bitstream.parse(data, strict=False).units[k].offset]


def test_strict_limits_bound_the_units_per_input_byte(flood, monkeypatch):
    # parsing, planning and describing cost tens of microseconds per unit whatever its size: a flood of 20-byte
    # units was 2.5-3.5 s of CPU per MB under strict() (and a flood of codebook NDUs 6 s); strict() now allows
    # 2048 units plus one per 256 bytes of input, and stops at the first unit beyond, before reading it
    cfg = nnc.DecoderConfig.strict()
    assert cfg.min_unit_bytes == 256 and nnc.bitstream.UNIT_ALLOWANCE == 2048
    cap = 2048 + len(flood) // 256
    calls = _count_unit_parses(monkeypatch)
    with pytest.raises(nnc.LimitExceededError, match="min_unit_bytes=256") as e:
        nnc.decode(flood, cfg)
    assert e.value.unit_index == cap and e.value.code == "UNIT_DENSITY"
    assert len(calls) == cap
    info = nnc.inspect(flood, config=cfg)           # inspect and check go on after damage, not after this
    assert len(info.units) == cap + 1 and "min_unit_bytes=256" in info.units[-1].errors[0]
    report = nnc.check(flood, config=cfg)       # a limit of the checker's, not a fault of the stream
    assert report.ok and any("min_unit_bytes" in str(v) for v in report.find("LIMIT_EXCEEDED"))
    # a stream within the bound decodes (2,100 units in 42 KB: cap 2,212), one beyond it does not
    ok = _first_units(flood, 2_100)
    assert len(nnc.decode(ok, cfg)) == 2_100 - 3
    over = _first_units(flood, 2_600)
    with pytest.raises(nnc.LimitExceededError, match="min_unit_bytes"):
        nnc.decode(over, cfg)
    assert len(nnc.decode(over, cfg.replace(min_unit_bytes=0))) == 2_600 - 3      # the bound is the only reason
    assert len(nnc.decode(over)) == 2_600 - 3                                       # and not a default one
    with pytest.raises(nnc.ConfigError, match="min_unit_bytes"):
        nnc.DecoderConfig(min_unit_bytes=-1)


@pytest.mark.parametrize("command", ["info", "check", "decode"])
def test_the_cli_strict_flag_refuses_a_unit_flood_naming_the_bound(flood, tmp_path, command):
    path = tmp_path / "flood.nnc"
    path.write_bytes(flood)
    out = tmp_path / "o.npz"
    argv = [command, str(path), "--strict", "--quiet"] + (["-o", str(out)] if command == "decode" else [])
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert cli(argv) == 2, err.getvalue()
    assert "min_unit_bytes" in err.getvalue() and "--strict" in err.getvalue(), err.getvalue()
    assert not out.exists()


def test_a_check_of_units_already_parsed_reports_what_a_fresh_check_does():
    # nnc info and nnc decode classify a damaged stream with a conformance check: it now checks the units
    # inspect or the decoder parsed (on 1 MB of codebooks the parse was 1.2 s of each pass)
    good = bombs.many_units(2_000 * 19)
    data = bytearray(good)
    data[-1] ^= 0x40                   # the last payload's terminating bin
    data = bytes(data)
    units = []
    info = nnc.inspect(data, parsed=units)
    assert len(units) == len(info.units) > 1_900
    fresh = nnc.check(data)
    assert not fresh.ok
    assert nnc.check(data, units=units).to_dict() == fresh.to_dict()
    dec = nnc.Decoder()
    with pytest.raises(nnc.BitstreamError):
        dec.decode_model(data)
    assert dec.failed_units is not None and len(dec.failed_units) == len(units)
    assert nnc.check(data, units=dec.failed_units).to_dict() == fresh.to_dict()
    dec.decode_model(good)
    assert dec.failed_units is None                     # nothing kept after a decode that worked


def test_codebook_deltas_read_in_bulk_keep_their_array_until_changed():
    from nnc.bitstream.syntax import ArrayList, as_int64

    data = bombs.dense_codebook(4_096, codebook_size=256)
    cb = nnc.bitstream.parse(data).ndus()[0].body.codebook
    left = cb.codebook_delta_left
    assert isinstance(left, ArrayList) and left.array is not None and as_int64(left) is left.array
    assert left == left.array.tolist() and cb.values_array().tolist() == cb.values
    left[0] += 5                                        # changed: the array is dropped, values follow the list
    assert left.array is None and cb.values_array().tolist() == cb.values


def test_damage_before_a_limit_is_said_alike_by_info_check_and_decode(tmp_path):
    # 43K damaged NDU headers: under --strict the unit density bound also stops the stream (at unit 3,072);
    # the damage at unit 3 comes first, and all three commands say it (nnc info said the limit, exit 2)
    path = tmp_path / "bad.nnc"
    path.write_bytes(bombs.damaged_units())
    said = set()
    for command in ("info", "check", "decode"):
        argv = [command, str(path), "--strict", "--quiet"] + (["-o", str(tmp_path / "o.npz")]
                                                               if command == "decode" else [])
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            assert cli(argv) == 1, (command, err.getvalue())
        said.add(err.getvalue().strip().splitlines()[-1])
    assert len(said) == 1 and "is damaged" in said.pop()


def test_inspect_hands_back_the_units_of_a_long_stream_only_up_to_a_bound(monkeypatch):
    # nnc info keeps inspect's units for the classifying check; a stream of more than 65,536 units (possible
    # without --strict) would hold them all at once, so inspect stops keeping them and the check parses again
    import nnc.describe as describe

    monkeypatch.setattr(describe, "_KEEP_UNITS", 100)
    data = bombs.many_units(500 * 19)
    few, many = [], []
    nnc.inspect(data[:nnc.bitstream.parse(data).units[50].offset], parsed=few)
    nnc.inspect(data, parsed=many)
    assert len(few) == 50 and many == []
