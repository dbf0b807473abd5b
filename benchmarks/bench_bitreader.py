"""Should the header bit reader use ``bitstring``? (issue: the design card names it; take it where it fits if it
keeps parse speed within 10 %.)

Reads the same fields two ways, in one process, interleaved over several repeats: nnc's own
:class:`nnc.bitstream.BitReader` and ``bitstring.Reader`` (bitstring 5: ``read_value("u<n>")`` for u(n), the same loop
for the Exp-Golomb ue(k) codes, which bitstring has only for k = 0). The workload is an NDU header's mix:
u(1)/u(5)/u(7)/u(8) fields and ue(1)/ue(7) codes. Prints a table and writes JSON (``--out``). Needs
``pip install bitstring`` (no longer a dependency: this measurement is why).
"""
from __future__ import annotations

import argparse
import json
import random
import time

from nnc.bitstream import BitReader, BitWriter


def _workload(n_fields: int, seed: int = 0):
    rng = random.Random(seed)
    ops, w = [], BitWriter()
    for _ in range(n_fields):
        kind = rng.choice(["u1", "u5", "u7", "u8", "ue1", "ue7"])
        if kind.startswith("ue"):
            k = int(kind[2:])
            v = rng.randrange(0, 5000)
            w.ue(k, v)
            ops.append(("ue", k))
        else:
            n = int(kind[1:])
            w.u(n, rng.randrange(0, 1 << n))
            ops.append(("u", n))
    w.byte_alignment()
    return ops, w.getvalue()


def _nnc(ops, data) -> list[int]:
    r = BitReader(data)
    return [r.u(a) if op == "u" else r.ue(a) for op, a in ops]


def _bitstring(ops, data) -> list[int]:
    import bitstring
    s = bitstring.Reader(bitstring.Bits.from_bytes(data))
    out = []
    for op, a in ops:
        if op == "u":
            out.append(s.read_value(f"u{a}"))
        else:  # ue(k): leading zeros, a 1, then zeros + k bits
            zeros = 0
            while not s.read_value("bool"):
                zeros += 1
            k = a + zeros
            out.append((((1 << zeros) - 1) << a) + (s.read_value(f"u{k}") if k else 0))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/out/bench_bitreader.json")
    a = ap.parse_args(argv)
    ops, data = _workload(a.fields)
    assert _nnc(ops, data) == _bitstring(ops, data), "the two readers disagree"
    best = {"nnc": float("inf"), "bitstring": float("inf")}
    for _ in range(a.repeats):
        for name, fn in (("nnc", _nnc), ("bitstring", _bitstring)):
            t = time.perf_counter()
            fn(ops, data)
            best[name] = min(best[name], time.perf_counter() - t)
    ratio = best["bitstring"] / best["nnc"]
    print(f"{a.fields} header fields ({len(data)} bytes), best of {a.repeats}")
    print("| reader | s | us/field | vs nnc |\n|---|---:|---:|---:|")
    for name in ("nnc", "bitstring"):
        print(f"| {name} | {best[name]:.4f} | {1e6 * best[name] / a.fields:.2f} | {best[name] / best['nnc']:.2f}x |")
    import os
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"fields": a.fields, "bytes": len(data), "seconds": best, "bitstring_over_nnc": ratio}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
