"""Guard rails: QP is explained in --help and the README; settings that wreck the model, size targets that
cannot be met and flags that have no effect are warned about on stderr (exit 0); conflicting flags are refused."""
import re

import numpy as np

from clitools import ROOT, error_line, nnc, small_model


def test_help_explains_qp_and_lists_every_input():
    top = nnc("--help")
    assert top.returncode == 0
    assert ".ckpt" in top.stdout and "folder" in top.stdout
    h = nnc("encode", "--help").stdout
    flat = " ".join(h.split())
    assert "more negative = finer" in flat and "-128..127" in flat and "default -38" in flat
    assert "--reference-layout" in flat and "--force" in flat


def test_readme_explains_qp():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "more negative" in readme.lower() and "-128..127" in readme


def test_model_wrecking_qp_warns_but_succeeds(tmp_path):
    src = tmp_path / "m.npz"
    small_model(src)
    for qp in ("0", "10"):
        p = nnc("encode", src, "-o", tmp_path / f"q{qp}.nnc", "--qp", qp)
        assert p.returncode == 0, p.stderr
        assert re.search(r"nnc: warning: relative L2 error [\d.]+: the model is likely useless", p.stderr), p.stderr
        assert (tmp_path / f"q{qp}.nnc").exists()
    ok = nnc("encode", src, "-o", tmp_path / "fine.nnc")
    assert ok.returncode == 0 and "warning" not in ok.stderr


def test_unreachable_size_target_warns(tmp_path):
    src = tmp_path / "m.npz"
    small_model(src)
    p = nnc("encode", src, "-o", tmp_path / "t.nnc", "--bits-per-param", "0.1")
    assert p.returncode == 0, p.stderr
    assert "--bits-per-param 0.1 cannot be met" in p.stderr


def test_ignored_flags_warn(tmp_path):
    src = tmp_path / "m.npz"
    small_model(src)
    p = nnc("encode", src, "-o", tmp_path / "t.nnc", "--qp-per-tensor", "encoder.*=-44", "--quiet")
    assert p.returncode == 0 and "matches no tensor" in p.stderr and "ignored" in p.stderr
    np.savez(tmp_path / "only2d.npz", w=np.ones((8, 8), np.float32))
    p = nnc("encode", tmp_path / "only2d.npz", "-o", tmp_path / "u.nnc", "--nonweight-qp", "-60", "--quiet")
    assert p.returncode == 0 and "--nonweight-qp is ignored" in p.stderr


def test_conflicting_flags_are_refused_before_loading(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a model")                 # never read: the conflict is found first
    for flags in (["--qp", "-30", "--bits-per-param", "2"], ["--qp-per-tensor", "a=-40", "--max-rel-error", "0.01"],
                  ["--bitdepth", "8", "--bits-per-param", "2"], ["--qp", "-30", "--bitdepth", "8"],
                  ["--scan-order", "2"]):
        p = nnc("encode", junk, "-o", tmp_path / "o.nnc", *flags)
        assert p.returncode == 2, (flags, p.stderr)
        line = error_line(p)
        assert flags[0] in line, (flags, line)
        assert ".npz" not in line.split(flags[0])[0] or "conflict" in line
        assert not (tmp_path / "o.nnc").exists()
