"""CLI outputs are written atomically (temp file beside the target + rename): an interrupted or failing run
leaves the previous output byte-for-byte intact and no temporary file behind."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from nnc.cli import main
from conftest import ROOT, VECTORS

OLD = b"previous output that must survive\n"


def _leftovers(directory, target):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{target}."))


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc to time the kill")
def test_killed_encode_leaves_old_output_intact(tmp_path):
    src = tmp_path / "big.npz"
    np.savez(src, w=np.random.default_rng(0).standard_normal((4500, 4500)).astype(np.float32))
    out = tmp_path / "out.nnc"
    out.write_bytes(OLD)
    p = subprocess.Popen([sys.executable, "-m", "nnc.cli", "encode", str(src), "-o", str(out), "--quiet",
                          "--no-verify"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # kill once it has used 2 s of CPU: imports and loading are done, the 20M-parameter DQ encode (~3 s) is not
    # (CPU time, not wall time, so a loaded machine does not change where the kill lands)
    deadline = time.monotonic() + 300
    while p.poll() is None and _cpu_seconds(p.pid) < 2.0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, f"encode finished before it could be killed: {p.stderr.read()!r}"
    p.kill()
    assert p.wait(timeout=60) == -signal.SIGKILL
    assert out.read_bytes() == OLD
    assert _leftovers(tmp_path, "out.nnc") == []


_SIGTERM_MID_WRITE = textwrap.dedent(r"""
    import os, signal, sys, time
    import nnc.codec as C
    from nnc.cli import main

    real = C.Encoder.iter_units

    def half_then_die(self, *args, **kwargs):
        for i, unit in enumerate(real(self, *args, **kwargs)):
            yield unit
            if i == 2:                                   # STR, MPS, TPL written: the output is in progress
                print("TEMP", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)     # e.g. a scheduler stopping the job
                time.sleep(30)
    C.Encoder.iter_units = half_then_die
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_during_write_removes_temp_and_keeps_old_output(tmp_path):
    out = tmp_path / "out.nnc"
    out.write_bytes(OLD)
    r = subprocess.run([sys.executable, "-c", _SIGTERM_MID_WRITE, "encode", str(VECTORS / "in_tiny.npz"), "-o",
                        str(out), "--quiet", "--no-verify"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert "TEMP" in r.stdout                                  # it really was killed mid-write
    assert out.read_bytes() == OLD
    assert _leftovers(tmp_path, "out.nnc") == []


def test_failed_encode_write_keeps_old_output(tmp_path, monkeypatch, capsys):
    import nnc._atomic as atomic
    out = tmp_path / "out.nnc"
    out.write_bytes(OLD)

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    assert main(["encode", str(VECTORS / "in_tiny.npz"), "-o", str(out), "--quiet", "--no-verify"]) == 2
    assert "no space left" in capsys.readouterr().err.lower()
    assert out.read_bytes() == OLD and _leftovers(tmp_path, "out.nnc") == []


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_failed_decode_write_keeps_old_output(tmp_path, monkeypatch, capsys, suffix):
    from nnc.converters import _common
    out = tmp_path / f"out{suffix}"
    out.write_bytes(OLD)
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(_common.os, "replace", failing_replace)
    assert main(["decode", str(VECTORS / "tiny_qp-32_dq.nnc"), "-o", str(out)]) == 2
    capsys.readouterr()
    monkeypatch.setattr(_common.os, "replace", real_replace)
    assert out.read_bytes() == OLD and _leftovers(tmp_path, out.name) == []


def test_successful_write_replaces_and_leaves_nothing(tmp_path):
    out = tmp_path / "out.nnc"
    out.write_bytes(OLD)
    assert main(["encode", str(VECTORS / "in_tiny.npz"), "-o", str(out), "--quiet", "--no-verify"]) == 0
    assert out.read_bytes() != OLD and out.read_bytes()[:4] == b"\x00\x04\x02\x01"
    assert _leftovers(tmp_path, "out.nnc") == []


def test_output_that_is_a_directory_or_in_a_missing_directory(tmp_path, capsys):
    # the error names the target, and no temporary file is created beside it (the parent of a directory
    # target is some other directory the user never named)
    src = str(VECTORS / "gauss_qp-32_dq.nnc")
    (tmp_path / "out").mkdir()
    before = sorted(os.listdir(tmp_path))
    assert main(["decode", src, "--format", "npz", "-o", str(tmp_path / "out")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["encode", str(VECTORS / "in_gauss.npz"), "-o", str(tmp_path / "out")]) == 2
    assert f"the output {tmp_path / 'out'} is a folder; give a file name" in capsys.readouterr().err
    assert main(["encode", str(VECTORS / "in_gauss.npz"), "-o", str(tmp_path / "missing" / "x.nnc")]) == 2
    assert f"the folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert main(["encode", str(VECTORS / "in_gauss.npz"), "-o", str(tmp_path / "ok.nnc")]) == 0  # the input is fine
    os.unlink(tmp_path / "ok.nnc")
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "out") == []
