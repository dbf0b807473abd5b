"""Fuzz ``nnc.UpdateDecoder`` (incremental updates: parent signalling, TCA bases, HDSP histories).

Every input is decoded by a decoder that already holds the state left by the first update of the
reference TCA sequence (conformance/vectors/tca_seq/000.nnc), so TCA/HDSP paths with a held parent run;
the input is then decoded a second time by the same decoder (state advanced by the first call) and
applied to a base model.
Contract: each call returns or raises ``nnc.NNCError``.
"""
import copy
import sys

from _common import VECTORS, fuzz_limits, main

_base = None


def _setup():
    import numpy as np
    import nnc
    dec = nnc.UpdateDecoder(config=fuzz_limits())
    dec.decode_model((VECTORS / "tca_seq" / "000.nnc").read_bytes())
    base = {"delta.weight": np.zeros((64, 96), np.float32)}
    return dec.state, base


def TestOneInput(data: bytes) -> None:  # noqa: N802
    global _base
    import nnc
    if _base is None:
        _base = _setup()
    state, base = _base
    dec = nnc.UpdateDecoder(base=base, config=fuzz_limits())
    dec.state = copy.deepcopy(state)
    for step in (dec.decode_update, dec.apply):
        try:
            step(data)
        except nnc.NNCError:
            pass


if __name__ == "__main__":
    main(TestOneInput)
