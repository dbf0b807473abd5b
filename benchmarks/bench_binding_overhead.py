"""Per-call overhead of the Python face of the CABAC core (``nnc.deepcabac``): one-element tensors.

A bitstream of many tiny NDUs (e.g. 65,536 one-element NDUs) is dominated by what ``decode_payload`` /
``encode_payload`` cost around the C++ call, not by the coding itself. This times both for a one-element tensor
(CPU seconds, ``time.process_time``, best of ``--repeats`` batches of ``--number`` calls).

``--baseline DIR`` also times another checkout of the package (e.g. a ``git worktree`` of main with its built
``_core``): each side runs in its own subprocess (``PYTHONPATH=<tree>``), alternating, ``--rounds`` times, and the
table gives the ratio this tree / baseline of the best times. Prints a table and writes JSON (``--out``).

    python benchmarks/bench_binding_overhead.py --baseline /tmp/base --out benchmarks/results/binding_overhead.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
TREE = HERE.parents[1]


def _child(number: int, repeats: int) -> dict:
    import numpy as np

    import nnc.deepcabac as dc

    coding = dc.TensorCoding(shape=(1,), qp_bits=8)
    q = np.array([3], dtype=np.int32)
    payload, _ = dc.encode_payload([(q, coding, 0, dc.EncodeOptions())])
    assert int(dc.decode_payload(payload, [coding]).levels[0][0]) == 3
    items = [(q, coding, 0, dc.EncodeOptions())]

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            for _ in range(number):
                fn()
            times.append((time.process_time() - t0) / number)
        return min(times)

    view = memoryview(b"hdr" + payload)[3:]  # what nnc.decode passes: the NDU payload as a slice of the stream
    return {
        "decode_payload_us": 1e6 * best(lambda: dc.decode_payload(payload, [coding], threads=1)),
        "decode_memoryview_us": 1e6 * best(lambda: dc.decode_payload(view, [coding], threads=1)),
        "encode_payload_us": 1e6 * best(lambda: dc.encode_payload(items)),
        "module": dc.__file__,
    }


def _run_tree(tree: Path, number: int, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(HERE), "--child", "--number", str(number), "--repeats", str(repeats)],
                         cwd=str(tree), env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=20000, help="calls per batch")
    ap.add_argument("--repeats", type=int, default=5, help="batches per process (best is kept)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating subprocess rounds per tree")
    ap.add_argument("--baseline", type=Path, help="another checkout of the package to compare with")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.number, a.repeats)))
        return 0
    trees = {"this": TREE} if a.baseline is None else {"this": TREE, "baseline": a.baseline.resolve()}
    results: dict[str, list[dict]] = {k: [] for k in trees}
    for _ in range(a.rounds):
        for k, tree in trees.items():
            results[k].append(_run_tree(tree, a.number, a.repeats))
    rows = {}
    metrics = ("decode_payload_us", "decode_memoryview_us", "encode_payload_us")
    for k, runs in results.items():
        rows[k] = {m: min(r[m] for r in runs) for m in metrics}
        rows[k]["module"] = runs[0]["module"]
    print(f"{'tree':<10} {'decode(bytes) us':>17} {'decode(memoryview) us':>22} {'encode us':>10}  module")
    for k, r in rows.items():
        print(f"{k:<10} {r[metrics[0]]:>17.2f} {r[metrics[1]]:>22.2f} {r[metrics[2]]:>10.2f}  {r['module']}")
    report = {"number": a.number, "repeats": a.repeats, "rounds": a.rounds, "rows": rows}
    if "baseline" in rows:
        ratio = {m: rows["this"][m] / rows["baseline"][m] for m in metrics}
        print(f"{'ratio':<10} {ratio[metrics[0]]:>17.3f} {ratio[metrics[1]]:>22.3f} {ratio[metrics[2]]:>10.3f}"
              "  this / baseline")
        report["ratio_this_over_baseline"] = ratio
    if a.out:
        a.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
