"""Client selection policies shared by the in-process loops and the Flower strategies.

A *selection* is any callable ``(server_round, keys) -> chosen keys`` over the sorted client keys (partition
ids or node ids); the strategies take one as an argument. :func:`seeded_fraction` is the seeded partial
participation the benchmarks use, so that an in-process run and a Flower run pick the same clients.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["select_clients", "seeded_fraction", "everyone", "Selection"]

Selection = Callable[[int, Sequence[int]], list]


def select_clients(num_clients: int, fraction: float, server_round: int, seed: int = 0) -> list[int]:
    """Seeded partial participation: the same selection in the in-process loop and in Flower."""
    m = max(1, int(round(num_clients * fraction)))
    rng = np.random.default_rng([seed, server_round, 7])
    return sorted(int(c) for c in rng.choice(num_clients, m, replace=False))


def seeded_fraction(fraction: float, seed: int = 0) -> Selection:
    """``fraction`` of the keys per round by :func:`select_clients` (indices into the sorted keys)."""

    def select(server_round: int, keys: Sequence[int]) -> list:
        keys = sorted(keys)
        return [keys[i] for i in select_clients(len(keys), fraction, server_round, seed)]

    return select


def everyone(server_round: int, keys: Sequence[int]) -> list:
    """Every client every round (CFL's default)."""
    return sorted(keys)
