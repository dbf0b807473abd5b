"""The C++-only timing harness (benchmarks/core/run.sh) still builds against the core and its round trip,
engine replay and table output work (slow: it compiles the core with -O3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler")
def test_core_harness_runs_on_a_small_model(tmp_path):
    rng = np.random.default_rng(3)
    model = tmp_path / "small.npz"
    np.savez(model, **{"a.weight": (rng.standard_normal((40, 50)) * 0.05).astype("f4"),
                       "a.bias": (rng.standard_normal(40) * 0.01).astype("f4"),
                       "b.weight": (rng.standard_normal((8, 4, 3, 3)) * 0.1).astype("f4")})
    out = tmp_path / "core.json"
    env = dict(os.environ, TMPDIR=str(tmp_path), NNC_CORE_JSON=str(out),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    res = subprocess.run(["bash", str(ROOT / "benchmarks/core/run.sh"), str(model), "-30"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| small.npz | -30 | on |" in res.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["dq"] for r in rows] == ["on", "off"]
    for r in rows:
        core = r["core"]
        assert core["elements"] == 40 * 50 + 40 + 8 * 4 * 3 * 3
        assert core["bytes"] > 0 and len(core["payload_fnv1a"]) == 16
        # the replay stream codes the same bins as the real payloads (row-skip flags aside)
        assert abs(core["replay_stream_bytes"] - core["bytes"]) <= 0.05 * core["bytes"] + 16
        # the harness exits non-zero when a replayed bin decodes wrongly; the timings of a model this small
        # round to 0 at the printed precision, so only their presence is checked
        assert core["context_bins"] > core["elements"]
        assert core["replay_decode_s"] >= 0 and core["mps_chain_ns_per_bin_8ctx"] > 0
