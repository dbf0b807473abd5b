"""nnc.check / `nnc check`: every negative vector reports its exact violation; positives are conforming."""
import json
from pathlib import Path

import pytest

import nnc
from nnc.cli import main
from nnc.conformance.checker import CODES, Report, Violation

ROOT = Path(__file__).resolve().parent.parent
NEG = ROOT / "conformance" / "negative"
NEG_MANIFEST = json.loads((NEG / "manifest.json").read_text())
NEG_CASES = {c["id"]: c for c in NEG_MANIFEST["cases"]}
POSITIVE = sorted((ROOT / "conformance" / "vectors").glob("*.nnc")) + \
    sorted((ROOT / "conformance" / "vectors" / "tca_seq").glob("*.nnc")) + \
    sorted((ROOT / "conformance" / "generated").glob("*.nnc"))


def _matches(v: Violation, exp: dict) -> bool:
    return all(getattr(v, k) == x for k, x in exp.items())


@pytest.mark.parametrize("case_id", sorted(NEG_CASES))
def test_negative_vector_reports_exact_violation(case_id):
    case = NEG_CASES[case_id]
    data = (NEG / case["bitstream"]).read_bytes()
    rep = nnc.check(data)
    assert not rep.ok
    for exp in case["expected"]:
        assert exp["code"] in CODES
        hits = [v for v in rep.errors if _matches(v, exp)]
        assert hits, f"{exp} not reported; got:\n{rep.to_text()}"
        v = hits[0]
        assert v.unit_index is not None and v.byte_offset is not None and v.syntax_path, v
    # the first listed violation is the first error the check reports for that unit
    first = case["expected"][0]
    same_unit = [v for v in rep.errors if v.unit_index == first["unit_index"]]
    assert _matches(same_unit[0], first) or len(case["expected"]) > 1


@pytest.mark.parametrize("path", POSITIVE, ids=lambda p: p.name if p.parent.name != "tca_seq" else "tca/" + p.name)
def test_positive_vectors_conform(path):
    rep = nnc.check(path.read_bytes())
    assert rep.ok, rep.to_text()
    assert rep.readable
    assert all(v.severity == "warning" for v in rep.violations)


def test_all_payloads_verified():
    data = (ROOT / "conformance" / "vectors" / "mtcnn_pnet_qp-38_dq.nnc").read_bytes()
    rep = nnc.check(data)
    assert rep.ok and not rep.violations
    assert rep.payloads_verified == 13


def test_check_continues_after_broken_units():
    rep = nnc.check((NEG / "reserved_unit_type.nnc").read_bytes())
    assert [v.code for v in rep.errors] == ["RESERVED_UNIT_TYPE"]
    assert rep.payloads_verified == 5  # every NDU after the reserved unit was still decoded
    rep = nnc.check((NEG / "multiple_violations.nnc").read_bytes())
    assert {v.code for v in rep.errors} == {"RESERVED_BITS_NONZERO", "RESERVED_UNIT_TYPE", "TRAILING_BYTES"}


def test_incremental_update_with_tca_is_a_warning_not_an_error():
    rep = nnc.check((ROOT / "conformance" / "vectors" / "tca_seq" / "001.nnc").read_bytes())
    assert rep.ok
    assert [v.code for v in rep.warnings] == ["PAYLOAD_NOT_VERIFIED"]


def test_raise_on_error_and_report_shape(tmp_path):
    bad = (NEG / "trailing_garbage.nnc").read_bytes()
    with pytest.raises(nnc.ConformanceError) as ei:
        nnc.check(bad, raise_on_error=True)
    assert isinstance(ei.value.report, Report)
    assert "TRAILING_BYTES" in str(ei.value)
    good = POSITIVE[0].read_bytes()
    assert nnc.check(good, raise_on_error=True).ok
    assert nnc.check(POSITIVE[0]).ok            # a path works too
    d = nnc.check(bad).to_dict()
    json.dumps(d)
    assert d["ok"] is False and d["violations"][0]["code"] == "TRAILING_BYTES"
    assert "NOT CONFORMING" in nnc.check(bad).to_text()


def test_empty_and_garbage_are_unreadable():
    for data in (b"", b"hello world", b"\x00"):
        rep = nnc.check(data)
        assert not rep.ok and not rep.readable, data


def test_header_only_check():
    rep = nnc.check((NEG / "ndu_unit_size_too_large.nnc").read_bytes(), verify_payloads=False)
    assert rep.ok and rep.payloads_verified == 0


def test_cli_check_exit_codes(tmp_path, capsys):
    assert main(["check", str(POSITIVE[0])]) == 0
    assert "CONFORMING" in capsys.readouterr().out
    assert main(["check", str(NEG / "mps_after_ndu.nnc")]) == 1
    out = capsys.readouterr().out
    assert "MPS_MISPLACED" in out and "MPS_MISSING" in out
    assert main(["check", "--json", str(NEG / "reserved_scan_order.nnc")]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["violations"][0]["code"] == "RESERVED_SCAN_ORDER"
    junk = tmp_path / "junk.nnc"
    junk.write_bytes(b"not an nnc file at all")
    assert main(["check", str(junk)]) == 2
    assert main(["check", str(tmp_path / "missing.nnc")]) == 2
