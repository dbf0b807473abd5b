"""CLI error contract (docs/errors.md): every exception class maps to an exit code and a one-line message
on stderr, with no traceback unless ``--debug``."""
import subprocess
import sys

import numpy as np
import pytest

import nnc
from nnc import bitstream as bs
from nnc import cli
from nnc.cli import main
from conftest import ROOT, VECTORS

GAUSS = VECTORS / "gauss_qp-32_dq.nnc"


def _one_line_error(capsys, prefix):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


def _huge_tensor_stream() -> bytes:
    h = bs.NduHeaderSpec(payload_type=bs.PayloadType.NNR_PT_FLOAT, name="w", shape=(10**6, 10**6), dq_flag=False,
                         unary_length_minus1=10, scan_order=0, entry_points=[])
    return bs.start_unit(1) + bs.mps_unit(profile=1, qp_density=2) + bs.tpl_unit() + bs.ndu_unit(h, b"\0" * 4,
                                                                                                  profile=1)


# -- real failures through the real code paths ------------------------------------------------------------
def test_bitstream_error_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.nnc"
    bad.write_bytes(b"\x00\x04\x02\x01" + b"\x00\x08\x06\x81\x00\x40\x00\x80" + b"\x00\x05\x10\xff\xff")
    assert main(["decode", str(bad), "-o", str(tmp_path / "o.npz")]) == 1
    _one_line_error(capsys, "nnc: error: ")
    assert not (tmp_path / "o.npz").exists()


def test_truncated_bitstream_exit_1(tmp_path, capsys):
    bad = tmp_path / "cut.nnc"
    bad.write_bytes(GAUSS.read_bytes()[:-10])
    assert main(["decode", str(bad), "-o", str(tmp_path / "o.npz")]) == 1
    assert "runs past the end" in _one_line_error(capsys, "nnc: error: ")


def test_limit_exceeded_exit_2(tmp_path, capsys):
    bad = tmp_path / "huge.nnc"
    bad.write_bytes(_huge_tensor_stream())
    assert main(["decode", str(bad), "-o", str(tmp_path / "o.npz")]) == 2
    assert "max_tensor_elements" in _one_line_error(capsys, "nnc: error: ")


def test_unsupported_feature_exit_3(tmp_path, capsys):
    data = bytearray(GAUSS.read_bytes())
    data[3] = 7                                                    # general_profile_idc 7
    bad = tmp_path / "p7.nnc"
    bad.write_bytes(bytes(data))
    assert main(["decode", str(bad), "-o", str(tmp_path / "o.npz")]) == 3
    _one_line_error(capsys, "nnc: unsupported: ")      # profile 7 is parsed with profile-0 syntax, then refused


def test_config_error_exit_2(tmp_path, capsys):
    assert main(["encode", str(VECTORS / "in_tiny.npz"), "-o", str(tmp_path / "o.nnc"), "--qp-density", "9"]) == 2
    assert "qp_density" in _one_line_error(capsys, "nnc: error: ")


def test_input_error_exit_2(tmp_path, capsys):
    src = tmp_path / "nan.npz"
    np.savez(src, w=np.array([[1.0, np.nan]], np.float32))
    assert main(["encode", str(src), "-o", str(tmp_path / "o.nnc"), "--quiet"]) == 2
    assert "non-finite" in _one_line_error(capsys, "nnc: error: ")


def test_model_format_error_exit_2(tmp_path, capsys):
    src = tmp_path / "junk.npz"
    src.write_bytes(b"this is not a zip file")
    assert main(["encode", str(src), "-o", str(tmp_path / "o.nnc"), "--quiet"]) == 2
    _one_line_error(capsys, "nnc: error: ")


def test_missing_file_exit_2(tmp_path, capsys):
    assert main(["decode", str(tmp_path / "nope.nnc"), "-o", str(tmp_path / "o.npz")]) == 2
    assert "cannot read" in _one_line_error(capsys, "nnc: error: ")


