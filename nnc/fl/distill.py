"""Compressed federated distillation (CFD, Sattler et al., arXiv 2012.00632) with nnc as the transport.

Clients do not exchange weights. Every round each client predicts soft labels (softmax outputs) on a shared
*public, unlabelled* set; the server averages them and sends the average back; each client distils its own
model on the public set towards the average and then trains on its private data again.

Three compression steps, as in the paper, and nnc's CABAC as the entropy coder:

1. **b-bit soft-label quantisation** :func:`quantize_soft_labels`. The b-bit grid of the probability
   simplex with ``C`` classes is ``G_b = {k / m : k in N_0^C, sum(k) = m}`` with ``m = 2**b - 1``: probability
   vectors whose entries are multiples of ``1/(2**b - 1)``. ``Q_b(p)`` is the point of ``G_b`` nearest to ``p``
   in L1 distance. ``b = 1`` gives ``m = 1``: the one-hot vector of the arg-max (hard labels). The L1-nearest
   grid point is found exactly by *largest-remainder rounding*: ``t = m p``, start from ``floor(t)`` and add one
   to the ``m - sum(floor(t))`` entries with the largest fractional parts (ties: lowest class index, so that
   ``b = 1`` agrees with ``numpy.argmax``). Proof sketch: an optimum has every ``k_i`` in ``{floor t_i,
   ceil t_i}`` (moving a unit from an entry more than 1 above ``t_i`` to one below its ``t_j`` never raises
   the cost), and among those the cost is ``sum r_i + sum_{rounded up}(1 - 2 r_i)``, smallest when the
   rounded-up entries have the largest remainders ``r_i``. ``b = 32`` means no grid: float32 soft labels,
   coded by nnc with a fine QP (``float_qp``) or sent raw (plain FD).
2. **Delta coding** against what the receiver already holds: only rows whose quantised label changed since
   the last message on the same link are sent, plus their positions (a 0/1 row mask or a list of index gaps,
   whichever codes smaller).
3. **Entropy coding**: everything is one NNC bitstream (:func:`nnc.encode`). The integer grid counts ``k``
   (``packing="vector"``, an ``(rows, C)`` int tensor) or the rank of ``k`` among all grid points
   (``packing="index"``, one int per row) are NNR_PT_INT tensors, coded losslessly by CABAC; b = 32 rows are a
   float tensor quantised at ``float_qp``. A small int tensor ``sl.meta`` makes each message self-describing.

:class:`SoftLabelEncoder` / :class:`SoftLabelDecoder` are one link's two ends (engine-agnostic; no model
and no training here). :func:`nnc.fl.sim.simulate_fd` is the numpy FL loop (FD / CFD) the benchmark and
tests use; :mod:`nnc.fl.flower.cfd` is the Flower wiring over the same objects (the strategy sends
:class:`SoftLabelEncoder` bytes as an ``Array`` with ``stype="nnc/soft-labels"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..codec import decode, encode
from ..coding.quant import step_size
from ..config import DecoderConfig, EncoderConfig
from ..errors import UpdateStateError

__all__ = ["grid_levels", "grid_size", "quantize_soft_labels", "dequantize", "Q_b", "rank_grid", "unrank_grid",
           "LabelCodecConfig", "SoftLabelEncoder", "SoftLabelDecoder", "FDResult", "STYPE_SOFT_LABELS"]

STYPE_SOFT_LABELS = "nnc/soft-labels"
FLOAT_BITS = 32
_MODES = {"full": 0, "mask": 1, "index": 2}
_PACK = {"vector": 0, "index": 1, "float": 2, "raw": 3}


# --------------------------------------------------------------------------------------------------------
# Q_b: the b-bit simplex grid
# --------------------------------------------------------------------------------------------------------
def grid_levels(bits: int) -> int:
    """``m = 2**bits - 1``: grid entries are multiples of ``1/m``."""
    if not 1 <= bits <= 16:
        raise ValueError(f"soft-label grid needs 1 <= bits <= 16, got {bits}")
    return (1 << bits) - 1


def grid_size(num_classes: int, bits: int) -> int:
    """Number of points of the b-bit grid: compositions of ``m`` into ``C`` parts, ``comb(m+C-1, C-1)``."""
    m = grid_levels(bits)
    return math.comb(m + num_classes - 1, num_classes - 1)


def quantize_soft_labels(p: np.ndarray, bits: int) -> np.ndarray:
    """Integer grid counts ``k`` (``int32``, rows sum to ``m = 2**bits - 1``) of ``Q_b(p)`` for each row of ``p``.

    ``p`` must be finite and nonnegative; rows are normalised to sum one first (an all-zero row becomes
    uniform).
    """
    m = grid_levels(bits)
    p = np.asarray(p, dtype=np.float64)
    squeeze = p.ndim == 1
    p = np.atleast_2d(p)
    if p.ndim != 2 or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("soft labels must be a finite, nonnegative (rows, classes) array")
    s = p.sum(1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1), 1.0 / p.shape[1])
    t = p * m
    k = np.floor(t)
    r = t - k
    k = k.astype(np.int64)
    need = m - k.sum(1)                         # entries to round up; 0..C (float error can push it out)
    # largest remainder first, ties by lowest index (stable sort of -r)
    order = np.argsort(-r, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(p.shape[1])[None, :].repeat(len(p), 0), axis=1)
    k = k + (rank < need[:, None])
    # float rounding can leave sum(k) off by one when some t_i is an exact integer: repair greedily
    for i in np.flatnonzero(k.sum(1) != m):
        while k[i].sum() > m:
            j = int(np.argmax(np.where(k[i] > 0, k[i] - t[i], -np.inf)))
            k[i, j] -= 1
        while k[i].sum() < m:
            k[i, int(np.argmax(t[i] - k[i]))] += 1
    k = k.astype(np.int32)
    return k[0] if squeeze else k


def dequantize(k: np.ndarray, bits: int) -> np.ndarray:
    """Grid counts back to probabilities ``k / m`` (float32)."""
    return (np.asarray(k, dtype=np.float64) / grid_levels(bits)).astype(np.float32)


def Q_b(p: np.ndarray, bits: int) -> np.ndarray:  # noqa: N802 - the paper's name
    """The quantised soft labels themselves: ``k / m`` for ``bits <= 16``; float32 ``p`` for ``bits == 32``."""
    if bits == FLOAT_BITS:
        return np.asarray(p, dtype=np.float32)
    return dequantize(quantize_soft_labels(p, bits), bits)


def _ncomp(total: int, parts: int) -> int:
    """Compositions of ``total`` into ``parts`` nonnegative parts."""
    if total < 0:
        return 0
    if parts == 0:
        return 1 if total == 0 else 0
    return math.comb(total + parts - 1, parts - 1)


def rank_grid(k: np.ndarray, bits: int) -> np.ndarray:
    """Lexicographic rank of each row's grid point among all ``grid_size(C, bits)`` points (int64)."""
    k = np.atleast_2d(np.asarray(k, dtype=np.int64))
    m, c = grid_levels(bits), k.shape[1]
    if grid_size(c, bits) > (1 << 31) - 1:
        raise ValueError(f"{grid_size(c, bits)} grid points do not fit an int32 index; use packing='vector'")
    table = {(t, p): _ncomp(t, p) for t in range(m + 1) for p in range(c + 1)}
    out = np.zeros(len(k), np.int64)
    for row in range(len(k)):
        rem, rnk = m, 0
        for i in range(c - 1):
            for v in range(int(k[row, i])):
                rnk += table[(rem - v, c - 1 - i)]
            rem -= int(k[row, i])
        out[row] = rnk
    return out


