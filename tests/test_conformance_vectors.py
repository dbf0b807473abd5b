"""Reference bitstreams (conformance/vectors, produced by NNCodec 2.1.3) decode in nnc to identical arrays,
and nnc's encoder reproduces the reference's bitstreams from the same inputs and settings."""
import hashlib
import json

import numpy as np
import pytest

import nnc
from conftest import VECTORS, load_npz

MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
CASES = {c["id"]: c for c in MANIFEST["cases"]}


def _sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_reference_vector_decodes_identically(case_id):
    case = CASES[case_id]
    data = (VECTORS / case["bitstream"]).read_bytes()
    expected = load_npz(VECTORS / case["decoded"])
    got = nnc.decode(data)
    assert list(got) == list(expected)
    for name, exp in expected.items():
        assert got[name].dtype == exp.dtype, name
        assert got[name].shape == exp.shape, name
        assert got[name].tobytes() == exp.tobytes(), name
        assert _sha(got[name]) == case["arrays"][name]["sha256"]


def _config_for(settings):
    codebook = "off"
    if settings["approx_method"] == "codebook":
        # nncodec.nn.encode uses codebook_mode 2 ("best of"); the nnc API cases record the mode used
        codebook = "force" if settings.get("codebook_mode") == 1 else "auto"
    return nnc.EncoderConfig(qp=settings["qp"], qp_density=settings["qp_density"],
                             nonweight_qp=settings["nonweight_qp"], dq=settings["use_dq"],
                             row_skipping=settings["row_skipping"], param_opt=settings["param_opt"],
                             codebook=codebook, bitdepth=settings["bitdepth"] or None, opt_qp=settings["opt_qp"],
                             sparsity=settings["sparsity"] or None)


ENCODE_CASES = sorted(CASES)


@pytest.mark.parametrize("case_id", ENCODE_CASES)
def test_encoder_reproduces_reference_bitstream(case_id):
    case = CASES[case_id]
    tensors = load_npz(VECTORS / case["input"])
    ours = nnc.encode(tensors, _config_for(case["settings"]))
    theirs = (VECTORS / case["bitstream"]).read_bytes()
    assert len(ours) == len(theirs)
    assert ours == theirs


def test_tca_sequence_decodes_identically():
    seq = MANIFEST["sequences"][0]
    dec = nnc.UpdateDecoder()
    for step in seq["steps"]:
        got = dec.decode_update((VECTORS / step["bitstream"]).read_bytes())
        expected = load_npz(VECTORS / step["decoded"])
        assert list(got) == list(expected)
        for name, exp in expected.items():
            assert got[name].tobytes() == exp.tobytes(), name
            assert _sha(got[name]) == step["sha256"][name]
