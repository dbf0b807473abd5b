"""The program as a process: --version, python -m nnc, the nnc script, a prompt Ctrl-C, progress for every long
phase on a terminal and silence when piped or --quiet; nnc.converters after a plain `import nnc`."""
import os
import pty
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from clitools import env, nnc, small_model


def test_version_and_python_dash_m_nnc(tmp_path):
    import nnc as package
    p = nnc("--version", module="nnc")
    assert p.returncode == 0 and p.stdout.strip() == f"nnc {package.__version__}"
    src = tmp_path / "m.npz"
    small_model(src)
    p = nnc("encode", src, "-o", tmp_path / "m.nnc", module="nnc")
    assert p.returncode == 0 and "bitstream" in p.stdout


def test_the_nnc_script():
    exe = shutil.which("nnc")
    if exe is None:
        pytest.skip("no nnc script on PATH")
    p = subprocess.run([exe, "--version"], capture_output=True, text=True, env=env(), timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("nnc ")


def test_converters_reachable_after_import_nnc():
    code = "import nnc; lm = nnc.converters.from_torch; print(nnc.converters.load_model.__name__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "load_model"


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc to time the interrupt")
def test_ctrl_c_mid_encode_stops_at_once(tmp_path):
    # one 36M-parameter tensor: its DQ encode is one call into the C++ core lasting seconds (signalled after
    # 2 CPU seconds, well before the end: 16M parameters left too little margin once start-up got faster)
    np.savez(tmp_path / "big.npz", w=np.random.default_rng(0).standard_normal((6000, 6000)).astype(np.float32))
    out = tmp_path / "big.nnc"
    # SIGINT as a terminal delivers it, whatever this process inherited (a shell's background job ignores it)
    p = subprocess.Popen([sys.executable, "-m", "nnc.cli", "encode", str(tmp_path / "big.npz"), "-o", str(out),
                          "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while p.poll() is None and _cpu_seconds(p.pid) < 2.0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, p.communicate()
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    took = time.monotonic() - t0
    assert p.returncode == 130, err
    assert "interrupted" in err and "nothing was written" in err
    assert took < 2.0, f"took {took:.1f} s to stop"
    assert not out.exists() and [f.name for f in tmp_path.iterdir() if f.name.startswith(".big.nnc")] == []


def _on_a_terminal(*args, extra_env=None) -> tuple[int, str]:
    import fcntl
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a real terminal has a size
    p = subprocess.Popen([sys.executable, "-m", "nnc.cli", *map(str, args)], stdin=slave, stdout=subprocess.DEVNULL,
                         stderr=slave, env=env(**(extra_env or {})))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return p.wait(timeout=300), b"".join(chunks).decode(errors="replace")


def test_progress_for_every_phase_on_a_terminal_only(tmp_path):
    src = tmp_path / "m.npz"
    small_model(src)
    show_all = {"NNC_PROGRESS_DELAY": "0"}  # every phase, not only those over a second
    rc, err = _on_a_terminal("encode", src, "-o", tmp_path / "m.nnc", extra_env=show_all)
    assert rc == 0
    # the bitstream is written unit by unit while encoding (no separate writing phase)
    for phase in ("nnc: loading", "encoding", "nnc: verifying"):
        assert phase in err, (phase, err)
    rc, err = _on_a_terminal("check", tmp_path / "m.nnc", extra_env=show_all)
    assert rc == 0 and "nnc: checking" in err
    rc, err = _on_a_terminal("decode", tmp_path / "m.nnc", "-o", tmp_path / "d.npz", extra_env=show_all)
    assert rc == 0 and "nnc: decoding" in err and "nnc: writing" in err
    # --quiet on a terminal, and any run whose stderr is a pipe: no progress at all
    rc, err = _on_a_terminal("encode", src, "-o", tmp_path / "q.nnc", "--quiet", extra_env=show_all)
    assert rc == 0 and "nnc:" not in err and "encoding" not in err
    p = subprocess.run([sys.executable, "-m", "nnc.cli", "check", str(tmp_path / "m.nnc")], capture_output=True,
                       text=True, env=env(**show_all))
    assert p.returncode == 0 and p.stderr == ""
