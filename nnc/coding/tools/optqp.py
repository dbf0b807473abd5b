"""NNCodec's ``opt_qp``: a heuristic per-tensor QP modification from tensor sizes and spreads.

Each weight tensor (rank > 1) gets a share ``s = size / total_size + 0.1 * (1 - std / max_std)``; shares
above 0.5 become 0.15; the tensor's qp becomes ``round(qp * (1 - s))`` (round half to even). Large tensors
and tensors with a small spread thus get a *finer* step (qps are negative). Reproduced from the behaviour of
NNCodec 2.1.3 so that ``opt_qp`` streams are byte-identical.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..dtypes import is_float

__all__ = ["modify_qps"]


def modify_qps(tensors: Mapping[str, np.ndarray], qps: Mapping[str, int]) -> dict[str, int]:
    """New qps for the weight tensors (rank > 1 arrays, as NNCodec types them) of ``tensors``; other entries are
    kept."""
    out = dict(qps)
    names, sizes, stds = [], [], []
    for name, a in tensors.items():
        if name in qps and np.asarray(a).ndim > 1:
            names.append(name)
            sizes.append(int(np.asarray(a).size))
            a = np.asarray(a)
            stds.append(np.std(a.astype(np.float32) if is_float(a.dtype) else a.astype(np.int32)))
    if not names:
        return out
    rel_sizes = np.array(sizes) / sum(sizes)                         # float64
    std_arr = np.array(stds)
    rel_std = std_arr / std_arr.dtype.type(max(stds))   # in the array's dtype, as numpy 1.x computes it
    t = std_arr.dtype.type
    shares = rel_sizes + (t(0.1) * (t(1) - rel_std))
    for name, share in zip(names, shares):
        share = float(share)
        if share > 0.5:
            share = 0.15
        out[name] = int(round(float(qps[name]) * (1 - share)))
    return out
