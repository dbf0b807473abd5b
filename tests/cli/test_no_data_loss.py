"""Never destroy an input: an output that is (or links to) an input is refused, an encode output with a model
extension needs --force, and outputs get the permissions the umask allows."""
import os
import stat
import subprocess
import sys

from clitools import ROOT, env, error_line, nnc, small_model


def test_encode_output_equal_to_input_is_refused(tmp_path):
    src = tmp_path / "model.npz"
    small_model(src)
    before = src.read_bytes()
    for extra in ([], ["--force"]):  # --force allows a model extension, never overwriting the input
        p = nnc("encode", src, "-o", src, *extra)
        assert p.returncode == 2
        assert "is the input" in error_line(p)
        assert src.read_bytes() == before


def test_outputs_that_link_to_the_input_are_refused(tmp_path):
    src = tmp_path / "model.npz"
    small_model(src)
    before = src.read_bytes()
    (tmp_path / "soft.nnc").symlink_to(src)
    os.link(src, tmp_path / "hard.nnc")
    for name in ("soft.nnc", "hard.nnc"):
        p = nnc("encode", src, "-o", tmp_path / name)
        assert p.returncode == 2, (name, p.stderr)
        assert "is the input" in error_line(p) and "through a link" in p.stderr
    assert src.read_bytes() == before and (tmp_path / "hard.nnc").read_bytes() == before
    # decode: an output that resolves to the bitstream being read
    assert nnc("encode", src, "-o", tmp_path / "m.nnc", "--quiet").returncode == 0
    bits = (tmp_path / "m.nnc").read_bytes()
    (tmp_path / "out.npz").symlink_to(tmp_path / "m.nnc")
    p = nnc("decode", tmp_path / "m.nnc", "-o", tmp_path / "out.npz")
    assert p.returncode == 2 and "is the input" in error_line(p)
    assert (tmp_path / "m.nnc").read_bytes() == bits


def test_an_encode_output_with_a_model_extension_needs_force(tmp_path):
    src = tmp_path / "model.npz"
    small_model(src)
    for ext in (".safetensors", ".onnx", ".pt", ".npz"):
        out = tmp_path / f"compressed{ext}"
        p = nnc("encode", src, "-o", out)
        assert p.returncode == 2 and "--force" in error_line(p), p.stderr
        assert not out.exists()
    out = tmp_path / "compressed.safetensors"
    p = nnc("encode", src, "-o", out, "--force", "--quiet")
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:4] == b"\x00\x04\x02\x01"   # an NNC bitstream, as asked


def test_outputs_honour_the_umask(tmp_path):
    src = tmp_path / "model.npz"
    small_model(src)
    for umask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        code = (f"import os, sys; os.umask({umask}); from nnc.cli import main; "
                f"sys.exit(main(['encode', {str(src)!r}, '-o', {str(tmp_path / 'm.nnc')!r}, '--quiet']) or "
                f"main(['decode', {str(tmp_path / 'm.nnc')!r}, '-o', {str(tmp_path / 'd.npz')!r}]))")
        for f in ("m.nnc", "d.npz"):
            (tmp_path / f).unlink(missing_ok=True)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=ROOT)
        assert p.returncode == 0, p.stderr
        for f in ("m.nnc", "d.npz"):
            assert stat.S_IMODE((tmp_path / f).stat().st_mode) == mode, (oct(umask), f)


def test_replacing_an_output_keeps_its_permissions(tmp_path):
    src = tmp_path / "model.npz"
    small_model(src)
    out = tmp_path / "m.nnc"
    out.write_bytes(b"old")
    out.chmod(0o640)
    assert nnc("encode", src, "-o", out, "--quiet").returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and out.read_bytes()[:4] == b"\x00\x04\x02\x01"
