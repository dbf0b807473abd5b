"""The compiled syntax readers (nnc/bitstream/compiled.py) against the interpreter they replace
(nnc.bitstream.syntax.interpret_struct): same units, records, header sizes and payloads, and the same errors
(type, code, message, unit, byte offset, syntax path) on every conformance vector, on mutated and truncated
vectors, on the hostile inputs of benchmarks/bombs.py, under tight limits and without any."""
import contextlib

import numpy as np
import pytest

import nnc
from conftest import VECTORS
from nnc import bitstream as bs
from nnc.bitstream import syntax
from test_mutations import mutate

TIGHT = nnc.DecoderConfig(max_tensor_elements=1 << 12, max_total_bytes=1 << 16, max_units=64, max_rank=2,
                          max_codebook_size=8)
LIMITS = [None, nnc.DecoderConfig.strict(), TIGHT]


@contextlib.contextmanager
def _mode(compiled: bool):
    saved = syntax.USE_COMPILED
    syntax.USE_COMPILED = compiled
    try:
        yield
    finally:
        syntax.USE_COMPILED = saved


def _err(e) -> tuple:
    return (type(e).__name__, getattr(e, "code", None), str(e), getattr(e, "unit_index", None),
            getattr(e, "byte_offset", None), getattr(e, "syntax_path", None))


def _unit(u) -> tuple:
    return (u.index, u.offset, u.size, repr(u.header), type(u.body).__name__, repr(u.body), u.header_size,
            None if u.payload is None else bytes(u.payload), [_err(e) for e in u.errors])


def _outcome(data: bytes, strict: bool, limits, compiled: bool):
    with _mode(compiled):
        budget = bs.MemoryBudget(limits) if limits is not None else None
        try:
            p = bs.parse(data, strict=strict, limits=limits, budget=budget)
        except nnc.NNCError as e:
            return ("error", _err(e), None if budget is None else budget.header)
        return ("ok", [_unit(u) for u in p.units], repr(p.context), None if budget is None else budget.header)


def _same(data: bytes) -> None:
    for limits in LIMITS:
        for strict in (False, True):
            a = _outcome(data, strict, limits, True)
            b = _outcome(data, strict, limits, False)
            assert a == b, (strict, limits)


def _vectors():
    return [p.read_bytes() for p in sorted(VECTORS.glob("*.nnc"))]


def test_the_compiled_readers_are_used():
    data = _vectors()[0]
    calls = []
    saved = syntax.interpret_struct

    def spy(*a, **k):
        calls.append(a[0])
        return saved(*a, **k)

    syntax.interpret_struct = spy
    try:
        with _mode(True):
            bs.parse(data)
        assert calls == []
        with _mode(False):
            bs.parse(data)
        assert calls
    finally:
        syntax.interpret_struct = saved


@pytest.mark.parametrize("i", range(len(sorted(VECTORS.glob("*.nnc")))))
def test_every_conformance_vector_parses_the_same(i):
    _same(_vectors()[i])


def test_mutated_vectors_parse_and_fail_the_same():
    blobs = [b for b in _vectors() if len(b) < 20_000]
    rng = np.random.default_rng(2026_12_01)
    for i in range(600):
        _same(mutate(rng, blobs[i % len(blobs)], blobs))


def test_truncated_vectors_fail_the_same():
    blobs = [b for b in _vectors() if len(b) < 20_000]
    rng = np.random.default_rng(7)
    for b in blobs:
        cuts = sorted(set(rng.integers(0, len(b), size=12).tolist()) | {1, 2, 3, 5, 8})
        for c in cuts:
            _same(b[:c])


def test_every_header_bit_flipped_fails_the_same():
    """Each bit of the headers of a few small vectors flipped in turn (sizes, flags, counts, codebooks)."""
    blobs = sorted((b for b in _vectors() if len(b) < 4_000), key=len)[:2]
    for b in blobs:
        p = bs.parse(b)
        for u in p.units:
            hdr_end = u.offset + (u.header_size or u.size)
            for pos in range(u.offset, min(hdr_end, u.offset + 64)):
                for bit in range(8):
                    d = bytearray(b)
                    d[pos] ^= 1 << bit
                    _same(bytes(d))


def test_hostile_inputs_parse_and_fail_the_same():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bombs
    small = [bombs.amplify_float64(), bombs.amplify_over_limit(), bombs.codebook_overflow(20_000),
             bombs.dense_codebook(40_000, 1 << 10), bombs.entry_points(20_000), bombs.many_units(20_000),
             bombs.performance_maps(300_000), bombs.element_names(20_000), bombs.hostile_topology_json(),
             bombs.int_as_float16()]
    for data in small:
        _same(data)
        _same(data[: len(data) // 2])
