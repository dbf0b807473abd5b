"""conformance/tools/vectors (tools/make_tool_vectors.py, produced by NNCodec 2.1.3): nnc decodes each to the
reference's arrays and re-encodes each from its input and settings to the same bytes."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import nnc
from conftest import load_npz
from support.refsettings import config_from_settings

TOOLS_DIR = Path(__file__).resolve().parent.parent / "conformance" / "tools" / "vectors"
MANIFEST = json.loads((TOOLS_DIR / "manifest.json").read_text())
CASES = {c["id"]: c for c in MANIFEST["cases"]}


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_tool_vector_decodes_and_reencodes(case_id):
    case = CASES[case_id]
    data = (TOOLS_DIR / case["bitstream"]).read_bytes()
    got = nnc.decode(data)
    assert sorted(got) == sorted(case["arrays"])
    for name, meta in case["arrays"].items():
        assert hashlib.sha256(np.ascontiguousarray(got[name]).tobytes()).hexdigest() == meta["sha256"], name
    assert nnc.encode(load_npz(TOOLS_DIR / case["input"]), config_from_settings(case["settings"])) == data
