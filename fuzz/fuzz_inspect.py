"""Fuzz ``nnc.inspect`` (unit-by-unit summary, used by ``nnc info``).

Contract: returns a summary for any input or raises ``nnc.NNCError``, and the summary renders as dict and
text. The banner printed at start-up names the target (fuzz/summary.py collects it).
"""
from _common import main, report_harness

TestOneInput = report_harness("fuzz_inspect", "inspect")  # noqa: N816 - atheris' name

if __name__ == "__main__":
    main(TestOneInput)
