"""Fuzz ``nnc.inspect`` (unit-by-unit summary, used by ``nnc info``).

Contract: returns a summary for any input or raises ``nnc.NNCError``, and the summary renders as dict and
text. The banner printed at start-up names the target (fuzz/summary.py collects it).
"""
import sys

from _common import main

_started = False


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    global _started
    import nnc
    if not _started:
        print("[fuzz_inspect] target: nnc.inspect", file=sys.stderr)
        _started = True
    try:
        info = nnc.inspect(data)
    except nnc.NNCError:
        return
    info.to_dict()
    info.to_text()


if __name__ == "__main__":
    main(TestOneInput)
