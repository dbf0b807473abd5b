"""Fuzz ``nnc.check`` (conformance checker, ``nnc check``).

Contract for the checker: it *reports* problems; it returns a report for any input (raising
``nnc.NNCError`` is tolerated). ``nnc/conformance/checker.py`` is being written concurrently; until it
exists this harness fuzzes what a check does: lenient parse (all unit errors collected), then a full
decode under limits. The banner printed at start-up says which target ran.
"""
import sys

from _common import fuzz_limits, main

_target = None


def _pick():
    try:
        from nnc.conformance.checker import check
    except ImportError:
        check = None
    if check is not None:
        def run(data):
            report = check(data)
            for meth in ("to_dict", "to_text"):
                if hasattr(report, meth):
                    getattr(report, meth)()
        return "nnc.check", run

    import nnc
    from nnc import bitstream as bs
    cfg = fuzz_limits()

    def run(data):
        parsed = bs.parse(data, strict=False, max_units=cfg.max_units)
        for e in parsed.errors:
            assert isinstance(e, nnc.NNCError), repr(e)
            str(e)
        nnc.decode_model(data, cfg)
    return "parse(strict=False) + decode_model (nnc.check not present yet)", run


def TestOneInput(data: bytes) -> None:  # noqa: N802
    global _target
    import nnc
    if _target is None:
        name, _target = _pick()
        print(f"[fuzz_check] target: {name}", file=sys.stderr)
    try:
        _target(data)
    except nnc.NNCError:
        return


if __name__ == "__main__":
    main(TestOneInput)