def unrank_grid(idx: np.ndarray, num_classes: int, bits: int) -> np.ndarray:
    """Inverse of :func:`rank_grid`."""
    m, c = grid_levels(bits), num_classes
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if (idx < 0).any() or (idx >= grid_size(c, bits)).any():
        raise ValueError("grid index out of range")
    table = {(t, p): _ncomp(t, p) for t in range(m + 1) for p in range(c + 1)}
    k = np.zeros((len(idx), c), np.int32)
    for row, rnk in enumerate(idx.tolist()):
        rem = m
        for i in range(c - 1):
            v = 0
            while rnk >= table[(rem - v, c - 1 - i)]:
                rnk -= table[(rem - v, c - 1 - i)]
                v += 1
            k[row, i] = v
            rem -= v
        k[row, c - 1] = rem
    return k


# --------------------------------------------------------------------------------------------------------
# one link: encoder / decoder of soft-label matrices
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelCodecConfig:
    """How a soft-label matrix travels.

    Attributes:
        bits: 1..16 (the b-bit grid ``G_b``) or 32 (float32 soft labels).
        delta: send only rows that changed since the last message on this link.
        packing: ``"vector"`` (the ``C`` grid counts per row) or ``"index"`` (one grid-point rank per row).
        coding: ``"nnc"`` (an NNC bitstream) or ``"raw"`` (float32 bytes, plain FD; needs ``bits=32`` and no delta).
        float_qp: QP of the float tensor for ``bits=32`` with ``coding="nnc"`` (-64: step 2**-16).
        float_dq: dependent quantisation of that tensor.
    """

    bits: int = 2
    delta: bool = True
    packing: str = "vector"
    coding: str = "nnc"
    float_qp: int = -64
    float_dq: bool = False

    def __post_init__(self):
        if self.bits != FLOAT_BITS:
            grid_levels(self.bits)
        if self.packing not in ("vector", "index"):
            raise ValueError(f"packing must be 'vector' or 'index', got {self.packing!r}")
        if self.coding not in ("nnc", "raw"):
            raise ValueError(f"coding must be 'nnc' or 'raw', got {self.coding!r}")
        if self.coding == "raw" and (self.bits != FLOAT_BITS or self.delta):
            raise ValueError("coding='raw' is plain float32 FD: needs bits=32 and delta=False")

    def replace(self, **kw) -> "LabelCodecConfig":
        return replace(self, **kw)

    @property
    def label(self) -> str:
        if self.coding == "raw":
            return "FD (float32 raw)"
        s = f"CFD b={self.bits}"
        if self.packing == "index" and self.bits != FLOAT_BITS:
            s += " idx"
        return s + (" +delta" if self.delta else "")


