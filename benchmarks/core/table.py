"""Collect the JSON lines of ``benchmarks/core/run.sh`` (one per DQ setting), print them as a table and write
them to a JSON file.

    ... | python benchmarks/core/table.py OUT.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [  # (key in the "core" object, heading, format)
    ("elements", "elements", "{:,}"),
    ("bytes", "bytes", "{:,}"),
    ("payload_fnv1a", "payload hash", "{}"),
    ("encode_s", "encode s", "{:.3f}"),
    ("decode_s", "decode s", "{:.3f}"),
    ("context_bins", "context bins", "{:,}"),
    ("bypass_bins", "bypass bins", "{:,}"),
    ("replay_decode_s", "engine replay s", "{:.3f}"),
    ("replay_decode_branchfree_s", "replay branch-free s", "{:.3f}"),
    ("mps_chain_ns_per_bin_8ctx", "MPS chain ns/bin (8 ctx)", "{:.2f}"),
    ("mps_chain_ns_per_bin_1ctx", "MPS chain ns/bin (1 ctx)", "{:.2f}"),
]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rows = [json.loads(line) for line in sys.stdin if line.strip()]
    if not rows:
        sys.exit("table.py: no results (the harness failed)")
    print("| model | qp | dq | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    print("|---|---:|---|" + "---:|" * len(COLUMNS))
    for r in rows:
        core = r["core"]
        cells = [fmt.format(core[k]) for k, _, fmt in COLUMNS]
        print(f"| {r['model']} | {r['qp']} | {r['dq']} | " + " | ".join(cells) + " |")
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"(written to {out})")


if __name__ == "__main__":
    main()
