"""Puts benchmarks/ (the bomb builders) on sys.path for tests/security."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for cand in (HERE.parents[1] / "benchmarks", HERE.parent.parent / "benchmarks"):
    if (cand / "bombs.py").exists():
        sys.path.insert(0, str(cand))
        break

MB = 1 << 20


def rss_bound(limit: int) -> float:
    """Issue 15 item 4: peak RSS <= 1.25 x the configured limit + 100 MB."""
    return 1.25 * limit + 100 * MB