class SoftLabelEncoder:
    """Sender side of one link. ``encode(p)`` quantises ``p`` (rows = public samples), delta-codes it against
    what the receiver holds and returns the message bytes; :attr:`reference` is then the receiver's copy."""

    def __init__(self, config: LabelCodecConfig | None = None):
        self.config = config or LabelCodecConfig()
        self.reference: np.ndarray | None = None      # int32 grid counts, or float32 labels for b = 32
        self.messages = 0

    def quantize(self, p: np.ndarray) -> np.ndarray:
        if self.config.bits == FLOAT_BITS:
            return np.asarray(p, dtype=np.float32)
        return quantize_soft_labels(p, self.config.bits)

    def labels(self) -> np.ndarray | None:
        """The receiver's soft labels as probabilities."""
        return None if self.reference is None else _as_prob(self.reference, self.config.bits)

    def encode(self, p: np.ndarray) -> bytes:
        cfg = self.config
        p = np.asarray(p)
        if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
            raise ValueError("soft labels must be a non-empty (rows, classes) array")
        if cfg.coding == "raw":
            x = np.ascontiguousarray(p, dtype=np.float32)
            self.reference = x.copy()
            self.messages += 1
            return x.tobytes()
        q = self.quantize(p)
        n, c = q.shape
        ref = self.reference if (cfg.delta and self.reference is not None and self.reference.shape == q.shape) \
            else None
        if ref is None:
            rows = np.arange(n)
        elif cfg.bits == FLOAT_BITS:
            tol = float(step_size(cfg.float_qp, 2)) / 2
            rows = np.flatnonzero(np.abs(q - ref).max(1) > tol)
        else:
            rows = np.flatnonzero((q != ref).any(1))
        pack = "float" if cfg.bits == FLOAT_BITS else cfg.packing
        tensors: dict[str, np.ndarray] = {}
        mode = "full"
        if ref is not None:
            mode = "mask"
            if len(rows):
                mask = np.zeros(n, np.int32)
                mask[rows] = 1
                gaps = np.diff(np.concatenate([[-1], rows])).astype(np.int32) - 1
                cand = {"mask": {"sl.mask": mask}, "index": {"sl.gaps": gaps}}
                sizes = {k: len(encode(v)) for k, v in cand.items()}
                mode = min(sizes, key=sizes.get)
                tensors.update(cand[mode])
        meta = np.array([cfg.bits, n, c, _PACK[pack], _MODES[mode], len(rows)], np.int32)
        tensors = {"sl.meta": meta, **tensors}
        if len(rows):
            sel = q[rows]
            if pack == "float":
                tensors["sl.rows"] = np.ascontiguousarray(sel, dtype=np.float32)
            elif pack == "index":
                tensors["sl.rows"] = rank_grid(sel, cfg.bits).astype(np.int32)
            else:
                tensors["sl.rows"] = np.ascontiguousarray(sel, dtype=np.int32)
        data = encode(tensors, EncoderConfig(qp=cfg.float_qp, dq=cfg.float_dq))
        # the receiver's state after this message, exactly as it will reconstruct it
        new = _apply(ref, decode(data), n, c)
        self.reference = new
        self.messages += 1
        return data


