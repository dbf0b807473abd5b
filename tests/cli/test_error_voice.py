"""One voice for errors: what, where and what to do in nnc's words; no library text (numpy's allow_pickle hint,
torch's error codes, ANSI escapes), no errno prefixes or temporary names; docs/errors.md lists the classes."""
import re

import pytest

from clitools import ROOT, error_line, nnc

LEAKS = ("allow_pickle", "pickle.load", "[Errno", "\x1b[", "(torch:", "truncated or corrupt?", ": 101", "None",
         ".tmp")


def _clean(line: str, path) -> None:
    for leak in LEAKS:
        assert leak not in line, (leak, line)
    assert str(path.name) in line, line                     # where
    assert ";" in line or "instead" in line, line            # what to do


def test_garbage_model_files(tmp_path):
    for name in ("junk.npz", "junk.pt", "junk.safetensors"):
        (tmp_path / name).write_text("hello, I am a text file\n")
        p = nnc("encode", tmp_path / name, "-o", tmp_path / "o.nnc")
        assert p.returncode == 2, p.stderr
        _clean(error_line(p), tmp_path / name)


def test_pickled_module_message_is_whole_and_plain(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    p = nnc("encode", tmp_path / "module.pt", "-o", tmp_path / "o.nnc")
    assert p.returncode == 2
    line = error_line(p)
    _clean(line, tmp_path / "module.pt")
    assert "state_dict()" in line and line.rstrip().endswith(".")


def test_missing_files_and_bitstream_errors(tmp_path):
    p = nnc("decode", tmp_path / "absent.nnc", "-o", tmp_path / "o.npz")
    assert p.returncode == 2
    _clean(error_line(p), tmp_path / "absent.nnc")
    (tmp_path / "t.nnc").write_text("text\n")
    for cmd in (["decode", tmp_path / "t.nnc", "-o", tmp_path / "o.npz"], ["info", tmp_path / "t.nnc"],
                ["check", tmp_path / "t.nnc"]):
        p = nnc(*cmd)
        assert p.returncode == 2
        _clean(error_line(p), tmp_path / "t.nnc")


def test_docs_list_the_command_line_classes():
    doc = (ROOT / "docs" / "errors.md").read_text()
    for words in ("is not an NNC bitstream", "is damaged", "is incomplete", "is the input", "refusing to write",
                  "nnc: warning:", "--reference-layout"):
        assert words in doc, words
    assert re.search(r"\|\s*1\s*\|[^\n]*damaged", doc)


def test_a_failed_write_names_the_output_not_a_temporary_file(tmp_path):
    import resource
    import subprocess
    import sys

    from clitools import env, small_model
    src = tmp_path / "model.npz"
    small_model(src)
    assert nnc("encode", src, "-o", tmp_path / "m.nnc", "--quiet").returncode == 0
    (tmp_path / "old.npz").write_bytes(b"previous")

    def small_files():  # the write fails part-way with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))
    for cmd, out in ((["encode", src, "-o", tmp_path / "big.nnc", "--quiet"], tmp_path / "big.nnc"),
                     (["decode", tmp_path / "m.nnc", "-o", tmp_path / "old.npz"], tmp_path / "old.npz")):
        p = subprocess.run([sys.executable, "-m", "nnc.cli", *map(str, cmd)], capture_output=True, text=True,
                           env=env(), preexec_fn=small_files)
        assert p.returncode == 2, p.stderr
        line = error_line(p)
        assert line.startswith(f"nnc: error: cannot write {out}: file too large; nothing was written"), line
        _clean(line, out)
    assert (tmp_path / "old.npz").read_bytes() == b"previous"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.nnc", "model.npz", "old.npz"]
