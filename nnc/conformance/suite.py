"""The conformance suite runner behind ``nnc conform SUITE`` (and ``tools/conform.py --impl nnc|reference|both``).

A suite folder (``conformance/`` in the repository) holds sub-folders with a ``manifest.json`` each:

* positive vectors (``vectors/`` from the reference, ``generated/`` from tools/make_vectors.py): each case names a
  bitstream and the sha256 (plus dtype and shape) of every decoded array; ``sequences`` list incremental
  bitstreams decoded one after the other;
* negative vectors (``negative/``, cases with an ``expected`` list): broken bitstreams and the violations
  :func:`nnc.check` must report.

For ``impl="nnc"`` a positive case passes when :func:`nnc.check` finds no error and :func:`nnc.decode` reproduces
every array bit-exactly; a negative case passes when the check reports every expected violation. For
``impl="reference"`` the positive bitstreams are decoded by NNCodec (a driver passed as ``reference=``), negative
vectors are not applicable.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..codec import decode
from ..incremental import UpdateDecoder
from .checker import check

__all__ = ["CaseResult", "SuiteResult", "run_suite", "load_suite"]


@dataclass
class CaseResult:
    id: str
    group: str
    kind: str           # "positive" | "sequence" | "negative"
    impl: str           # "nnc" | "reference"
    status: str         # "pass" | "fail" | "skip"
    detail: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SuiteResult:
    path: str
    results: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and not any(r.status == "fail" for r in self.results)

    def counts(self) -> dict:
        c: dict[str, int] = {"pass": 0, "fail": 0, "skip": 0}
        for r in self.results:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "counts": self.counts(),
                "results": [r.to_dict() for r in self.results]}

    def to_text(self) -> str:
        w = max([len(f"{r.group}/{r.id}") for r in self.results] + [4])
        lines = [f"{'case':<{w}}  {'kind':<8}  {'impl':<9}  result  detail", "-" * (w + 40)]
        for r in self.results:
            lines.append(f"{r.group + '/' + r.id:<{w}}  {r.kind:<8}  {r.impl:<9}  {r.status.upper():<6}  {r.detail}")
        c = self.counts()
        lines.append("-" * (w + 40))
        lines.append(f"{'PASSED' if self.ok else 'FAILED'}: {c['pass']} pass, {c['fail']} fail, {c['skip']} skip")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def load_suite(path) -> list[tuple[str, Path, dict]]:
    """``(group, folder, manifest)`` for every manifest.json in ``path`` or its direct sub-folders."""
    root = Path(path)
    found = []
    if (root / "manifest.json").exists():
        found.append((root.name, root, json.loads((root / "manifest.json").read_text())))
    for sub in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        m = sub / "manifest.json"
        if m.exists():
            found.append((sub.name, sub, json.loads(m.read_text())))
    return found


def _compare(got: dict, arrays: dict) -> str | None:
    """None if ``got`` matches the manifest's arrays (names, order-independent; dtype, shape, sha256)."""
    if set(got) != set(arrays):
        return f"tensor names differ: got {sorted(got)}, expected {sorted(arrays)}"
    for name, exp in arrays.items():
        a = np.asarray(got[name])
        want = exp["sha256"] if isinstance(exp, dict) else exp
        if isinstance(exp, dict):
            if "dtype" in exp and str(a.dtype) != exp["dtype"]:
                return f"{name}: dtype {a.dtype}, expected {exp['dtype']}"
            if "shape" in exp and list(a.shape) != list(exp["shape"]):
                return f"{name}: shape {list(a.shape)}, expected {exp['shape']}"
        if _sha(a) != want:
            return f"{name}: decoded values differ (sha256)"
    return None


def _nnc_positive(data: bytes, arrays: dict) -> tuple[str, str]:
    rep = check(data)
    if not rep.ok:
        return "fail", f"check: {rep.errors[0]}"
    try:
        got = decode(data)
    except Exception as e:  # noqa: BLE001 - any failure is a failed case
        return "fail", f"decode: {type(e).__name__}: {e}"
    diff = _compare(got, arrays)
    note = f"{len(arrays)} arrays bit-exact" + (f", {len(rep.warnings)} warning(s)" if rep.warnings else "")
    return ("fail", diff) if diff else ("pass", note)


def _nnc_sequence(folder: Path, seq: dict) -> tuple[str, str]:
    try:
        dec = UpdateDecoder()
    except (AttributeError, ImportError) as e:
        return "skip", f"nnc.UpdateDecoder not available ({e})"
    for i, step in enumerate(seq["steps"]):
        data = (folder / step["bitstream"]).read_bytes()
        rep = check(data)
        if not rep.ok:
            return "fail", f"step {i}: check: {rep.errors[0]}"
        try:
            got = dec.decode_update(data)
        except Exception as e:  # noqa: BLE001
            return "fail", f"step {i}: {type(e).__name__}: {e}"
        diff = _compare(got, step["sha256"])
        if diff:
            return "fail", f"step {i}: {diff}"
    return "pass", f"{len(seq['steps'])} steps bit-exact"


