"""Integrity: a bitstream whose topology lists its tensors (nnc encode's default) that lost tensors is an error
in decode (every output format), info and check; decode, info and check classify one bad file alike (same
message, same exit code); without a tensor list, check says completeness cannot be verified. The default layout
differs from NNCodec's only by the tensor list; --reference-layout is byte-identical to the reference."""
import json

import numpy as np
import pytest

from clitools import error_line, nnc, small_model
from nnc import bitstream as B


@pytest.fixture
def encoded(tmp_path):
    src = tmp_path / "model.npz"
    tensors = small_model(src)
    assert nnc("encode", src, "-o", tmp_path / "model.nnc", "--quiet").returncode == 0
    return tmp_path / "model.nnc", tensors


def _cut_at_unit(path, unit_index, out):
    data = path.read_bytes()
    u = B.parse(data).units[unit_index]
    out.write_bytes(data[:u.offset])
    return out


def _three(bad, tmp_path, fmt="npz"):
    out = tmp_path / f"decoded.{fmt}"
    runs = {"decode": nnc("decode", bad, "-o", out), "info": nnc("info", bad), "check": nnc("check", bad)}
    assert not out.exists()
    return runs


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_file_cut_at_a_unit_boundary_is_an_error_everywhere(encoded, tmp_path, fmt):
    path, tensors = encoded
    bad = _cut_at_unit(path, 4, tmp_path / "cut.nnc")        # STR, MPS, TPL and the first NDU remain
    runs = _three(bad, tmp_path, fmt)
    lines = {cmd: error_line(p) for cmd, p in runs.items()}
    assert {p.returncode for p in runs.values()} == {1}, {c: p.stderr for c, p in runs.items()}
    assert len(set(lines.values())) == 1, lines             # one voice: the same line from all three
    assert "incomplete" in lines["decode"] and f"{len(tensors) - 1} of them are missing" in lines["decode"]
    assert "TENSOR_MISSING" in runs["check"].stdout and "NOT CONFORMING" in runs["check"].stdout
    assert "INCOMPLETE" in runs["info"].stdout


def test_the_same_bad_file_gets_the_same_class_and_code(encoded, tmp_path):
    path, _ = encoded
    data = path.read_bytes()
    ndu = B.parse(data).units[4]
    flipped = bytearray(data)
    flipped[ndu.offset + ndu.size - 3] ^= 0x40
    cases = {"text.nnc": (b"just some text\n", 2, "is not an NNC bitstream"),
             "mid.nnc": (data[:ndu.offset + 9], 1, "is damaged"),
             "flip.nnc": (bytes(flipped), 1, "is damaged")}
    for name, (content, code, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        runs = _three(tmp_path / name, tmp_path)
        assert {c: p.returncode for c, p in runs.items()} == {"decode": code, "info": code, "check": code}, name
        lines = {error_line(p) for p in runs.values()}
        assert len(lines) == 1, (name, lines)
        assert words in lines.pop(), name


def test_whole_files_pass_and_say_so(encoded, tmp_path):
    path, tensors = encoded
    p = nnc("check", path)
    assert p.returncode == 0 and "complete: every tensor" in p.stdout
    assert json.loads(nnc("check", "--json", path).stdout)["completeness"] == "verified"
    assert json.loads(nnc("info", "--json", path).stdout)["summary"]["missing_tensors"] == []
    assert nnc("decode", path, "-o", tmp_path / "d.npz").returncode == 0
    with np.load(tmp_path / "d.npz") as z:
        assert sorted(z.files) == sorted(tensors)


def test_without_a_tensor_list_check_says_completeness_cannot_be_verified(tmp_path):
    src = tmp_path / "model.npz"
    small_model(src)
    assert nnc("encode", src, "-o", tmp_path / "ref.nnc", "--reference-layout", "--quiet").returncode == 0
    p = nnc("check", tmp_path / "ref.nnc")
    assert p.returncode == 0 and "completeness cannot be verified" in p.stdout
    cut = _cut_at_unit(tmp_path / "ref.nnc", 4, tmp_path / "cut.nnc")
    p = nnc("check", cut)
    assert "completeness cannot be verified" in p.stdout
    assert "not verifiable" in nnc("info", cut).stdout


def _ndus(data: bytes) -> list[bytes]:
    p = B.parse(data)
    return [bytes(p.data[u.offset:u.offset + u.size]) for u in p.units if u.nnr_unit_type != B.NNRUnitType.NNR_TPL]


@pytest.mark.reference
def test_reference_layout_is_byte_identical_and_the_default_adds_only_the_tensor_list(tmp_path, reference):
    rng = np.random.default_rng(3)
    t = {"conv.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.1,
         "conv.bias": rng.standard_normal(16).astype(np.float32) * 0.1,
         "fc.weight": rng.standard_normal((10, 64)).astype(np.float16),
         "bn.num_batches_tracked": np.array([7], np.int64),
         "ids": np.arange(-5, 20, dtype=np.int64)}
    np.savez(tmp_path / "in.npz", **t)
    assert nnc("encode", tmp_path / "in.npz", "-o", tmp_path / "ref.nnc", "--reference-layout", "--qp", "-32",
               "--quiet").returncode == 0
    assert nnc("encode", tmp_path / "in.npz", "-o", tmp_path / "nnc.nnc", "--qp", "-32", "--quiet").returncode == 0
    theirs = reference.encode_many([(t, {"qp": -32})])[0]      # NNCodec: float -> float32, int -> int32
    ours_ref, ours = (tmp_path / "ref.nnc").read_bytes(), (tmp_path / "nnc.nnc").read_bytes()
    assert ours_ref == theirs
    # the default: the reference decodes it to the same arrays as its own stream (it reads and ignores the
    # tensor list), and nnc restores the original dtypes from it
    dec_theirs, dec_ours = reference.decode_many([theirs, ours])
    assert list(dec_theirs) == list(dec_ours)
    assert all(np.array_equal(np.asarray(dec_theirs[k], np.float64), np.asarray(dec_ours[k], np.float64))
               for k in dec_theirs)
    assert nnc("decode", tmp_path / "nnc.nnc", "-o", tmp_path / "d.npz").returncode == 0
    with np.load(tmp_path / "d.npz") as z:
        assert z["ids"].dtype == np.int64 and z["fc.weight"].dtype == np.float16
