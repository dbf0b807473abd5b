"""Run a conformance suite with nnc, with the NNCodec reference, or with both (``nnc conform`` runs nnc only).

    python tools/conform.py conformance/ --impl both

The reference leg decodes every positive vector with NNCodec 2.1.3 in its own venv (tools/setup_reference.sh)
through tests/support/reference.py: the reference is a test oracle, which the installed package never runs.
Exit status as ``nnc conform``: 0 when every case passes (or is skipped), 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnc.conformance.suite import run_suite  # noqa: E402
from tests.support import reference  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", nargs="?", default=str(ROOT / "conformance"))
    ap.add_argument("--impl", choices=["nnc", "reference", "both"], default="both")
    a = ap.parse_args(argv)
    res = run_suite(a.suite, impl=a.impl, reference=reference)
    print(res.to_text())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
