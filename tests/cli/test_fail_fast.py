"""Fail before work: the output path, the formats and the flags are checked before anything is loaded, so a
typo costs no load/encode time."""
import time

import numpy as np

from clitools import error_line, nnc


def _slow_input(tmp_path):
    # a model that takes a while to load and encode (and a garbage twin that would fail when loaded)
    np.savez(tmp_path / "big.npz", w=np.random.default_rng(0).standard_normal((3000, 3000)).astype(np.float32))
    (tmp_path / "junk.npz").write_bytes(b"garbage, not a zip")


def test_missing_output_folder_is_reported_before_loading(tmp_path):
    _slow_input(tmp_path)
    p = nnc("encode", tmp_path / "junk.npz", "-o", tmp_path / "no" / "such" / "dir" / "m.nnc")
    assert p.returncode == 2
    line = error_line(p)
    assert "does not exist" in line and "mkdir -p" in line           # about the output, not the garbage input
    t0 = time.monotonic()
    p = nnc("encode", tmp_path / "big.npz", "-o", tmp_path / "missing" / "m.nnc")
    assert p.returncode == 2 and "does not exist" in error_line(p)
    assert time.monotonic() - t0 < 20                                  # no 9M-parameter encode happened


def test_decode_output_format_checked_before_reading(tmp_path):
    (tmp_path / "junk.nnc").write_bytes(b"garbage")
    p = nnc("decode", tmp_path / "junk.nnc", "-o", tmp_path / "out.nnc")
    assert p.returncode == 2 and "cannot tell the model format" in error_line(p)
    p = nnc("decode", tmp_path / "junk.nnc", "-o", tmp_path / "out.jit")
    assert p.returncode == 2 and "--template" in error_line(p)
    p = nnc("decode", tmp_path / "junk.nnc", "-o", tmp_path / "out.npz", "--format", "onnx")
    assert p.returncode == 2 and "contradicts" in error_line(p)
    p = nnc("decode", tmp_path / "junk.nnc", "-o", tmp_path / "nodir" / "out.npz")
    assert p.returncode == 2 and "does not exist" in error_line(p)


def test_unknown_input_format_and_missing_input(tmp_path):
    (tmp_path / "weights.data").write_bytes(b"x")
    p = nnc("encode", tmp_path / "weights.data", "-o", tmp_path / "nodir" / "o.nnc")
    assert p.returncode == 2 and "--format" in error_line(p)
    p = nnc("encode", tmp_path / "nope.onnx", "-o", tmp_path / "o.nnc")
    assert p.returncode == 2
    line = error_line(p)
    assert "no such file" in line and "[Errno" not in line and "; check the path" in line   # what to do
