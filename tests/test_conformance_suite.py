"""The conformance suite (conformance/), the interop matrix and the generated documentation."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from nnc.cli import main
from nnc.conformance.suite import run_suite

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "conformance"


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_suite_passes_for_nnc():
    res = run_suite(SUITE, impl="nnc")
    assert res.ok, res.to_text()
    kinds = {r.kind for r in res.results}
    assert {"positive", "negative"} <= kinds
    counts = res.counts()
    assert counts["fail"] == 0 and counts["pass"] >= 60
    groups = {r.group for r in res.results}
    assert groups == {"vectors", "generated", "negative"}


def test_manifests_are_complete():
    for group in ("vectors", "generated", "negative"):
        man = json.loads((SUITE / group / "manifest.json").read_text())
        for c in man["cases"]:
            assert (SUITE / group / c["bitstream"]).exists(), c["id"]
            if group == "negative":
                assert c["expected"] and all({"code", "unit_index"} <= set(e) for e in c["expected"])
            else:
                assert c["arrays"] and all("sha256" in a for a in c["arrays"].values())
                assert "settings" in c
    gen = json.loads((SUITE / "generated" / "manifest.json").read_text())
    assert {c["producer"] for c in gen["cases"]} == {"reference", "nnc"}


def test_negative_generator_is_reproducible(tmp_path):
    mod = _tool("make_negative_vectors")
    assert mod.main(["--out", str(tmp_path)]) == 0
    ours = json.loads((SUITE / "negative" / "manifest.json").read_text())
    fresh = json.loads((tmp_path / "manifest.json").read_text())
    assert fresh == ours
    for c in ours["cases"]:
        assert (tmp_path / c["bitstream"]).read_bytes() == (SUITE / "negative" / c["bitstream"]).read_bytes()


def test_cli_conform(capsys):
    assert main(["conform", str(SUITE / "negative")]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "entry_point_bit_offset" in out
    assert main(["conform", str(SUITE / "negative"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_docs_generated_blocks_up_to_date():
    mod = _tool("gen_docs")
    text = (ROOT / "docs" / "bitstream.md").read_text()
    assert mod.stale_blocks(text) == [], "docs/bitstream.md is stale: run python tools/gen_docs.py"
    assert "$ nnc check mtcnn_pnet.nnc" in text and "$ nnc info mtcnn_pnet.nnc" in text


@pytest.mark.reference
def test_suite_passes_for_reference(reference):
    res = run_suite(SUITE, impl="reference", reference=reference)
    assert res.ok, res.to_text()


@pytest.mark.reference
def test_interop_matrix(reference, capsys):
    mod = _tool("interop_matrix")
    rows = mod.interop_matrix(SUITE)
    table = mod.format_table(rows)
    print("\n" + table)
    assert not [r for r in rows if r.failed], table
    assert sum(r.ref_to_nnc == "ok" for r in rows) >= 20
    assert sum(r.nnc_to_ref == "ok" for r in rows) >= 20
    assert all(r.identical in ("yes", "n/a") for r in rows), table