class SoftLabelDecoder:
    """Receiver side of one link: ``decode(bytes)`` returns the current soft labels (float32 probabilities)."""

    def __init__(self, config: LabelCodecConfig | None = None, shape: tuple[int, int] | None = None,
                 limits: DecoderConfig | None = None):
        self.config = config or LabelCodecConfig()
        self.shape = shape
        self.reference: np.ndarray | None = None
        # what a message for this link can hold (meta, row mask or gaps, rows): more is refused before decoding
        if limits is None and shape is not None:
            n, c = int(shape[0]), int(shape[1])
            limits = DecoderConfig.strict(max_total_bytes=max(16 * (6 + 2 * n + n * c), 1 << 16)).replace(
                max_units=16, max_tensor_elements=max(n * c, n, 6), max_rank=2)
        self.limits = limits

    def decode(self, data: bytes) -> np.ndarray:
        cfg = self.config
        if cfg.coding == "raw":
            x = np.frombuffer(bytes(data), dtype=np.float32)
            if self.shape is None or x.size != self.shape[0] * self.shape[1]:
                raise ValueError("raw soft labels need the (rows, classes) shape and a matching payload")
            _check_probabilities(x)
            self.reference = x.reshape(self.shape).copy()
            return self.reference.copy()
        tensors = decode(data, self.limits)
        meta = tensors["sl.meta"]
        bits, n, c = int(meta[0]), int(meta[1]), int(meta[2])
        if bits != cfg.bits or (self.shape is not None and (n, c) != tuple(self.shape)):
            raise ValueError(f"soft-label message for b={bits}, {n}x{c} does not fit this link "
                             f"(b={cfg.bits}, {self.shape})")
        ref = self.reference if int(meta[4]) != _MODES["full"] else None
        if int(meta[4]) != _MODES["full"] and self.reference is None:
            raise ValueError("delta message without a reference on the receiver")
        new = _apply(ref, tensors, n, c)
        out = _as_prob(new, bits)
        _check_probabilities(out)
        self.reference = new
        return out


def _check_probabilities(p: np.ndarray) -> None:
    """Soft labels from a stranger: finite and in [0, 1] (a float message could carry anything)."""
    p = np.asarray(p)
    if not np.isfinite(p).all() or (p < -1e-3).any() or (p > 1 + 1e-3).any():
        raise UpdateStateError("soft labels must be finite probabilities in [0, 1]")


def _as_prob(ref: np.ndarray, bits: int) -> np.ndarray:
    return ref.astype(np.float32) if bits == FLOAT_BITS else dequantize(ref, bits)


def _apply(ref, tensors: dict, n: int, c: int) -> np.ndarray:
    """Receiver state after a decoded message (shared by encoder and decoder so both stay identical)."""
    meta = tensors["sl.meta"]
    bits, pack, mode, count = int(meta[0]), int(meta[3]), int(meta[4]), int(meta[5])
    if mode == _MODES["full"]:
        rows = np.arange(n)
        ref = None
    elif count == 0:
        rows = np.zeros(0, np.int64)
    elif mode == _MODES["mask"]:
        rows = np.flatnonzero(tensors["sl.mask"].reshape(-1))
    else:
        rows = np.cumsum(tensors["sl.gaps"].reshape(-1).astype(np.int64) + 1) - 1
    if len(rows) != count or (len(rows) and (rows.min() < 0 or rows.max() >= n)):
        raise ValueError("soft-label message: row positions do not match the header")
    if pack == _PACK["float"]:
        out = np.zeros((n, c), np.float32) if ref is None else ref.astype(np.float32).copy()
        if count:
            out[rows] = tensors["sl.rows"].reshape(count, c).astype(np.float32)
        return out
    out = np.zeros((n, c), np.int32) if ref is None else ref.astype(np.int32).copy()
    if count:
        r = tensors["sl.rows"]
        out[rows] = unrank_grid(r, c, bits) if pack == _PACK["index"] else r.reshape(count, c)
    if (out.sum(1) != grid_levels(bits)).any() or (out < 0).any():
        raise ValueError("soft-label message: rows are not points of the b-bit grid")
    return out


# --------------------------------------------------------------------------------------------------------
# results of an FD / CFD run (the in-process loop and the Flower strategy)
# --------------------------------------------------------------------------------------------------------
@dataclass
class FDResult:
    accuracy: list[float] = field(default_factory=list)          # server (distilled) model, per round
    client_accuracy: list[float] = field(default_factory=list)   # mean over clients, per round
    up_bytes: list[int] = field(default_factory=list)
    down_bytes: list[int] = field(default_factory=list)
    changed_rows_up: list[float] = field(default_factory=list)   # fraction of rows sent up (delta coding)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("accuracy", "client_accuracy", "up_bytes", "down_bytes",
                                              "changed_rows_up", "seconds")}
