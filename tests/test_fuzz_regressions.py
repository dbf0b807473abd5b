"""Regression tests for findings of the hostile-input work (docs/fuzzing.md lists them), with the inputs
inline, plus the no-pickle guard. Each case must raise the nnc.NNCError subclass shown, nothing else."""
import ast
import pickle
import re
import zipfile

import numpy as np
import pytest

import nnc
from conftest import ROOT, VECTORS

# Finding 1 (hypothesis/mutation work, 2026-11-28): an NNR_MPS with mps_quantization_parameter 1500 and
# qp_density 0 made step_size() evaluate 2.0 ** 1480 -> OverflowError (not an NNCError) escaped
# nnc.decode; with qp 180 the step became float32 inf and the tensor decoded to inf (poison for an FL
# aggregate). Fixed in nnc/codec.py (_check_step + finite check of the reconstruction).
QP_OVERFLOW_1500 = bytes.fromhex(
    "00040201000806810005dc8000060e000000005216097700d041c1212102a080b28a420c4428c8d36fbcb6da03ea7c5605755b"
    "55b3f571383ffa173ff627ffe85fffb14bfee4b7faffffe5c5ff6fcffc941fe546ff39f7f991bfc755fdd25fea82ff1770")


def _with_mps_qp(qp: int) -> bytes:
    from dataclasses import replace
    from nnc import bitstream as bs
    data = nnc.encode({"w": np.ones((4, 4), "f4")}, nnc.EncoderConfig(qp=-20, qp_density=0, nonweight_qp=-20))
    p = bs.parse(data)
    mps = p.units[1]
    raw = bs.write_unit(replace(mps.body, mps_quantization_parameter=qp), context=mps.context)
    return bs.write_unit(p.units[0]) + raw + bs.write_bitstream(p.units[2:])


def test_qp_overflow_inline_bytes():
    assert _with_mps_qp(1500) == QP_OVERFLOW_1500
    with pytest.raises(nnc.BitstreamError, match="overflows float32"):
        nnc.decode(QP_OVERFLOW_1500)


@pytest.mark.parametrize("qp", [180, 1000, 4095])
def test_qp_overflow_never_decodes_to_inf(qp):
    with pytest.raises(nnc.BitstreamError, match="overflow"):
        nnc.decode(_with_mps_qp(qp))


def test_large_but_finite_qp_still_decodes():
    out = nnc.decode(_with_mps_qp(100))["w"]
    assert np.isfinite(out).all()


def test_qp_overflow_through_inspect_and_check():
    # the other entry points report it instead of crashing
    info = nnc.inspect(QP_OVERFLOW_1500)
    assert info.to_text()
    report = nnc.check(QP_OVERFLOW_1500)
    assert report.to_text()


def test_qp_overflow_through_the_fl_server():
    from nnc.fl import RejectedUpdateError, ServerCodec
    server = ServerCodec({"w": np.zeros((4, 4), np.float32)})
    with pytest.raises(RejectedUpdateError):
        server.receive("c", QP_OVERFLOW_1500)


# Finding 2: a float64 (or int64) tensor was charged 4 bytes per element against max_total_bytes; see
# tests/test_limits.py::test_max_total_bytes_counts_the_signalled_dtype.
# Finding 3: scan_order 5..15 and TCA/HDSP state of the wrong size raised ConfigError (the caller's-settings
# error) for what is a bad bitstream / a bad update; see test_limits.py (reserved scan_order, changed shape).

# Crash/timeout files that libFuzzer writes are replayed here when present (none have been found so far).
ARTIFACTS = sorted((ROOT / "tests" / "data" / "fuzz").glob("*")) if (ROOT / "tests" / "data" / "fuzz").is_dir() \
    else []


@pytest.mark.parametrize("path", ARTIFACTS, ids=lambda p: p.name)
def test_fuzz_artifacts(path):
    try:
        nnc.decode(path.read_bytes())
    except nnc.NNCError:
        pass


# -- no pickle ---------------------------------------------------------------------------------------------
def test_no_pickle_loading_anywhere_in_nnc():
    offenders = []
    for py in (ROOT / "nnc").rglob("*.py"):
        text = py.read_text()
        for pat in (r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"weights_only\s*=\s*False",
                    r"cloudpickle", r"dill", r"joblib\.load", r"marshal\.loads?\("):
            if re.search(pat, text):
                offenders.append(f"{py.relative_to(ROOT)}: {pat}")
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{py.relative_to(ROOT)}: torch.load without weights_only=True")
        for node in ast.walk(ast.parse(text)):  # calls only: messages may name torch.jit.load
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("jit.load"):
                offenders.append(f"{py.relative_to(ROOT)}: torch.jit.load compiles and runs an archive's code")
        if re.search(r"pickle\.Unpickler\b", text) and "def find_class" not in text:
            offenders.append(f"{py.relative_to(ROOT)}: an Unpickler without a restricted find_class")
        for m in re.finditer(r"np\.load\(([^)]*)\)", text):
            if "allow_pickle=False" not in m.group(1):
                offenders.append(f"{py.relative_to(ROOT)}: np.load without allow_pickle=False")
    assert offenders == []


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo PWNED > /dev/null",))


def test_malicious_pt_file_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from nnc import converters
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _Evil()}, evil)
    with pytest.raises(nnc.ModelFormatError):
        converters.load_model(evil)


def test_npz_with_object_array_is_refused(tmp_path):
    from nnc import converters
    p = tmp_path / "obj.npz"
    with zipfile.ZipFile(p, "w") as z:
        import io
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.array([_Evil()], dtype=object), allow_pickle=True)
        z.writestr("w.npy", buf.getvalue())
    with pytest.raises(nnc.ModelFormatError):
        converters.load_model(p)
    assert pickle  # the module is only needed to build the hostile files above
