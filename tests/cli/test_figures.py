"""True figures for every dtype: bfloat16 and float16 count 2 bytes per parameter, int64 8, in the summary,
--json and `nnc info` (which names the source dtype the topology records)."""
import json

import numpy as np
import pytest

from clitools import nnc

ml_dtypes = pytest.importorskip("ml_dtypes")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _write(path, tensors):
    safetensors_numpy.save_file(tensors, str(path))


def test_same_tensor_as_bf16_and_f16_reports_the_same_ratio(tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32) * 0.05
    ratios = {}
    for name, dt in (("bf16", ml_dtypes.bfloat16), ("f16", np.float16)):
        _write(tmp_path / f"{name}.safetensors", {"w": w.astype(dt)})
        p = nnc("encode", tmp_path / f"{name}.safetensors", "-o", tmp_path / f"{name}.nnc", "--json")
        assert p.returncode == 0, p.stderr
        s = json.loads(p.stdout)
        assert s["input_bytes"] == 64 * 64 * 2, (name, s)
        assert s["ratio"] == pytest.approx(s["input_bytes"] / s["bitstream_bytes"])
        ratios[name] = s["ratio"]
    # both hold 2 bytes per parameter; the bitstreams differ only in the topology record's dtype name
    assert ratios["bf16"] == pytest.approx(ratios["f16"], rel=0.01)


def test_mixed_dtypes_are_counted_at_their_own_size(tmp_path):
    rng = np.random.default_rng(1)
    t = {"a": rng.standard_normal((32, 16)).astype(ml_dtypes.bfloat16),
         "b": rng.standard_normal((32, 16)).astype(np.float16),
         "c": rng.standard_normal((32, 16)).astype(np.float32),
         "d": np.arange(100, dtype=np.int64)}
    _write(tmp_path / "m.safetensors", t)
    p = nnc("encode", tmp_path / "m.safetensors", "-o", tmp_path / "m.nnc", "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["input_bytes"] == 512 * 2 + 512 * 2 + 512 * 4 + 100 * 8
    assert s["dtypes"]["bfloat16"] == {"tensors": 1, "parameters": 512, "bytes": 1024}
    assert s["dtypes"]["int64"]["bytes"] == 800
    text = nnc("encode", tmp_path / "m.safetensors", "-o", tmp_path / "m2.nnc")
    assert "bfloat16 512" in text.stdout and f"input {s['input_bytes']:,} bytes" in text.stdout


def test_info_shows_the_source_dtype(tmp_path):
    w = np.random.default_rng(0).standard_normal((16, 16)).astype(ml_dtypes.bfloat16)
    _write(tmp_path / "bf.safetensors", {"w": w, "v": np.ones((4, 4), np.float16)})
    assert nnc("encode", tmp_path / "bf.safetensors", "-o", tmp_path / "bf.nnc", "--quiet").returncode == 0
    p = nnc("info", tmp_path / "bf.nnc")
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if "tensor 'w'" in ln)
    assert "bfloat16" in line, p.stdout
    j = json.loads(nnc("info", "--json", tmp_path / "bf.nnc").stdout)
    tensors = {t["name"]: t for u in j["units"] for t in u["tensors"]}
    assert tensors["w"]["source_dtype"] == "bfloat16"
    assert tensors["v"]["dtype"] == "float16"
