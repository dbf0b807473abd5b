"""Print the fuzzing figures: executed inputs, findings and slowest input per harness, from
fuzz/out/<harness>/log.txt (libFuzzer's final stats, summed over runs) and fuzz/out/replay_asan.jsonl."""
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def main() -> int:
    rows = []
    total = findings = 0
    for log in sorted(OUT.glob("*/log.txt")):
        text = log.read_text(errors="replace")
        # libFuzzer ends a run with "Done N in T second(s)" (atheris_runs) or "Done N runs in T second(s)"
        # (max_total_time); final stats, when printed, repeat the same N
        done = re.findall(r"^Done (\d+) (?:runs )?in (\d+) second", text, re.M)
        runs = sum(int(n) for n, _ in done)
        seconds = sum(int(t) for _, t in done)
        slow = len(re.findall(r"Slowest unit: ", text))   # libFuzzer reports units slower than 10 s
        targets = sorted(set(re.findall(r"\[fuzz_\w+\] target: (.*)", text)))
        art = [p.name for p in log.parent.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
        cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", text)
        rows.append((log.parent.name, f"guided, Release core, {len(done)} run(s), {seconds} s", runs, len(art), slow,
                     f"cov {cov[-1][0]}, ft {cov[-1][1]}, corpus {cov[-1][2]}" if cov else "",
                     "; ".join(targets)))
        total += runs
        findings += len(art)
    replay = OUT / "replay_asan.jsonl"
    if replay.exists():
        for line in replay.read_text().splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                rows.append((r["harness"], "replay + mutations (ASan/UBSan core)", r["total"], r["findings"], "",
                             f"{r['corpus_inputs']} corpus + {r['mutations']} mutations, {r['seconds']} s", ""))
                total += r["total"]
                findings += r["findings"]
    print("| harness | mode | inputs | findings | slow units (>10 s) | coverage / detail | target |")
    print("|---|---|---:|---:|---:|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print(f"\ntotal inputs: {total:,}; findings (crash/timeout/oom files + replay findings): {findings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
