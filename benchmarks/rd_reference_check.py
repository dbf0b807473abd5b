"""Check that the reference points of ``bench_rd.py --smooth --no-reference`` are NNCodec's own bytes: for each
model of the five-architecture table, a spread of its smooth qp grid (both ends and the middle, DQ on and off) is
encoded by NNCodec 2.1.3 (tests/support/reference.py) and by nnc with the same settings, exactly as bench_rd.py
builds them (``bench_rd.reference_inputs``: tiny float tensors at qp -128, integers with their zero points,
no dtype signalling), and the bytes
are compared. Prints a table and writes JSON.

    python benchmarks/rd_reference_check.py [--models ...] [--json benchmarks/results/rd_reference_check.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench_rd as B  # noqa: E402

import nnc  # noqa: E402


def points(grid: list) -> list:
    qps = sorted({grid[0], grid[len(grid) // 2], grid[-1]}, reverse=True)
    return [(qp, dq) for qp in qps for dq in (True, False)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="silero_vad,silero_int8,ocr_rec,ocr_det,minilm")
    ap.add_argument("--json", default=os.path.join(B.__file__.rsplit("/", 1)[0], "results", "rd_reference_check.json"))
    a = ap.parse_args(argv)
    from tests.support import reference
    if not reference.available():
        print("reference venv not found (tools/setup_reference.sh)", file=sys.stderr)
        return 2
    paths = B.R.model_paths()
    p = B._int8_model_path()
    if p:
        paths["silero_int8"] = p
    rows = []
    print("| model | qp | DQ | NNCodec bytes | nnc bytes | identical |\n|---|---:|---|---:|---:|---|")
    for key in a.models.split(","):
        if key not in paths:
            print(f"{key}: not installed, skipped", file=sys.stderr)
            continue
        task = B.Task(key, paths[key])
        tiny, ref_tensors, ref32 = B.reference_inputs(task, {k: np.asarray(v) for k, v in task.tensors.items()})
        grid = points(B.SMOOTH_QP_GRID[key])
        settings = [{"qp": qp, "dq": dq, "qp_per_tensor": tiny} for qp, dq in grid]
        t0 = time.perf_counter()
        theirs = reference.encode_many([(ref_tensors, s) for s in settings])
        for (qp, dq), ref_bs in zip(grid, theirs):
            ours = nnc.encode(ref32, nnc.EncoderConfig(qp=qp, dq=dq, qp_per_tensor=tiny, signal_dtype=False))
            row = {"model": key, "qp": qp, "dq": dq, "reference_bytes": len(ref_bs), "nnc_bytes": len(ours),
                   "identical": ours == ref_bs, "sha256": hashlib.sha256(ref_bs).hexdigest()[:16]}
            rows.append(row)
            print(f"| {key} | {qp} | {int(dq)} | {len(ref_bs)} | {len(ours)} | {'yes' if row['identical'] else 'NO'} |",
                  flush=True)
        print(f"{key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"rows": rows, "all_identical": all(r["identical"] for r in rows)}, f, indent=1)
    n = sum(r["identical"] for r in rows)
    print(f"\n{n} of {len(rows)} settings byte-identical; JSON: {a.json}")
    return 0 if n == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
