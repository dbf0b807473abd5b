"""nnc.inspect / `nnc info`."""
import json
from pathlib import Path

import nnc
from nnc.cli import main

ROOT = Path(__file__).resolve().parent.parent
V = ROOT / "conformance" / "vectors"


def test_inspect_tree_fields():
    info = nnc.inspect((V / "cbmix_codebook_best.nnc").read_bytes())
    s = info.summary()
    assert s["profile"] == 1 and s["units"] == 6 and s["tensors"] == 3 and s["errors"] == 0
    assert [u.type for u in info.units[:3]] == ["NNR_STR", "NNR_MPS", "NNR_TPL"]
    assert info.units[1].fields["qp_density"] == 2
    assert info.topology_format == "NNR_TPL_UNREC"
    t = {t.name: t for t in info.tensors}
    cb = [x for x in t.values() if x.coding == "codebook"]
    assert cb and cb[0].codebook["size"] >= 1 and cb[0].dtype == "float64"
    w = t["gauss.weight"]
    assert w.shape == [64, 128] and w.dtype == "float32" and w.qp == -32 and w.coding == "dq"
    assert w.step_size == 0.00390625 and w.row_skipping is True
    assert info.units[3].offset + info.units[3].size == info.units[4].offset
    text = info.to_text()
    assert "gauss.weight" in text and "qp -32" in text and "NNR_NDU" in text
    json.dumps(info.to_dict())


def test_inspect_int_and_entry_points():
    info = nnc.inspect(V / "intlike_qp-32_dq.nnc")
    assert any(t.coding == "int" and t.dtype == "int32" and t.qp is None for t in info.tensors)
    info = nnc.inspect(ROOT / "conformance" / "generated" / "nnc_block_scan1_nodq.nnc")
    ndu = info.units[3]
    assert ndu.fields["scan_order"] == 1 and ndu.fields["entry_points"] == 24


def test_inspect_damaged_stream_does_not_raise():
    info = nnc.inspect((ROOT / "conformance" / "negative" / "multiple_violations.nnc").read_bytes())
    assert any(u.type.startswith("reserved") for u in info.units)
    assert info.units[-1].errors


def test_inspect_is_the_function_in_every_import_order():
    import nnc.describe as mod
    assert nnc.inspect is mod.inspect
    assert mod.inspect(V / "tiny_qp-32_dq.nnc").summary()["tensors"] == 5


def test_cli_info(capsys, tmp_path):
    assert main(["info", str(V / "tiny_qp-32_dq.nnc")]) == 0
    assert "one_by_one" in capsys.readouterr().out
    assert main(["info", "--json", str(V / "tiny_qp-32_dq.nnc")]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["tensors"] == 5
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff\xff")
    assert main(["info", str(junk)]) == 2
