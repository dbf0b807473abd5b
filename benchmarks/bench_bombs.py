"""Every hostile input of benchmarks/bombs.py against every entry point, each in a fresh interpreter.

For each (bomb, entry point) the child reports: input size, peak RSS (getrusage ru_maxrss of the child), CPU
time (user + system, after imports), and the outcome (the NNCError class, "ok", or a crash). The limits are
``DecoderConfig.strict(max_total_bytes=LIMIT)`` (``--limit``, default 1 GiB); the CLI rows run
``nnc info/check/decode FILE --max-memory LIMIT --strict``.

Criteria checked and printed per row (issue 15, item 4): peak RSS <= 1.25 x LIMIT + 100 MB, and CPU time
<= 2 s per MB of input (or, for inputs under 1 MB, <= 2 s); rows that break one are marked. ``--root`` runs
another checkout (e.g. /work/wt/base) for a before/after comparison; the bombs are always built by this
checkout's writer.

    python benchmarks/bench_bombs.py                     # table + benchmarks/results/bombs.json
    python benchmarks/bench_bombs.py --root /work/wt/base --json benchmarks/results/bombs_base.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bombs  # noqa: E402

ENTRIES = ["decode", "inspect", "check", "cli-info", "cli-check", "cli-decode"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=1 << 30, help="max_total_bytes (strict())")
    ap.add_argument("--root", default=None, help="checkout to run (default: the nnc on PYTHONPATH)")
    ap.add_argument("--bombs", nargs="*", default=None, help="subset of bomb names")
    ap.add_argument("--entries", nargs="*", default=ENTRIES)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--compare", default=None,
                    help="another checkout (e.g. the pristine tree) run on the same input right after each row: "
                         "the row then also reports its CPU and the ratio (contention on a shared machine "
                         "inflates both runs alike)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every row this many times (each tree alternately) and keep the least CPU and the "
                         "largest peak RSS: the first touch of hundreds of MB of fresh memory costs 0.2-2.4 s of "
                         "system time on this VM depending on what the kernel must reclaim first")
    ap.add_argument("--json", default=str(bombs.ROOT / "benchmarks" / "results" / "bombs.json"))
    a = ap.parse_args(argv)
    names = a.bombs or list(bombs.BITSTREAM_BOMBS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            build, desc = bombs.BITSTREAM_BOMBS[name]
            t0 = time.perf_counter()
            try:
                data = build(a.limit) if name.startswith(("amplify", "many_tensors")) else build()
            except TypeError:
                data = build()
            path = Path(tmp) / f"{name}.nnc"
            path.write_bytes(data)
            for entry in a.entries:
                runs, others = [], []
                for _ in range(max(1, a.repeat)):
                    runs.append(bombs.run_child(path, entry, a.limit, True, a.timeout, a.root))
                    if a.compare:
                        others.append(bombs.run_child(path, entry, a.limit, True, a.timeout, a.compare))
                r = _least_cpu(runs)
                rss = r.get("peak_rss")
                cpu = r.get("cpu_s")
                mb = len(data) / bombs.MB
                rss_ok = rss is not None and rss <= 1.25 * a.limit + 100 * bombs.MB
                cpu_ok = cpu is not None and cpu <= 2.0 * max(mb, 1.0)
                row = {"bomb": name, "what": desc, "entry": entry, "input_bytes": len(data), "limit": a.limit,
                       "peak_rss": rss, "baseline_rss": r.get("baseline_rss"), "cpu_s": cpu,
                       "calib_s": r.get("calib_s"),
                       "outcome": r.get("outcome"), "message": r.get("message") or r.get("result"),
                       "rss_ok": rss_ok, "cpu_ok": cpu_ok, "build_s": time.perf_counter() - t0}
                if a.compare:
                    c = _least_cpu(others)
                    row["compare_cpu_s"] = c.get("cpu_s")
                    row["compare_calib_s"] = c.get("calib_s")
                    row["compare_outcome"] = c.get("outcome")
                    if cpu is not None and c.get("cpu_s"):
                        row["ratio"] = cpu / c["cpu_s"]
                rows.append(row)
                print(_fmt(row), flush=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"root": a.root or str(bombs.ROOT), "compare": a.compare, "limit": a.limit,
                                        "repeat": a.repeat,
                                        "python": sys.version.split()[0], "rows": rows}, indent=1))
    print()
    print(table(rows))
    bad = [r for r in rows if not (r["rss_ok"] and r["cpu_ok"]) or str(r["outcome"]).startswith(("CRASH", "DIED",
                                                                                                   "TIMEOUT"))]
    print(f"\n{len(rows)} runs, {len(bad)} breaking a criterion or crashing; JSON: {a.json}")
    return 0


def _least_cpu(runs: list) -> dict:
    """The run with the least CPU (its outcome), with the largest peak RSS of all runs."""
    best = min(runs, key=lambda r: r.get("cpu_s") if r.get("cpu_s") is not None else float("inf"))
    rss = [r["peak_rss"] for r in runs if r.get("peak_rss") is not None]
    return dict(best, peak_rss=max(rss) if rss else best.get("peak_rss"), runs=len(runs))


def _fmt(r) -> str:
    rss = "-" if r["peak_rss"] is None else f"{r['peak_rss'] / bombs.MB:.0f} MB"
    cpu = "-" if r["cpu_s"] is None else f"{r['cpu_s']:.2f} s"
    flag = "" if r["rss_ok"] and r["cpu_ok"] else "  <-- " + ", ".join(
        x for x, ok in (("RSS", r["rss_ok"]), ("CPU", r["cpu_ok"])) if not ok)
    cmp = f"  (compare: {r['compare_cpu_s']:.2f} s, ratio {r['ratio']:.2f})" if r.get("ratio") is not None else ""
    cal = f"  calib {r['calib_s']:.3f} s" if r.get("calib_s") is not None else ""
    return (f"{r['bomb']:<22} {r['entry']:<10} {r['input_bytes']:>9} B  {rss:>8}  {cpu:>8}  {r['outcome']}{flag}"
            f"{cal}{cmp}")


def table(rows) -> str:
    cmp = any(r.get("ratio") is not None for r in rows)
    out = ["| attack | entry point | input | peak RSS | CPU | outcome | criteria |"
           + (" compare CPU | ratio |" if cmp else ""),
           "|---|---|---:|---:|---:|---|---|" + ("---:|---:|" if cmp else "")]
    for r in rows:
        rss = "-" if r["peak_rss"] is None else f"{r['peak_rss'] / bombs.MB:.0f} MB"
        cpu = "-" if r["cpu_s"] is None else f"{r['cpu_s']:.2f} s"
        size = f"{r['input_bytes'] / bombs.MB:.2f} MB" if r["input_bytes"] >= 100_000 else f"{r['input_bytes']} B"
        crit = "ok" if r["rss_ok"] and r["cpu_ok"] else "**" + " and ".join(
            x for x, ok in (("RSS over", r["rss_ok"]), ("CPU over", r["cpu_ok"])) if not ok) + "**"
        line = f"| {r['what']} | {r['entry']} | {size} | {rss} | {cpu} | {r['outcome']} | {crit} |"
        if cmp:
            c = "-" if r.get("compare_cpu_s") is None else f"{r['compare_cpu_s']:.2f} s"
            q = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}"
            line += f" {c} | {q} |"
        out.append(line)
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
