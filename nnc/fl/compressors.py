"""Classic FL update compressors (QSGD, TernGrad, signSGD/Signum, top-k/DGC, PowerSGD, Atomo) carried in NNC.

Every compressor turns an update ``{name: float32 array}`` plus per-client state into a handful of tensors,
and those tensors are the whole message: they are coded into one standard NNC bitstream (``nnc.encode``) and
the receiver rebuilds the update from ``nnc.decode`` of that bitstream alone (it only knows the model's
tensor names and shapes). Each kind of tensor goes in the NNC mode that suits it:

* integer levels, signs and index gaps are integer tensors, coded **losslessly** by CABAC (NNR_PT_INT);
* scales, norms, kept values and low-rank factors are float tensors whose values the compressor has already
  put on the quantisation lattice ``level * 2**e`` of the QP ``4 * e`` (qp_density 2), so NNC's uniform
  quantiser reproduces them **exactly**. That makes the client's idea of what it sent equal to what the
  server decodes, so error feedback is exact, and lets unbiased methods round scales up (QSGD, TernGrad)
  or stochastically (Atomo) instead of adding a rounding bias;
* top-k values go dense-with-zeros (CABAC's significance flags and row skipping code the positions) or as
  ``<name>.topk_idx`` (index gaps, INT) + ``<name>.topk_val`` pairs.

Tensor names in the bitstream are ``<name>.<suffix>`` (e.g. ``fc1.weight.qsgd_norm``); the receiver rejects
unknown names and wrong shapes with :class:`~nnc.errors.UpdateStateError`.

Use::

    comp = QSGD(levels=16)
    state = comp.init_state(model)                          # flat {key: ndarray}, storable anywhere
    data, sent, state = comp.encode(update, state)          # bytes on the wire, what the server will get
    update_hat = comp.decode(data, model)                   # server side, from the bitstream only

or plug it into the FL transport with ``UplinkConfig(compressor=comp)`` (in-process loop and Flower).
Randomness (stochastic rounding, sampling, PowerSGD's initial Q) comes from a generator seeded by
``(seed, step, crc32(update))``, so a run is reproducible and different clients draw different numbers.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import numpy as np

from ..codec import decode as _nnc_decode
from ..codec import encode as _nnc_encode
from ..config import DecoderConfig, EncoderConfig
from ..errors import NNCError, UpdateStateError
from ..incremental import in_model_shape
from .codecs import limits_for

__all__ = ["Compressor", "Packet", "QSGD", "TernGrad", "SignSGD", "TopK", "PowerSGD", "Atomo", "NoCompression",
           "lattice_qp", "snap", "ALL"]

Tensors = Mapping[str, np.ndarray]
State = dict

_QP_DENSITY = 2
_STATISTICS_SUFFIX = ".statistics"   # running statistics travel beside the method's tensors, as dense floats
_STATISTICS_BITS = 16
_E_MIN, _E_MAX = -32, 31          # qp = 4 e must stay in [-128, 127] at qp_density 2


# --------------------------------------------------------------------------------------------------------
# lattice helpers
# --------------------------------------------------------------------------------------------------------
def lattice_qp(max_abs: float, bits: int) -> int:
    """A QP with a power-of-two step ``2**e`` (``qp = 4 e``) giving ``max_abs`` about ``bits`` bits of levels."""
    if not (max_abs > 0 and math.isfinite(max_abs)):
        return 0
    e = math.floor(math.log2(max_abs)) + 1 - int(bits)
    return 4 * int(min(_E_MAX, max(_E_MIN, e)))


def snap(x: np.ndarray, qp: int, mode: str = "nearest", rng: np.random.Generator | None = None) -> np.ndarray:
    """Put ``x`` on the lattice of ``qp`` (a multiple of 4): ``nearest``, ``up`` (towards +inf) or
    ``stochastic`` (unbiased: ``floor(x/step + u)``). Returns float32 values NNC reproduces exactly."""
    if qp % 4:
        raise ValueError("snap needs a QP with a power-of-two step (a multiple of 4)")
    step = 2.0 ** (qp // 4)
    y = np.asarray(x, np.float64) / step
    if mode == "nearest":
        lev = np.rint(y)
    elif mode == "up":
        lev = np.ceil(y)
    elif mode == "stochastic":
        lev = np.floor(y + rng.random(y.shape))
    else:
        raise ValueError(mode)
    return (lev.astype(np.float32) * np.float32(step)).astype(np.float32)


@dataclass
class Packet:
    """The tensors of one message (``tensors``), the QP of each float tensor (``qp``), and per-client state
    entries the compressor wants to keep (``state``, never sent)."""

    tensors: dict = field(default_factory=dict)
    qp: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    aux: dict = field(default_factory=dict)

    def add_float(self, name: str, values: np.ndarray, qp: int) -> None:
        self.tensors[name] = np.asarray(values, np.float32)
        self.qp[name] = int(qp)

    def encoder_config(self) -> EncoderConfig:
        # uniform quantisation (no DQ) so the pre-snapped values are reproduced exactly
        return EncoderConfig(qp=0, nonweight_qp=0, qp_per_tensor=dict(self.qp), qp_density=_QP_DENSITY, dq=False)


class _Reader:
    """Read access to decoded tensors that remembers what was used (leftover names are rejected)."""

    def __init__(self, tensors: Tensors):
        self.t = dict(tensors)
        self.used: set = set()

    def get(self, name, shape=None, ndim=None):
        if name not in self.t:
            return None
        self.used.add(name)
        a = np.asarray(self.t[name])
        if shape is not None:
            a = in_model_shape(a, shape)
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise UpdateStateError(f"tensor {name!r} has shape {a.shape}, expected {tuple(shape)}")
        if ndim is not None and a.ndim != ndim:
            raise UpdateStateError(f"tensor {name!r} has rank {a.ndim}, expected {ndim}")
        return a

    def need(self, name, shape=None, ndim=None):
        a = self.get(name, shape, ndim)
        if a is None:
            raise UpdateStateError(f"tensor {name!r} missing")
        return a

    def leftover(self):
        return [k for k in self.t if k not in self.used and k != "_empty"]


def _f32(x: Tensors) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float32) for k, v in x.items()}


def _as_int(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype.kind not in "iub":
        raise UpdateStateError(f"tensor {name!r} should be an integer tensor, got {a.dtype}")
    return a.astype(np.int64)


def _as_float(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype.kind != "f":
        raise UpdateStateError(f"tensor {name!r} should be a float tensor, got {a.dtype}")
    return a.astype(np.float64)


def _limits(model: Tensors) -> DecoderConfig:
    return limits_for({k: np.shape(v) for k, v in model.items()}, max_units=8 + 4 * len(model))


# --------------------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Compressor:
    """Base class. Subclasses implement :meth:`compress` (values -> :class:`Packet`) and :meth:`reconstruct`
    (decoded tensors -> dense update); error feedback and the rest are shared.

    With ``error_feedback`` the state holds ``residual/<name>`` and the invariant
    ``sent + residual_new == update + residual_old`` holds (up to float32 rounding)."""

    error_feedback: bool = False
    seed: int = 0
    name = "base"

    # --- state ------------------------------------------------------------------------------------------
    def init_state(self, model: Tensors) -> State:
        st = {"step": np.zeros(1, np.int64)}
        if self.error_feedback:
            st.update({f"residual/{k}": np.zeros(np.shape(v), np.float32) for k, v in model.items()})
        if getattr(self, "momentum", 0):  # compressors with a momentum option (Signum, DGC)
            st.update({f"momentum/{k}": np.zeros(np.shape(v), np.float32) for k, v in model.items()})
        return st

    def residual(self, state: State) -> dict[str, np.ndarray]:
        return {k[len("residual/"):]: v for k, v in state.items() if k.startswith("residual/")}

    def prepare(self, update: Tensors, state: State) -> dict[str, np.ndarray]:
        """The values to compress (update plus residual with error feedback); may update ``state`` in place."""
        if not self.error_feedback:
            return dict(update)
        return {k: (v + state[f"residual/{k}"]).astype(np.float32) for k, v in update.items()}

    def finish(self, x: Tensors, sent: Tensors, state: State, packet: Packet) -> None:
        if self.error_feedback:
            for k in x:
                state[f"residual/{k}"] = (x[k] - sent[k]).astype(np.float32)

    def restore(self, state: State, lost: Tensors) -> State:
        """A message was lost: with error feedback put what it carried back into the residual."""
        state = {k: np.array(v) for k, v in state.items()}
        if self.error_feedback:
            for k, v in lost.items():
                state[f"residual/{k}"] = (state[f"residual/{k}"] + v).astype(np.float32)
        return state

    # --- the method ---------------------------------------------------------------------------------------
    def compress(self, x: Tensors, state: State, rng: np.random.Generator) -> Packet:
        raise NotImplementedError

    def reconstruct(self, t: _Reader, shapes: Mapping[str, tuple]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # --- driver -------------------------------------------------------------------------------------------
    def rng_for(self, x: Tensors, step: int) -> np.random.Generator:
        crc = 0
        for k in sorted(x):
            crc = zlib.crc32(np.ascontiguousarray(x[k], np.float32).tobytes(), crc)
        return np.random.default_rng([self.seed, step, crc])

    def apply(self, update: Tensors, state: State, statistics: Iterable[str] = ()
              ) -> tuple[Packet, dict[str, np.ndarray], State]:
        """Compress without coding: ``(packet, sent, new_state)`` (``sent`` = what the receiver rebuilds).

        ``statistics``: names of running statistics (``nnc.fl.transport.RUNNING_STATISTICS``), which bypass the
        method and its error feedback and travel as dense floats (their next update measures an unsent gap
        again, so error feedback would count it twice)."""
        update = _f32(update)
        wanted = set(statistics)
        stats = [k for k in update if k in wanted]
        state = {k: np.array(v) for k, v in state.items()}
        step = int(state["step"][0]) if "step" in state else 0
        x = self.prepare({k: v for k, v in update.items() if k not in stats}, state)
        pk = self.compress(x, state, self.rng_for(x, step))
        for k in stats:
            qp = lattice_qp(float(np.abs(update[k]).max(initial=0)), _STATISTICS_BITS)
            pk.add_float(k + _STATISTICS_SUFFIX, snap(update[k], qp), qp)
        if not pk.tensors:
            pk.tensors["_empty"] = np.zeros(1, np.int8)
        sent = self.rebuild(pk.tensors, {k: v.shape for k, v in update.items()}, stats)
        state.update(pk.state)
        self.finish(x, sent, state, pk)
        state["step"] = np.array([step + 1], np.int64)
        return pk, sent, state

    def encode(self, update: Tensors, state: State, statistics: Iterable[str] = ()
               ) -> tuple[bytes, dict[str, np.ndarray], State]:
        """Compress and code one update: ``(bitstream, sent, new_state)``."""
        pk, sent, state = self.apply(update, state, statistics)
        return _nnc_encode(pk.tensors, pk.encoder_config()), sent, state

    def rebuild(self, tensors: Tensors, shapes: Mapping[str, tuple], statistics: Iterable[str] = ()
                ) -> dict[str, np.ndarray]:
        r = _Reader(tensors)
        stats = set(statistics)
        try:
            out = {k: _as_float(r.need(k + _STATISTICS_SUFFIX, shapes[k]), k) for k in shapes if k in stats}
            out.update(self.reconstruct(r, {k: v for k, v in shapes.items() if k not in stats}))
        except NNCError:
            raise
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise UpdateStateError(f"{self.name}: inconsistent message: {e}") from e
        extra = r.leftover()
        if extra:
            raise UpdateStateError(f"{self.name}: unexpected tensors {extra[:5]}")
        return {k: np.asarray(out[k], np.float32).reshape(shapes[k]) for k in shapes}

    def decode(self, data: bytes, model: Tensors, limits: DecoderConfig | None = None,
               statistics: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """Receiver: rebuild the dense update from the bitstream (shapes from ``model``; strict limits)."""
        tensors = _nnc_decode(bytes(data), limits or _limits(model))
        return self.rebuild(tensors, {k: np.shape(v) for k, v in model.items()}, statistics)

    def replace(self, **kw) -> "Compressor":
        return replace(self, **kw)

    @property
    def label(self) -> str:
        return self.name


# --------------------------------------------------------------------------------------------------------
# the compressors
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoCompression(Compressor):
    """Every tensor as one float tensor at ``bits`` bits of precision (a control; ``bits=24`` ~ float32)."""

    bits: int = 24
    name = "float"

    def compress(self, x, state, rng):
        pk = Packet()
        for k, v in x.items():
            qp = lattice_qp(float(np.abs(v).max(initial=0)), self.bits)
            pk.add_float(k, snap(v, qp), qp)
        return pk

    def reconstruct(self, t, shapes):
        return {k: _as_float(t.need(k, shapes[k]), k) for k in shapes}


@dataclass(frozen=True)
class QSGD(Compressor):
    """QSGD (Alistarh et al. 2017): per bucket of ``bucket_size`` values, ``norm * sign * l / s`` with
    ``l = floor(|v| / norm * s + u)``, unbiased. Levels: ``<name>.qsgd_levels`` (int8, int16 if s > 127,
    lossless); norms: ``<name>.qsgd_norm`` rounded *up* to a ``norm_bits`` lattice (keeps it unbiased)."""

    levels: int = 16
    bucket_size: int = 512
    norm_bits: int = 20
    name = "qsgd"

    def __post_init__(self):
        if not 1 <= self.levels <= 32767:
            raise ValueError("QSGD levels must be in 1..32767")

    @property
    def label(self):
        return f"qsgd(s={self.levels})"

    def compress(self, x, state, rng):
        pk, s, bs = Packet(), self.levels, self.bucket_size
        for k, v in x.items():
            flat = np.asarray(v, np.float64).ravel()
            nb = -(-flat.size // bs)
            b = np.zeros(nb * bs)
            b[:flat.size] = flat
            b = b.reshape(nb, bs)
            norms = np.sqrt((b * b).sum(1))
            qp = lattice_qp(float(norms.max(initial=0)), self.norm_bits)
            nh = snap(norms, qp, "up").astype(np.float64)
            r = np.divide(np.abs(b) * s, nh[:, None], out=np.zeros_like(b), where=nh[:, None] > 0)
            lev = np.minimum(np.floor(r + rng.random(r.shape)), s) * np.sign(b)
            dt = np.int8 if s <= 127 else np.int16
            pk.tensors[f"{k}.qsgd_levels"] = lev.ravel()[:flat.size].reshape(np.shape(v)).astype(dt)
            pk.add_float(f"{k}.qsgd_norm", nh, qp)
        return pk

    def reconstruct(self, t, shapes):
        out, s, bs = {}, self.levels, self.bucket_size
        for k, shp in shapes.items():
            n = int(np.prod(shp))
            nb = -(-n // bs)
            lev = _as_int(t.need(f"{k}.qsgd_levels", shp), k).ravel()
            if np.abs(lev).max(initial=0) > s:
                raise UpdateStateError(f"{k}: QSGD level beyond s={s}")
            norm = _as_float(t.need(f"{k}.qsgd_norm", (nb,)), k)
            b = np.zeros(nb * bs)
            b[:n] = lev
            out[k] = (b.reshape(nb, bs) * (norm[:, None] / s)).ravel()[:n]
        return out


@dataclass(frozen=True)
class TernGrad(Compressor):
    """TernGrad (Wen et al. 2017): ``scale * sign(v) * Bernoulli(|v| / scale)``, ``scale = max|v|`` per
    tensor (rounded up to a ``scale_bits`` lattice), unbiased. ``<name>.terngrad`` int8 in {-1, 0, 1},
    ``<name>.terngrad_scale`` (1,) float."""

    scale_bits: int = 20
    name = "terngrad"

    def compress(self, x, state, rng):
        pk = Packet()
        for k, v in x.items():
            a = np.asarray(v, np.float64)
            qp = lattice_qp(float(np.abs(a).max(initial=0)), self.scale_bits)
            sc = float(snap(np.array([np.abs(a).max(initial=0)]), qp, "up")[0])
            p = np.abs(a) / sc if sc > 0 else np.zeros_like(a)
            pk.tensors[f"{k}.terngrad"] = (np.sign(a) * (rng.random(a.shape) < p)).astype(np.int8)
            pk.add_float(f"{k}.terngrad_scale", np.array([sc]), qp)
        return pk

    def reconstruct(self, t, shapes):
        out = {}
        for k, shp in shapes.items():
            lev = _as_int(t.need(f"{k}.terngrad", shp), k)
            if np.abs(lev).max(initial=0) > 1:
                raise UpdateStateError(f"{k}: TernGrad level outside {{-1, 0, 1}}")
            out[k] = lev * _as_float(t.need(f"{k}.terngrad_scale", (1,)), k)[0]
        return out


@dataclass(frozen=True)
class SignSGD(Compressor):
    """signSGD / Signum with error feedback (Bernstein et al. 2018; EF-signSGD, Karimireddy et al. 2019):
    ``p = m + residual`` with momentum ``m = beta m + (1 - beta) update`` (``momentum=0``: plain signSGD),
    sent ``mean|p| * sign(p)`` per tensor. ``<name>.sign`` int8 +-1 (lossless), ``<name>.sign_scale`` (1,)."""

    momentum: float = 0.0
    error_feedback: bool = True
    scale_bits: int = 16
    name = "signsgd"

    @property
    def label(self):
        return ("signum" if self.momentum else "signsgd") + ("+ef" if self.error_feedback else "")

    def prepare(self, update, state):
        if self.momentum:
            b = np.float32(self.momentum)
            for k, v in update.items():
                state[f"momentum/{k}"] = (b * state[f"momentum/{k}"] + (1 - b) * v).astype(np.float32)
            update = {k: state[f"momentum/{k}"] for k in update}
        return super().prepare(update, state)

    def compress(self, x, state, rng):
        pk = Packet()
        for k, v in x.items():
            a = np.asarray(v, np.float64)
            sc = float(np.abs(a).mean()) if a.size else 0.0
            qp = lattice_qp(sc, self.scale_bits)
            pk.tensors[f"{k}.sign"] = np.where(a < 0, -1, 1).astype(np.int8)
            pk.add_float(f"{k}.sign_scale", snap(np.array([sc]), qp), qp)
        return pk

    def reconstruct(self, t, shapes):
        out = {}
        for k, shp in shapes.items():
            sg = _as_int(t.need(f"{k}.sign", shp), k)
            if not np.isin(sg, (-1, 1)).all():
                raise UpdateStateError(f"{k}: sign outside {{-1, 1}}")
            out[k] = sg * _as_float(t.need(f"{k}.sign_scale", (1,)), k)[0]
        return out


@dataclass(frozen=True)
class TopK(Compressor):
    """Top-k sparsification with error accumulation, DGC-style (Lin et al. 2018) when ``momentum > 0``
    (momentum correction ``u = m u + g``, ``v = v + u``, send top-k of ``v``, momentum factor masking).

    ``fraction`` of the values of each tensor are kept, on a ``value_bits`` lattice. ``encoding="dense"``
    codes the tensor with zeros (``<name>``; CABAC significance flags + row skipping carry the positions),
    ``"sparse"`` codes ``<name>.topk_idx`` (gaps between sorted flat indices, int32, lossless) and
    ``<name>.topk_val``."""

    fraction: float = 0.01
    momentum: float = 0.0
    encoding: str = "dense"
    value_bits: int = 8
    error_feedback: bool = True
    name = "topk"

    def __post_init__(self):
        if self.encoding not in ("dense", "sparse"):
            raise ValueError("encoding must be 'dense' or 'sparse'")
        if not 0 < self.fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")

    @property
    def label(self):
        return ("dgc" if self.momentum else "topk") + f"({self.fraction:g},{self.encoding})"

    def prepare(self, update, state):
        if self.momentum:
            m = np.float32(self.momentum)
            for k, v in update.items():
                state[f"momentum/{k}"] = (m * state[f"momentum/{k}"] + v).astype(np.float32)
            update = {k: state[f"momentum/{k}"] for k in update}
        return super().prepare(update, state)

    def finish(self, x, sent, state, packet):
        super().finish(x, sent, state, packet)
        if self.momentum:
            for k, idx in packet.aux.items():
                u = state[f"momentum/{k}"].reshape(-1).copy()
                u[idx] = 0
                state[f"momentum/{k}"] = u.reshape(state[f"momentum/{k}"].shape)

    def compress(self, x, state, rng):
        pk = Packet()
        for k, v in x.items():
            flat = np.asarray(v, np.float32).ravel()
            keep = max(1, min(flat.size, math.ceil(self.fraction * flat.size)))
            idx = np.sort(np.argpartition(np.abs(flat), flat.size - keep)[flat.size - keep:]) \
                if keep < flat.size else np.arange(flat.size)
            vals = flat[idx]
            qp = lattice_qp(float(np.abs(vals).max(initial=0)), self.value_bits)
            vals = snap(vals, qp)
            pk.aux[k] = idx
            if self.encoding == "dense":
                d = np.zeros(flat.size, np.float32)
                d[idx] = vals
                pk.add_float(k, d.reshape(np.shape(v)), qp)
            else:
                pk.tensors[f"{k}.topk_idx"] = np.diff(idx, prepend=-1).astype(np.int32) - 1
                pk.add_float(f"{k}.topk_val", vals, qp)
        return pk

    def reconstruct(self, t, shapes):
        out = {}
        for k, shp in shapes.items():
            if self.encoding == "dense":
                out[k] = _as_float(t.need(k, shp), k)
                continue
            n = int(np.prod(shp))
            gaps = _as_int(t.need(f"{k}.topk_idx", ndim=1), k)
            vals = _as_float(t.need(f"{k}.topk_val", gaps.shape), k)
            if (gaps < 0).any():
                raise UpdateStateError(f"{k}: negative index gap")
            idx = np.cumsum(gaps + 1) - 1
            if idx.size and idx[-1] >= n:
                raise UpdateStateError(f"{k}: index beyond the tensor")
            d = np.zeros(n)
            d[idx] = vals
            out[k] = d
        return out


def _matrix_shape(shape) -> tuple[int, int] | None:
    if len(shape) < 2:
        return None
    n = int(shape[0])
    return n, int(np.prod(shape)) // max(n, 1)


@dataclass(frozen=True)
class PowerSGD(Compressor):
    """PowerSGD (Vogels et al. 2019): one power iteration per round, ``P = orth(M Q)``, ``Q = M^T P``, sent
    ``P Q^T``, with error feedback and warm start (``Q`` kept from the last round). Matrices (tensors of rank
    >= 2 viewed as ``shape[0] x rest``) go as ``<name>.powersgd_p`` / ``<name>.powersgd_q`` on a
    ``factor_bits`` lattice; vectors and matrices too small to gain go whole (``<name>``, ``vector_bits``)."""

    rank: int = 2
    error_feedback: bool = True
    warm_start: bool = True
    factor_bits: int = 12
    vector_bits: int = 16
    name = "powersgd"

    @property
    def label(self):
        return f"powersgd(r={self.rank})"

    def _lowrank(self, shape) -> tuple[int, int] | None:
        nm = _matrix_shape(shape)
        if nm is None or self.rank * (nm[0] + nm[1]) >= nm[0] * nm[1]:
            return None
        return nm

    def init_state(self, model):
        st = super().init_state(model)
        rng = np.random.default_rng([self.seed, 1234])
        for k, v in model.items():
            nm = self._lowrank(np.shape(v))
            if nm is not None and self.warm_start:
                st[f"q/{k}"] = rng.standard_normal((nm[1], self.rank)).astype(np.float32)
        return st

    def compress(self, x, state, rng):
        pk = Packet()
        for k, v in x.items():
            nm = self._lowrank(np.shape(v))
            if nm is None:
                qp = lattice_qp(float(np.abs(v).max(initial=0)), self.vector_bits)
                pk.add_float(k, snap(v, qp), qp)
                continue
            m = np.asarray(v, np.float64).reshape(nm)
            q = state[f"q/{k}"].astype(np.float64) if self.warm_start else rng.standard_normal((nm[1], self.rank))
            p, _ = np.linalg.qr(m @ q)
            qp_p = lattice_qp(float(np.abs(p).max(initial=0)), self.factor_bits)
            p = snap(p, qp_p).astype(np.float64)
            q = m.T @ p
            qp_q = lattice_qp(float(np.abs(q).max(initial=0)), self.factor_bits)
            qs = snap(q, qp_q)
            pk.add_float(f"{k}.powersgd_p", p, qp_p)
            pk.add_float(f"{k}.powersgd_q", qs, qp_q)
            if self.warm_start:
                # a zero Q would stall the power iteration; keep the previous one then
                pk.state[f"q/{k}"] = q.astype(np.float32) if np.abs(q).max(initial=0) > 0 else state[f"q/{k}"]
        return pk

    def reconstruct(self, t, shapes):
        out = {}
        for k, shp in shapes.items():
            nm = self._lowrank(shp)
            if nm is None:
                out[k] = _as_float(t.need(k, shp), k)
                continue
            p = _as_float(t.need(f"{k}.powersgd_p", (nm[0], self.rank)), k)
            q = _as_float(t.need(f"{k}.powersgd_q", (nm[1], self.rank)), k)
            out[k] = p @ q.T
        return out


def atomo_probabilities(s: np.ndarray, budget: float) -> np.ndarray:
    """Atomo's sampling probabilities: ``p_i`` proportional to ``s_i``, capped at 1, summing to ``budget``."""
    s = np.asarray(s, np.float64)
    p = np.zeros_like(s)
    active = s > 0
    if budget >= active.sum():
        p[active] = 1.0
        return p
    fixed = np.zeros_like(active)
    while True:
        rest = budget - fixed.sum()
        free = active & ~fixed
        p[free] = rest * s[free] / s[free].sum()
        over = free & (p >= 1)
        if not over.any():
            break
        p[over] = 1.0
        fixed |= over
    return np.minimum(p, 1.0)


