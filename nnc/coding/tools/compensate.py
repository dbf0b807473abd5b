"""Task-aware rounding: choose a matrix weight's levels for its layer's output, not element by element.

Plain rounding picks each level nearest to its weight. For a layer ``y = W x`` what matters is the output
error ``(W - Q) x`` over the inputs the layer sees; with correlated inputs, an error in one column can be
partly cancelled by the columns that are not quantised yet. :func:`compensate` does that (the optimal brain
quantisation update in its Cholesky form, column by column): it quantises column ``j`` of every row onto the
tensor's uniform grid and spreads the rounding error over the remaining columns in proportion to the inverse
of the inputs' second moment matrix ``H = X^T X`` (measured by the caller on *calibration* inputs,
:func:`input_moments`).

The result is a float tensor whose values lie exactly on the grid of the tensor's qp (``level * step`` in
float32), so the encoder's uniform quantiser (``EncoderConfig(dq=False)``) returns exactly the chosen levels;
the bitstream is a standard one. Dependent quantisation is refused: its trellis would re-choose the levels.

Shapes: a tensor of shape ``(out, d1, d2, ...)`` is treated as the matrix ``(out, d1*d2*...)`` (a linear or
LSTM gate matrix ``(out, in)``; a convolution ``(out, in, kh, kw)`` with im2col columns in ``(in, kh, kw)``
order); its moment matrix is ``d1*d2*... x d1*d2*...``. numpy only.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ...errors import ConfigError, InputError
from ..quant import reconstruct_uniform, step_size

__all__ = ["compensate", "compensate_tensor", "input_moments", "output_error"]


def input_moments(x: np.ndarray, moments: np.ndarray | None = None) -> np.ndarray:
    """``X^T X`` (float64) of input samples ``x`` of shape ``(..., d)`` (rows are samples), added to
    ``moments`` when given, so that calibration batches can be accumulated."""
    a = np.asarray(x, dtype=np.float64)
    a = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)
    h = a.T @ a
    return h if moments is None else moments + h


def output_error(w: np.ndarray, q: np.ndarray, moments: np.ndarray) -> float:
    """``sum over samples ||(W - Q) x||^2 = trace((W - Q) H (W - Q)^T)`` for the matrix view of ``w``."""
    d = (np.asarray(w, np.float64) - np.asarray(q, np.float64)).reshape(np.asarray(w).shape[0], -1)
    return float(np.einsum("ij,jk,ik->", d, np.asarray(moments, np.float64), d))


def _check_moments(name: str, shape: tuple, h: np.ndarray) -> np.ndarray:
    cols = int(np.prod(shape[1:]))
    h = np.asarray(h, dtype=np.float64)
    if h.shape != (cols, cols):
        raise InputError(f"tensor {name!r} of shape {shape}: its input moments must be {cols} x {cols} "
                         f"(columns of the matrix view), got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise InputError(f"tensor {name!r}: input moments are not finite")
    return h


def _check_options(damp, order) -> None:
    if isinstance(damp, bool) or not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp >= 0):
        raise ConfigError(f"damp must be a finite number >= 0, got {damp!r}")
    if order not in ("energy", "natural"):
        raise ConfigError(f"order must be 'energy' or 'natural', got {order!r}")


def _rows(m: np.ndarray, h: np.ndarray, step: float, damp: float, order: str, name: str) -> np.ndarray:
    """Levels (float64) of the rows ``m`` (rows x cols, float64, modified) sharing the input moments ``h``."""
    rows, cols = m.shape
    h = h.copy()
    diag = np.diag(h).copy()
    mean_diag = float(np.mean(diag)) if cols else 0.0
    if not mean_diag > 0.0:            # no input ever reached these rows: nothing to compensate with
        return np.rint(m / step)
    dead = diag <= 0.0
    h[dead, dead] = 1.0                # inputs that are always zero: their columns are plain rounding
    h[np.diag_indices(cols)] += damp * mean_diag
    perm = np.argsort(-np.diag(h), kind="stable") if order == "energy" else np.arange(cols)
    inv_perm = np.argsort(perm)
    m = m[:, perm]
    h = h[np.ix_(perm, perm)]
    # upper Cholesky factor U of H^-1 (H^-1 = U^T U): row j of U holds the update of the columns after j
    try:
        u = np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError:
        raise InputError(f"tensor {name!r}: input moments are not positive definite (increase damp)") from None
    levels = np.empty((rows, cols), dtype=np.float64)
    for j in range(cols):
        col = m[:, j]
        lv = np.rint(col / step)
        levels[:, j] = lv
        err = (col - lv * step) / u[j, j]
        if j + 1 < cols:
            m[:, j + 1:] -= np.outer(err, u[j, j + 1:])
    return levels[:, inv_perm]


def compensate_tensor(w: np.ndarray, moments: np.ndarray, qp: int, qp_density: int = 2, *, damp: float = 0.01,
                      order: str = "energy", name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """``(values, levels)`` for one tensor: levels chosen column by column with error compensation, values =
    ``float32(levels) * step(qp)`` (what the encoder's URQ turns back into ``levels``). ``damp`` adds that
    fraction of the mean diagonal of ``H`` to its diagonal (a ridge: directions no calibration input excites
    are not trusted); ``order="energy"`` quantises the columns with the largest input energy first.

    ``moments`` is ``cols x cols`` for a layer whose rows all read the same inputs, or ``groups x c x c`` for a
    grouped convolution (rows split into ``groups`` equal consecutive blocks, block g reading group g's inputs;
    a depthwise convolution has one group per row)."""
    _check_options(damp, order)
    x = np.asarray(w, dtype=np.float32)
    if x.ndim < 2:
        raise InputError(f"tensor {name!r} of shape {x.shape}: compensation needs a matrix (rank >= 2)")
    if not np.all(np.isfinite(x)):
        raise InputError(f"tensor {name!r}: weights are not finite")
    shape = x.shape
    rows, cols = shape[0], int(np.prod(shape[1:]))
    h = np.asarray(moments, dtype=np.float64)
    if h.ndim == 3:
        if h.shape[0] < 1 or rows % h.shape[0] or h.shape[1:] != (cols, cols):
            raise InputError(f"tensor {name!r} of shape {shape}: grouped input moments must be groups x {cols} x "
                             f"{cols} with groups dividing {rows}, got {h.shape}")
        groups = [_check_moments(name, shape, g) for g in h]       # each checked finite there
    else:
        groups = [_check_moments(name, shape, h)]
    step = float(step_size(qp, qp_density))
    m = x.reshape(rows, cols).astype(np.float64)
    per = rows // len(groups)
    levels = np.concatenate([_rows(m[g * per:(g + 1) * per], hg, step, damp, order, name)
                             for g, hg in enumerate(groups)])
    if np.max(np.abs(levels), initial=0.0) > (1 << 31) - 3:
        raise InputError(f"tensor {name!r}: compensated levels at qp {qp} do not fit int32; use a coarser qp")
    q = levels.astype(np.int32).reshape(shape)
    return reconstruct_uniform(q, qp, qp_density), q


def compensate(tensors: Mapping[str, np.ndarray], moments: Mapping[str, np.ndarray], qps: Mapping[str, int],
               cfg, *, damp: float = 0.01, order: str = "energy", transposed=()) -> dict[str, np.ndarray]:
    """Tensors to encode with ``cfg`` (``dq=False``) and ``qp_per_tensor=qps``: every tensor that has input
    moments (``moments[name]``, e.g. from :func:`input_moments` on calibration inputs) and a qp is replaced by
    its compensated values (:func:`compensate_tensor`); the others are returned unchanged.

    The values lie on the qp's grid, so the encoder codes exactly the chosen levels: the payload is a plain
    URQ payload of those levels. Tensors named in ``transposed`` are stored ``(in, out)`` (e.g. ONNX MatMul
    weights): their matrix view is the transpose. With ``cfg.dq`` true this raises
    :class:`~nnc.errors.ConfigError` (the DQ trellis re-quantises every value; see docs/rd.md)."""
    if cfg.dq:
        raise ConfigError("compensate chooses uniform (URQ) levels; with dq=True the trellis would choose the "
                          "levels again: encode the compensated tensors with EncoderConfig(dq=False)")
    _check_options(damp, order)
    unknown = sorted(set(moments) - set(tensors))
    if unknown:
        raise InputError(f"input moments for tensors that are not in the model: {unknown[:4]}")
    out = dict(tensors)
    for name, h in moments.items():
        if name not in qps:
            continue
        w = np.asarray(tensors[name])
        flip = name in transposed
        if flip and w.ndim != 2:
            raise InputError(f"tensor {name!r} of shape {w.shape}: only a matrix can be marked transposed")
        v, _ = compensate_tensor(w.T if flip else w, h, int(qps[name]), cfg.qp_density, damp=damp, order=order,
                                 name=name)
        out[name] = np.ascontiguousarray(v.T) if flip else v
    return out
