"""Fuzz ``nnc.check`` (conformance checker, ``nnc check``).

Contract for the checker: it *reports* problems; it returns a report for any input (raising
``nnc.NNCError`` is tolerated), and the report renders as dict and text. The banner printed at start-up
names the target (fuzz/summary.py collects it).
"""
import sys

from _common import main

_started = False


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    global _started
    import nnc
    if not _started:
        print("[fuzz_check] target: nnc.check", file=sys.stderr)
        _started = True
    try:
        report = nnc.check(data)
    except nnc.NNCError:
        return
    report.to_dict()
    report.to_text()


if __name__ == "__main__":
    main(TestOneInput)
