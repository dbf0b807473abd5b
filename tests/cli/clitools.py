"""Helpers for the command-line tests: every test runs nnc as a real process (``python -m nnc.cli`` is what the
``nnc`` console script runs; ``python -m nnc`` itself is tested in test_process.py)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import nnc as _nnc

# the tree whose nnc is imported (PYTHONPATH), so that the same tests can be pointed at another checkout
ROOT = Path(_nnc.__file__).resolve().parents[1]
VECTORS = ROOT / "conformance" / "vectors"


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.pop("NNC_PROGRESS_DELAY", None)
    e.update(extra)
    return e


def nnc(*args, cwd=None, timeout=600, module="nnc.cli", **kw) -> subprocess.CompletedProcess:
    """Run ``python -m nnc.cli ARGS`` and return the completed process (text stdout/stderr)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env(), **kw)


def error_line(proc) -> str:
    """The single ``nnc: error:`` line of a failed run (and no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("nnc: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def small_model(path: Path, *, n: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    t = {f"layer{i}.weight": rng.standard_normal((48, 32)).astype(np.float32) * 0.05 for i in range(n)}
    t["layer0.bias"] = rng.standard_normal(48).astype(np.float32) * 0.05
    t["steps"] = np.arange(7, dtype=np.int64)
    np.savez(path, **t)
    return t
