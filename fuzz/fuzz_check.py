"""Fuzz ``nnc.check`` (conformance checker, ``nnc check``).

Contract for the checker: it *reports* problems; it returns a report for any input (raising
``nnc.NNCError`` is tolerated), and the report renders as dict and text. The banner printed at start-up
names the target (fuzz/summary.py collects it).
"""
from _common import main, report_harness

TestOneInput = report_harness("fuzz_check", "check")  # noqa: N816 - atheris' name

if __name__ == "__main__":
    main(TestOneInput)