@dataclass(frozen=True)
class Atomo(Compressor):
    """Atomo (Wang et al. 2018) on the SVD: singular triplet ``i`` is kept with probability ``p_i`` (expected
    ``budget`` kept per matrix) and weighted ``1/p_i``; unbiased. Sent: ``<name>.atomo_u`` (``U_kept *
    s/p``) and ``<name>.atomo_v``, stochastically rounded on a ``factor_bits`` lattice (independent
    rounding keeps the product unbiased); vectors whole (``<name>``, stochastic rounding)."""

    budget: float = 2.0
    factor_bits: int = 12
    vector_bits: int = 16
    name = "atomo"

    @property
    def label(self):
        return f"atomo(s={self.budget:g})"

    def compress(self, x, state, rng):
        pk = Packet()
        for k, v in x.items():
            nm = _matrix_shape(np.shape(v))
            if nm is None or self.budget * (nm[0] + nm[1]) >= nm[0] * nm[1]:
                qp = lattice_qp(float(np.abs(v).max(initial=0)), self.vector_bits)
                pk.add_float(k, snap(v, qp, "stochastic", rng), qp)
                continue
            u, s, vt = np.linalg.svd(np.asarray(v, np.float64).reshape(nm), full_matrices=False)
            p = atomo_probabilities(s, self.budget)
            sel = rng.random(s.shape) < p
            if not sel.any():
                continue
            us = u[:, sel] * (s[sel] / p[sel])
            vs = vt[sel].T
            qu = lattice_qp(float(np.abs(us).max()), self.factor_bits)
            qv = lattice_qp(float(np.abs(vs).max()), self.factor_bits)
            pk.add_float(f"{k}.atomo_u", snap(us, qu, "stochastic", rng), qu)
            pk.add_float(f"{k}.atomo_v", snap(vs, qv, "stochastic", rng), qv)
        return pk

    def reconstruct(self, t, shapes):
        out = {}
        for k, shp in shapes.items():
            nm = _matrix_shape(shp)
            if nm is None or self.budget * (nm[0] + nm[1]) >= nm[0] * nm[1]:
                out[k] = _as_float(t.need(k, shp), k)
                continue
            u = t.get(f"{k}.atomo_u", ndim=2)
            if u is None:
                out[k] = np.zeros(nm)
                continue
            if u.shape[0] != nm[0] or not 1 <= u.shape[1] <= min(nm):
                raise UpdateStateError(f"{k}: atomo_u has shape {u.shape}")
            vv = _as_float(t.need(f"{k}.atomo_v", (nm[1], u.shape[1])), k)
            out[k] = _as_float(u, k) @ vv.T
        return out


def ALL() -> dict[str, Compressor]:
    """The benchmark's line-up, ``label -> compressor``."""
    cs = [QSGD(levels=4), QSGD(levels=16), TernGrad(), SignSGD(), SignSGD(momentum=0.9),
          TopK(fraction=0.01), TopK(fraction=0.01, momentum=0.9), TopK(fraction=0.01, encoding="sparse"),
          PowerSGD(rank=2), Atomo(budget=2)]
    return {c.label: c for c in cs}
