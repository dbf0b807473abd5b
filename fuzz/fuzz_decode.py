"""Fuzz ``nnc.decode`` (whole-model decoder: unit parser, limits, DeepCABAC core, reconstruction).

Contract: returns a dict of arrays or raises ``nnc.NNCError``; anything else is a finding.
Seeds: conformance/vectors/*.nnc (see fuzz/run.sh).
"""
import sys

from _common import fuzz_limits, main

_cfg = None


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    global _cfg
    import nnc
    if _cfg is None:
        _cfg = fuzz_limits()
    try:
        out = nnc.decode(data, _cfg)
    except nnc.NNCError:
        return
    total = sum(a.nbytes for a in out.values())
    assert total <= _cfg.max_total_bytes, total   # the limit held


if __name__ == "__main__":
    main(TestOneInput)