def test_check_exit_codes(tmp_path, capsys):
    assert main(["check", str(GAUSS)]) == 0
    data = bytearray(GAUSS.read_bytes())
    data[-3] ^= 0x40                                               # damage the CABAC payload of the last NDU
    bad = tmp_path / "bad.nnc"
    bad.write_bytes(bytes(data))
    assert main(["check", str(bad)]) == 1
    junk = tmp_path / "junk.nnc"
    junk.write_bytes(b"")
    assert main(["check", str(junk)]) == 2
    capsys.readouterr()


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["decode"])
    assert ei.value.code == 2
    capsys.readouterr()


# -- every class of the hierarchy, injected -----------------------------------------------------------------
def _all_nnc_errors():
    from nnc.fl import RejectedUpdateError
    return [
        (nnc.BitstreamError("b", unit_index=1, byte_offset=2, syntax_path="x"), 1, "nnc: error: "),
        (nnc.TruncatedBitstreamError("t"), 1, "nnc: error: "),
        (nnc.LimitExceededError("l"), 2, "nnc: error: "),
        (nnc.UnsupportedFeatureError("u"), 3, "nnc: unsupported: "),
        (nnc.ConfigError("c"), 2, "nnc: error: "),
        (nnc.InputError("i"), 2, "nnc: error: "),
        (nnc.ModelFormatError("m"), 2, "nnc: error: "),
        (nnc.ConformanceError("c\nsecond line of a report"), 2, "nnc: error: "),
        (nnc.UpdateStateError("s"), 2, "nnc: error: "),
        (RejectedUpdateError("client-1", "r"), 2, "nnc: error: "),
        (FileNotFoundError("f"), 2, "nnc: error: "),
        (PermissionError("p"), 2, "nnc: error: "),
        (RuntimeError("a bug"), 70, "nnc: internal error: RuntimeError: "),
        (MemoryError(), 70, "nnc: internal error: MemoryError"),
    ]


@pytest.mark.parametrize("exc,code,prefix", _all_nnc_errors(), ids=lambda x: type(x).__name__
                         if isinstance(x, BaseException) else str(x))
def test_each_exception_maps_to_code_and_one_line(monkeypatch, capsys, exc, code, prefix):
    def boom(a):
        raise exc
    monkeypatch.setitem(cli._COMMANDS, "decode", boom)
    assert main(["decode", "in.nnc", "-o", "out.npz"]) == code
    _one_line_error(capsys, prefix)
    with pytest.raises(type(exc)):                                 # --debug: the exception itself propagates
        main(["--debug", "decode", "in.nnc", "-o", "out.npz"])


def test_keyboard_interrupt_exit_130(monkeypatch, capsys):
    def boom(a):
        raise KeyboardInterrupt
    monkeypatch.setitem(cli._COMMANDS, "decode", boom)
    assert main(["decode", "in.nnc", "-o", "out.npz"]) == 130
    _one_line_error(capsys, "nnc: interrupted")


# -- a real process: no traceback without --debug, a traceback with it -------------------------------------
def test_process_prints_no_traceback_without_debug(tmp_path):
    bad = tmp_path / "huge.nnc"
    bad.write_bytes(_huge_tensor_stream())
    cmd = [sys.executable, "-m", "nnc.cli"]
    r = subprocess.run(cmd + ["decode", str(bad), "-o", str(tmp_path / "o.npz")], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run(cmd + ["--debug", "decode", str(bad), "-o", str(tmp_path / "o.npz")], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "LimitExceededError" in r.stderr


def test_closed_stdout_pipe_ends_quietly(tmp_path):
    # `nnc info x.nnc | head -1`: the reader goes away; nnc stops without an error message (exit 141, as a
    # process killed by SIGPIPE reports in a shell) instead of "nnc: error: [Errno 32] Broken pipe"
    rng = np.random.default_rng(0)
    stream = tmp_path / "many.nnc"
    stream.write_bytes(nnc.encode({f"layer{i}.weight": rng.standard_normal((4, 4), dtype=np.float32)
                                   for i in range(400)}, nnc.EncoderConfig(qp=-32)))
    p = subprocess.Popen([sys.executable, "-m", "nnc.cli", "info", str(stream)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.close()  # before the interpreter has started: every write of nnc's meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert err == ""
