"""Exhaustive check of the reachable states of DeepCABAC's probability model (NNC_BITSTREAM.md §3.3).

The C++ core (nnc/deepcabac/src/engine.h) updates a context with table lookups whose indices are only in
bounds if every reachable state keeps them there: the fast- and slow-estimator step indices in 0..31 and the
LPS column P >> 7 in -32..31. A context starts in one of the nine initialisation sets and changes only through
the update, whatever the bins are, so walking every state reachable with bins 0 and 1 from each set proves the
bounds for any payload, valid or hostile. The same walk checks that the core's signed slow-estimator table
(kSlowDelta, indexed by (S + bin - 1) >> 7 for both bins) gives the step of the format's rule in every
reachable state. Constants: the adaptation curve and the initialisation sets of tables.h (format data).
"""

from __future__ import annotations

CURVE = [2512, 2288, 2064, 1840, 1616, 1392, 1168, 944, 720, 560, 464, 368, 272, 208, 144, 80] + [64] * 15 + [0]
INIT_SETS = [  # fast shift, slow shift, P0, S0
    (5, 4, 0, 0), (5, 4, -1310, -41), (5, 4, 3039, 95), (4, 5, 0, 0), (6, 6, 962, 30),
    (6, 6, 3039, 95), (6, 6, -673, -21), (7, 5, 0, 0), (7, 5, 962, 30),
]


def _wrap(x: int, bits: int) -> int:
    x &= (1 << bits) - 1
    return x - (1 << bits) if x >> (bits - 1) else x


def _slow_delta(slow_shift: int, b: int, k: int) -> int:
    """engine.h's kSlowDelta.v[slow_shift - 4][32 * b + k], rebuilt from its definition."""
    return (CURVE[k] >> slow_shift) if b else -(CURVE[31 - k] >> slow_shift)


def test_every_reachable_context_state_keeps_table_indices_in_bounds():
    total = 0
    for fast_shift, slow_shift, p0, s0 in INIT_SETS:
        seen = {(p0, s0)}
        todo = [(p0, s0)]
        while todo:
            p, f = todo.pop()
            assert -32 <= (p >> 7) <= 31 and abs(p) < 3900, (p, f)
            for b in (0, 1):
                g = 1 if b else -1
                s = p - 16 * f
                fi = 16 + ((g * f) >> 3)
                si = 16 + ((g * s) >> 7)
                assert 0 <= fi < 32 and 0 <= si < 32, (p, f, b)
                k = 16 + ((s + b - 1) >> 7)  # the core's index into its signed slow-step row
                assert 0 <= k < 32 and _slow_delta(slow_shift, b, k) == g * (CURVE[si] >> slow_shift), (p, f, b)
                f2 = _wrap(f + g * (CURVE[fi] >> fast_shift), 8)
                p2 = _wrap(s + g * (CURVE[si] >> slow_shift) + 16 * f2, 16)
                if (p2, f2) not in seen:
                    seen.add((p2, f2))
                    todo.append((p2, f2))
        total += len(seen)
    # The walk really covered the state space (not just the start states).
    assert total > 3_000_000
