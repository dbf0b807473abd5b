"""Map the reference oracle's settings keys (nnc/conformance/reference_driver.py) to an :class:`EncoderConfig`
that produces the same bitstream, and random test cases per coding tool (shared by the tests, the vector
generator tools/make_tool_vectors.py and the benchmarks)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["config_from_settings", "random_tensors", "random_cases", "TOOLS"]

TOOLS = ("codebook_auto", "codebook_force", "bitdepth", "opt_qp", "sparsity")


def config_from_settings(s: Mapping):
    """EncoderConfig equivalent of reference_driver settings ``s``."""
    from nnc.config import EncoderConfig
    mode = {0: "off", 1: "force", 2: "auto"}[int(s.get("codebook_mode", 0) or 0)]
    return EncoderConfig(
        qp=int(s.get("qp", -38)), qp_density=int(s.get("qp_density", 2)), nonweight_qp=s.get("nonweight_qp", -75),
        qp_per_tensor=dict(s.get("qp_per_tensor") or {}), dq=bool(s.get("dq", True)),
        row_skipping=bool(s.get("row_skipping", True)), param_opt=bool(s.get("param_opt", True)),
        codebook=mode, bitdepth=s.get("bitdepth") or None, opt_qp=bool(s.get("opt_qp", False)),
        sparsity=s.get("sparsity"), struct_sparsity=s.get("struct_spars_factor"))


def random_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A small random 'model': conv, fc, bias, optionally few-level, sparse-row, heavy-tailed, int tensors."""
    t: dict[str, np.ndarray] = {}
    scale = float(rng.choice([0.01, 0.05, 0.2]))
    t["conv.weight"] = (rng.normal(size=(int(rng.integers(4, 17)), int(rng.integers(1, 6)), 3, 3)) * scale
                        ).astype(np.float32)
    t["conv.bias"] = (rng.normal(size=t["conv.weight"].shape[0]) * scale / 5).astype(np.float32)
    h, w = int(rng.integers(2, 40)), int(rng.integers(2, 60))
    if rng.random() < 0.4:   # few distinct values: codebook territory
        t["fc.weight"] = (rng.integers(-3, 4, size=(h, w)) * scale).astype(np.float32)
    else:
        t["fc.weight"] = (rng.standard_t(3, size=(h, w)) * scale).astype(np.float32)
    if rng.random() < 0.5:
        t["fc.weight"][rng.random(h) < 0.3] = 0.0
    t["fc.bias"] = (rng.normal(size=h) * scale).astype(np.float32)
    if rng.random() < 0.3:
        t["pos.weight"] = np.abs(rng.normal(size=(6, 10))).astype(np.float32) * scale   # unsigned in bitdepth
    if rng.random() < 0.2:
        t["steps"] = rng.integers(-50, 50, size=(5, 4)).astype(np.int32)
    return t


def random_cases(tool: str, n: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """``n`` (tensors, reference settings) pairs exercising ``tool``."""
    rng = np.random.default_rng([seed, TOOLS.index(tool)])
    out = []
    for _ in range(n):
        t = random_tensors(rng)
        s = {"qp": int(rng.integers(-44, -20)), "dq": bool(rng.random() < 0.5),
             "row_skipping": bool(rng.random() < 0.7), "param_opt": bool(rng.random() < 0.8)}
        if tool == "codebook_auto":
            s["codebook_mode"] = 2
        elif tool == "codebook_force":
            s["codebook_mode"] = 1
        elif tool == "bitdepth":
            s["bitdepth"] = int(rng.choice([2, 3, 4, 5, 6, 8, 10, 12, 16]))
            if rng.random() < 0.3:
                s["codebook_mode"] = 2
        elif tool == "opt_qp":
            s["opt_qp"] = True
            t["fc2.weight"] = (rng.normal(size=(int(rng.integers(8, 64)), 32)) * 0.03).astype(np.float32)
        elif tool == "sparsity":
            s["sparsity"] = float(rng.choice([0.0, 0.3, 0.6, 0.9]))
            if rng.random() < 0.5:
                s["struct_spars_factor"] = 0.9
        out.append((t, s))
    return out