def _nnc_negative(data: bytes, expected: list[dict]) -> tuple[str, str]:
    rep = check(data)
    if rep.ok:
        return "fail", "check reports the bitstream as conforming"
    missing = [e for e in expected if not any(all(getattr(v, k) == x for k, x in e.items()) for v in rep.errors)]
    if missing:
        return "fail", f"not reported: {missing}; got {[str(v) for v in rep.errors[:3]]}"
    return "pass", ", ".join(sorted({e["code"] for e in expected}))


def run_suite(path="conformance", impl: str = "nnc", *, reference=None) -> SuiteResult:
    """Run every vector of the suite at ``path`` with ``impl`` ("nnc", "reference" or "both").

    ``reference`` is the other implementation for "reference"/"both": an object with ``available()``,
    ``decode_many(bitstreams, strict=False)`` and ``decode_sequence(bitstreams)`` (the repository's
    ``tests/support/reference.py`` drives NNCodec that way; nnc itself never runs the reference).
    """
    if impl not in ("nnc", "reference", "both"):
        raise ValueError(f"impl must be 'nnc', 'reference' or 'both', got {impl!r}")
    if impl != "nnc" and reference is None:
        raise ValueError(f"impl={impl!r} needs reference=<driver> (see tests/support/reference.py)")
    impls = ["nnc", "reference"] if impl == "both" else [impl]
    res = SuiteResult(str(path))
    groups = load_suite(path)
    if not groups:
        raise FileNotFoundError(f"no manifest.json in {path} or its sub-folders")
    for im in impls:
        if im == "nnc":
            _run_nnc(groups, res)
        else:
            _run_reference(groups, res, reference)
    return res


def _run_nnc(groups, res: SuiteResult) -> None:
    for group, folder, man in groups:
        for c in man.get("cases", []):
            data = (folder / c["bitstream"]).read_bytes()
            if "expected" in c:
                st, d = _nnc_negative(data, c["expected"])
                res.results.append(CaseResult(c["id"], group, "negative", "nnc", st, d))
            else:
                st, d = _nnc_positive(data, c["arrays"])
                res.results.append(CaseResult(c["id"], group, "positive", "nnc", st, d))
        for s in man.get("sequences", []):
            st, d = _nnc_sequence(folder, s)
            res.results.append(CaseResult(s["id"], group, "sequence", "nnc", st, d))


def _run_reference(groups, res: SuiteResult, reference) -> None:
    if not reference.available():
        for group, _, man in groups:
            for c in man.get("cases", []) + man.get("sequences", []):
                res.results.append(CaseResult(c["id"], group, "positive", "reference", "skip",
                                              "reference venv not installed (tools/setup_reference.sh)"))
        return
    jobs = []
    for group, folder, man in groups:
        for c in man.get("cases", []):
            if "expected" in c:
                res.results.append(CaseResult(c["id"], group, "negative", "reference", "skip",
                                              "negative vectors test nnc.check"))
            else:
                jobs.append((group, folder, c))
    decoded = reference.decode_many([(f / c["bitstream"]).read_bytes() for _, f, c in jobs], strict=False)
    for (group, _, c), got in zip(jobs, decoded):
        if isinstance(got, Exception):
            res.results.append(CaseResult(c["id"], group, "positive", "reference", "fail", str(got)[:200]))
            continue
        diff = _compare(got, c.get("reference_arrays", c["arrays"]))
        note = f" ({c['reference_note']})" if "reference_arrays" in c else ""
        res.results.append(CaseResult(c["id"], group, "positive", "reference", "fail" if diff else "pass",
                                      (diff or f"{len(c['arrays'])} arrays bit-exact") + note))
    for group, folder, man in groups:
        for s in man.get("sequences", []):
            try:
                outs = reference.decode_sequence([(folder / st["bitstream"]).read_bytes() for st in s["steps"]])
                diff = next((f"step {i}: {d}" for i, (o, st) in enumerate(zip(outs, s["steps"]))
                             if (d := _compare(o, st["sha256"]))), None)
            except Exception as e:  # noqa: BLE001
                diff = f"{type(e).__name__}: {str(e)[:200]}"
            res.results.append(CaseResult(s["id"], group, "sequence", "reference", "fail" if diff else "pass",
                                          diff or f"{len(s['steps'])} steps bit-exact"))
