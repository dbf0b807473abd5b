"""Model-level encoder decisions made before per-tensor quantisation: sparsification and per-tensor qps."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..dtypes import coding_kind
from .bitdepth import effective_bits, intaligned_qp
from .optqp import modify_qps
from .ratecontrol import allocate_qps
from .sparsify import sparsify_structured, sparsify_unstructured

__all__ = ["prepare"]


def prepare(tensors: Mapping[str, np.ndarray], cfg) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Apply the config's model-level tools. Returns the (possibly sparsified) arrays and the qps chosen per
    tensor name (tensors missing from the dict use ``cfg.qp_for``)."""
    arrays = dict(tensors)
    floats = [k for k, a in arrays.items() if coding_kind(k, np.asarray(a).dtype) != "int"]
    if cfg.sparsity is not None or cfg.struct_sparsity is not None:
        sub = {k: np.asarray(arrays[k], dtype=np.float32) for k in floats}
        if cfg.sparsity is not None:
            sub = sparsify_unstructured(sub, qp=cfg.qp, qp_density=cfg.qp_density, target=cfg.sparsity)
        if cfg.struct_sparsity is not None:
            sub = sparsify_structured(sub, gain=cfg.struct_sparsity)
        for k, v in sub.items():
            arrays[k] = np.asarray(v, dtype=np.asarray(arrays[k]).dtype)
    qps: dict[str, int] = {}
    if cfg.bitdepth is not None:
        for k in floats:
            a = np.asarray(arrays[k], dtype=np.float32)
            qps[k] = intaligned_qp(a, effective_bits(cfg.bitdepth, a.ndim > 1), cfg.qp_density)
    elif cfg.opt_qp:
        base = {k: cfg.qp_for(k, np.asarray(a).ndim) for k, a in arrays.items()}
        qps = {k: v for k, v in modify_qps(arrays, base).items() if k in floats}
    elif cfg.target_bits_per_param is not None or cfg.max_rel_error is not None:
        qps = allocate_qps({k: arrays[k] for k in floats}, cfg)
    return arrays, qps
