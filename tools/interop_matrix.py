#!/usr/bin/env python3
"""Cross-implementation matrix: nnc <-> NNCodec 2.1.3 for every positive conformance vector.

For each positive case of conformance/vectors and conformance/generated:

* ``ref->nnc``: the reference's bitstream decoded by nnc equals the reference's own decode (manifest hashes);
* ``nnc->ref``: nnc encodes the case's input with the case's settings, NNCodec decodes that bitstream, and the
  arrays equal nnc's own decode of it (for nnc-produced vectors: the stored bitstream, checked against the
  manifest);
* ``bytes``: nnc's bitstream is byte-identical to the reference's.

"n/a" marks a direction the case cannot exercise (an encoder tool nnc does not have, e.g. codebook or
bit-depth mode; syntax the reference's API cannot be asked to write). Needs the reference venv
(tools/setup_reference.sh). Usage: python tools/interop_matrix.py [--suite conformance] [--json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nnc  # noqa: E402
from nnc.conformance.suite import _compare  # noqa: E402


@dataclass
class Row:
    case: str
    producer: str
    ref_to_nnc: str
    nnc_to_ref: str
    identical: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return "FAIL" in (self.ref_to_nnc, self.nnc_to_ref)


def _load_npz(p: Path) -> dict:
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _nnc_config(s: dict):
    """EncoderConfig for reference-style settings, or None when nnc has no equivalent encoder tool."""
    if s.get("approx_method", "uniform") != "uniform" or s.get("codebook_mode") or s.get("bitdepth") \
            or s.get("opt_qp") or s.get("sparsity"):
        return None
    return nnc.EncoderConfig(qp=s.get("qp", -38), qp_density=s.get("qp_density", 2),
                             nonweight_qp=s.get("nonweight_qp", -75), dq=s.get("use_dq", s.get("dq", True)),
                             row_skipping=s.get("row_skipping", True), param_opt=s.get("param_opt", True))


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(np.asarray(a[k]).dtype == np.asarray(b[k]).dtype and
                                    np.asarray(a[k]).shape == np.asarray(b[k]).shape and
                                    np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


def interop_matrix(suite="conformance") -> list[Row]:
    from tests.support import reference
    if not reference.available():
        raise reference.ReferenceUnavailable("NNCodec reference venv not found (tools/setup_reference.sh)")
    suite = Path(suite)
    cases = []
    for group in ("vectors", "generated"):
        m = suite / group / "manifest.json"
        if m.exists():
            for c in json.loads(m.read_text())["cases"]:
                cases.append((group, suite / group, c))
    rows: list[Row] = []
    to_ref: list[bytes] = []       # bitstreams for the reference to decode
    plan = []
    for group, folder, c in cases:
        producer = c.get("producer", "reference")
        stored = (folder / c["bitstream"]).read_bytes()
        row = Row(f"{group}/{c['id']}", producer, "n/a", "n/a", "n/a")
        if producer == "reference":
            try:
                diff = _compare(nnc.decode(stored), c["arrays"])
            except Exception as e:  # noqa: BLE001
                diff = f"{type(e).__name__}: {e}"
            row.ref_to_nnc = "FAIL" if diff else "ok"
            row.detail = diff or ""
            cfg = _nnc_config(c["settings"])
            if cfg is not None:
                # the reference driver hands NNCodec float32/int32 arrays; give nnc the same input
                ins = {k: v.astype(np.float32) if v.dtype.kind == "f" else v.astype(np.int32)
                       for k, v in _load_npz(folder / c["input"]).items()}
                ours = nnc.encode(ins, cfg)
                row.identical = "yes" if ours == stored else "no"
                plan.append((row, ours, None))
                to_ref.append(ours)
        else:
            plan.append((row, stored, c.get("reference_arrays", c["arrays"])))
            to_ref.append(stored)
        rows.append(row)
    decoded = reference.decode_many(to_ref, strict=False)
    for (row, bs, expected), got in zip(plan, decoded):
        if isinstance(got, Exception):
            row.nnc_to_ref, row.detail = "FAIL", str(got)[:160]
            continue
        if expected is None:
            ok = _same(got, nnc.decode(bs))
        else:
            ok = _compare(got, expected) is None
        row.nnc_to_ref = "ok" if ok else "FAIL"
        if not ok:
            row.detail = "reference decodes nnc's bitstream differently"
    return rows


def format_table(rows: list[Row]) -> str:
    w = max(len(r.case) for r in rows)
    lines = [f"| {'vector':<{w}} | producer  | ref->nnc | nnc->ref | bytes identical |",
             f"|{'-' * (w + 2)}|-----------|----------|----------|-----------------|"]
    for r in rows:
        lines.append(f"| {r.case:<{w}} | {r.producer:<9} | {r.ref_to_nnc:<8} | {r.nnc_to_ref:<8} | "
                     f"{r.identical:<15} |" + (f" {r.detail}" if r.detail else ""))
    fails = sum(r.failed for r in rows)
    both = sum(r.ref_to_nnc == "ok" for r in rows) + sum(r.nnc_to_ref == "ok" for r in rows)
    ident = sum(r.identical == "yes" for r in rows)
    comparable = sum(r.identical != "n/a" for r in rows)
    lines.append(f"\n{len(rows)} vectors: {both} directions ok, {fails} failing, byte-identical encodes "
                 f"{ident}/{comparable}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default=str(ROOT / "conformance"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rows = interop_matrix(a.suite)
    print(json.dumps([r.__dict__ for r in rows], indent=1) if a.json else format_table(rows))
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
