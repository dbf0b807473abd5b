"""The clustering algorithm of clustered FL (Sattler, Müller, Samek, arXiv 1910.01991): cosine similarities of
client updates and the optimal bi-partition.

* :func:`pairwise_cosine`, :func:`optimal_bipartition` (the paper's criterion: the bi-partition that
  minimises the largest cross-cluster similarity; ``method="exact"`` solves it exactly by the paper's
  sort-and-merge algorithm, which is single-linkage on the similarities / a cut of the maximum spanning tree;
  ``"exhaustive"`` enumerates all 2^(n-1) splits, for checks; ``"complete"`` is the complete-linkage
  agglomeration the authors' reference code uses).
"""
from __future__ import annotations

import itertools
from typing import Mapping

import numpy as np

__all__ = ["flatten", "pairwise_cosine", "optimal_bipartition", "max_cross_similarity"]

Tensors = Mapping[str, np.ndarray]


# --------------------------------------------------------------------------------------------------------
# similarity and the bi-partition
# --------------------------------------------------------------------------------------------------------
def flatten(update: Tensors) -> np.ndarray:
    return np.concatenate([np.asarray(update[k], dtype=np.float64).ravel() for k in sorted(update)])


def pairwise_cosine(updates) -> np.ndarray:
    """``S[i, j] = <dW_i, dW_j> / (||dW_i|| ||dW_j||)`` for a list of flat vectors or tensor dicts."""
    v = np.stack([flatten(u) if isinstance(u, Mapping) else np.asarray(u, np.float64).ravel() for u in updates])
    n = np.linalg.norm(v, axis=1)
    s = (v @ v.T) / (np.outer(n, n) + 1e-12)
    return np.clip(s, -1.0, 1.0)


def max_cross_similarity(S: np.ndarray, c1, c2) -> float:
    return float(np.max(np.asarray(S)[np.ix_(list(c1), list(c2))]))


def optimal_bipartition(S: np.ndarray, method: str = "exact") -> tuple[list[int], list[int]]:
    """Split indices ``0..n-1`` into two non-empty groups.

    ``exact``/``exhaustive`` minimise ``max_{i in c1, j in c2} S[i, j]`` (the CFL criterion);
    ``complete`` merges by complete linkage until two clusters remain. Groups are returned sorted, the one
    holding index 0 first.
    """
    S = np.asarray(S, dtype=np.float64)
    n = len(S)
    if n < 2:
        raise ValueError("need at least two clients to split")
    if method == "exhaustive":
        best, best_c1 = np.inf, None
        for mask in range(1, 1 << (n - 1)):          # index n-1 always in c2: each split counted once
            c1 = [i for i in range(n) if mask >> i & 1]
            c2 = [i for i in range(n) if not mask >> i & 1]
            v = max_cross_similarity(S, c1, c2)
            if v < best - 1e-15:
                best, best_c1 = v, c1
        c1 = best_c1
    elif method == "exact":
        # the paper's algorithm: visit pairs by decreasing similarity, merge their clusters, stop at two
        label = list(range(n))
        pairs = sorted(((S[i, j], i, j) for i in range(n) for j in range(i + 1, n)), key=lambda t: -t[0])
        clusters = n
        for _, i, j in pairs:
            if clusters == 2:
                break
            a, b = label[i], label[j]
            if a != b:
                label = [a if x == b else x for x in label]
                clusters -= 1
        c1 = [i for i in range(n) if label[i] == label[0]]
    elif method == "complete":
        groups = [[i] for i in range(n)]
        while len(groups) > 2:
            best, pair = -np.inf, None
            for a, b in itertools.combinations(range(len(groups)), 2):
                link = np.min(S[np.ix_(groups[a], groups[b])])      # complete linkage on similarity
                if link > best:
                    best, pair = link, (a, b)
            a, b = pair
            groups[a] = sorted(groups[a] + groups[b])
            del groups[b]
        c1 = groups[0] if 0 in groups[0] else groups[1]
    else:
        raise ValueError(f"method must be 'exact', 'exhaustive' or 'complete', got {method!r}")
    c1 = sorted(c1) if 0 in c1 else sorted(set(range(n)) - set(c1))
    c2 = sorted(set(range(n)) - set(c1))
    return c1, c2
