"""Incremental (differential) coding of model updates, 2nd edition "ICNN" (spec §4).

An update bitstream is an ordinary NNC bitstream whose tensors are *differences* (new - old parameters),
with ``mps_parent_signalling_enabled_flag = 1`` and, in every NDU, a parent reference (``put_node_depth``
one deeper than the tensor's previous update). Two coding tools exploit the history that encoder and decoder
both hold:

* **TCA** (temporal context adaptation): the stored integers of a tensor's previous update select the CABAC
  contexts of the current one;
* **HDSP** (history-dependent significance probability): positions that were ever non-zero in earlier
  updates use their own significance contexts; the encoder codes each NDU with and without it and keeps the
  smaller.

:class:`UpdateEncoder` and :class:`UpdateDecoder` hold that state in memory (no files, no pickle) and must see
the same sequence of bitstreams. Tensors whose quantised update is all zero are not sent (their NDU is
omitted, as the reference does) and do not advance the state. Bitstreams interoperate with NNCodec 2.1.3's
``compress(..., compress_differences=True, approx_param_base=..., update_base_param=True, tca=...)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from . import bitstream as bs
from .codec import DecodedModel, Decoder, Encoder, TensorPlan, encode_ndu
from .coding.ndu import NduParent
from .config import DecoderConfig, EncoderConfig
from .errors import ConfigError, InputError, UpdateStateError
from .coding.quant import reconstruct_uniform
from .topology import Topology

__all__ = ["UpdateEncoder", "UpdateDecoder", "UpdateState"]


@dataclass
class _TensorHistory:
    levels: np.ndarray | None = None        # stored integers of the last coded update (TCA base)
    put_node_depth: int = 0
    parameter_id: int | None = None
    seen_nonzero: np.ndarray | None = None  # HDSP history mask (uint8)


@dataclass
class UpdateState:
    """What encoder and decoder remember between updates, per tensor name."""

    device_id: int | None = None
    tensors: dict[str, _TensorHistory] = field(default_factory=dict)

    def history(self, name: str) -> _TensorHistory:
        return self.tensors.setdefault(name, _TensorHistory())

    # --- decoder hook (called by nnc.codec while preparing each NDU) --------------------------------
    def inputs_for(self, name: str, header) -> tuple[np.ndarray | None, np.ndarray | None]:
        """TCA base and HDSP history to decode the NDU of ``name`` with ``header``."""
        h = self.tensors.get(name)
        tca_base = None
        if getattr(header, "temporal_context_modeling_flag", 0) and h is not None and h.levels is not None:
            if header.put_node_depth is not None and header.put_node_depth - 1 != h.put_node_depth:
                raise UpdateStateError(
                    f"tensor {name!r}: put_node_depth {header.put_node_depth} does not follow the held depth "
                    f"{h.put_node_depth} (a missed or repeated update?)")
            if header.parameter_id is not None and h.parameter_id is not None \
                    and header.parameter_id != h.parameter_id:
                raise UpdateStateError(f"tensor {name!r}: parameter_id {header.parameter_id} differs from the "
                                       f"parent's {h.parameter_id}")
            if self.device_id is not None and header.device_id is not None and header.device_id != self.device_id:
                raise UpdateStateError(f"tensor {name!r}: device_id {header.device_id} differs from the "
                                       f"parent's {self.device_id}")
            tca_base = h.levels
        hist = h.seen_nonzero if h is not None else None
        dims = getattr(header, "tensor_dimensions", None)
        if dims is not None:
            n = 1
            for d in dims:
                n *= int(d)
            for what, held in (("TCA base", tca_base), ("HDSP history", hist)):
                if held is not None and held.size != n:
                    raise UpdateStateError(f"tensor {name!r}: the update has {n} elements but the held {what} "
                                           f"has {held.size} (the tensor changed shape?)")
        return tca_base, hist

    def record(self, name: str, levels: np.ndarray, put_node_depth: int, parameter_id: int | None,
               device_id: int | None) -> None:
        h = self.history(name)
        h.levels = levels
        h.put_node_depth = put_node_depth
        if h.parameter_id is None:
            h.parameter_id = parameter_id
        if self.device_id is None:
            self.device_id = device_id

    def add_to_history(self, coded: Mapping[str, np.ndarray]) -> None:
        for name, levels in coded.items():
            h = self.history(name)
            if h.seen_nonzero is None or h.seen_nonzero.shape != levels.shape:
                h.seen_nonzero = np.zeros(levels.shape, dtype=np.uint8)
            h.seen_nonzero |= (levels != 0)


def in_model_shape(decoded: np.ndarray, shape) -> np.ndarray:
    """NNC has no 0-d tensors: a 0-d model tensor is coded, and decoded, with shape (1,). Returns ``decoded``
    with the model's ``shape`` when that is the only difference, else unchanged (callers check shapes)."""
    return np.asarray(decoded).reshape(()) if tuple(shape) == () and np.shape(decoded) == (1,) else decoded


def in_model_shapes(decoded: Mapping[str, np.ndarray], model: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`in_model_shape` for every decoded tensor the model has (others are left for the caller to reject)."""
    return {k: in_model_shape(v, np.shape(model[k])) if k in model else v for k, v in decoded.items()}


class UpdateEncoder:
    """Codes successive model updates against state it shares with an :class:`UpdateDecoder`.

    >>> enc = UpdateEncoder(base={"w": w0})          # doctest: +SKIP
    >>> bitstream = enc.encode({"w": w1})            # codes w1 - (reconstructed) w0
    >>> bitstream = enc.encode_update({"w": delta})  # or code a difference directly

    Args:
        base: the model both sides hold (needed by :meth:`encode`, optional for :meth:`encode_update`).
        config: quantisation settings (profile 1 is required).
        tca: use temporal context adaptation from the second update of a tensor on.
        hdsp: try history-dependent significance coding and keep it where it is smaller.
    """

    def __init__(self, base: Mapping[str, np.ndarray] | None = None, config: EncoderConfig | None = None, *,
                 tca: bool = True, hdsp: bool = False):
        if isinstance(base, EncoderConfig) and config is None:  # UpdateEncoder(config), as Encoder(config)
            base, config = None, base
        if base is not None and not isinstance(base, Mapping):
            raise TypeError(f"base must be a mapping name -> array (or pass config=), got {type(base).__name__}")
        self.config = config if config is not None else EncoderConfig()
        if self.config.profile != 1:
            raise ConfigError("incremental coding needs profile 1")
        self._encoder = Encoder(self.config)
        self.tca = tca
        self.hdsp = hdsp
        self.state = UpdateState()
        self.model = ({k: np.array(v, copy=True) for k, v in base.items()} if base is not None else None)
        #: what the decoder reconstructs from the last update (the coded tensors only), name -> float32
        self.last_reconstruction: dict[str, np.ndarray] = {}

    def set_config(self, config: EncoderConfig) -> None:
        """Change the quantisation settings (e.g. the QP) for the following updates; the update history that
        TCA and HDSP use is kept."""
        if not isinstance(config, EncoderConfig) or config.profile != 1:
            raise ConfigError("set_config needs an EncoderConfig with profile 1")
        self.config = config
        self._encoder = Encoder(config)

    def encode(self, new_model: Mapping[str, np.ndarray]) -> bytes:
        """Code ``new_model - model`` and advance :attr:`model` to what the decoder will reconstruct."""
        if self.model is None:
            raise UpdateStateError("encode() needs a base model; pass base= or use encode_update()")
        delta = {}
        for k, v in new_model.items():
            if k not in self.model:
                raise InputError(f"tensor {k!r} is not in the base model")
            old = self.model[k]
            if np.shape(v) != old.shape:
                raise InputError(f"tensor {k!r} has shape {np.shape(v)}, the base has {old.shape}")
            if old.dtype.kind == "f":
                delta[k] = np.asarray(v, dtype=np.float32) - old.astype(np.float32)
            else:
                delta[k] = np.asarray(v).astype(np.int64) - old.astype(np.int64)
        data, recon = self._encode(delta)
        for k, d in recon.items():
            d = in_model_shape(d, self.model[k].shape)
            self.model[k] = (self.model[k].astype(np.float32) + d).astype(self.model[k].dtype) \
                if self.model[k].dtype.kind == "f" else (self.model[k] + d).astype(self.model[k].dtype)
        return data

    def encode_update(self, delta: Mapping[str, np.ndarray]) -> bytes:
        """Code ``delta`` (name -> difference array) as the next incremental bitstream."""
        data, recon = self._encode(delta)
        if self.model is not None:
            for k, d in recon.items():
                if k in self.model:
                    self.model[k] = (self.model[k] + in_model_shape(d, self.model[k].shape)).astype(self.model[k].dtype)
        return data

    def _encode(self, delta: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, np.ndarray]]:
        cfg = self.config
        plans = self._encoder.plan(delta)
        units = [bs.start_unit(1), bs.mps_unit(profile=1, qp_density=cfg.qp_density, parent_signalling=True),
                 bs.tpl_unit(Topology())]
        coded: dict[str, np.ndarray] = {}
        recon: dict[str, np.ndarray] = {}
        ndus = self._encoder._map(self._code_one, plans)
        for plan, ndu in zip(plans, ndus):
            if ndu is None:            # all-zero update: no NDU, state unchanged
                continue
            units.append(ndu)
            h = self.state.history(plan.name)
            self.state.record(plan.name, plan.q, h.put_node_depth + 1, self._parameter_id(plan), cfg.device_id)
            coded[plan.name] = plan.q
            recon[plan.name] = _reconstruct(plan, cfg)
        self.state.add_to_history(coded)
        self.last_reconstruction = {k: np.asarray(v, dtype=np.float32) for k, v in recon.items()}
        return b"".join(units), recon

    def _parameter_id(self, plan: TensorPlan) -> int:
        h = self.state.tensors.get(plan.name)
        return h.parameter_id if h is not None and h.parameter_id is not None else plan.index

    def _code_one(self, plan: TensorPlan) -> bytes | None:
        if not plan.q.any():
            return None
        cfg = self.config
        h = self.state.tensors.get(plan.name)
        depth = (h.put_node_depth if h is not None else 0) + 1
        tca = self.tca and h is not None and h.levels is not None
        if tca and h.levels.shape != plan.q.shape:
            raise InputError(f"tensor {plan.name!r} changed shape from {h.levels.shape} to {plan.q.shape}")
        hist = h.seen_nonzero if h is not None else None
        plan = TensorPlan(plan.name, self._parameter_id(plan), plan.shape, plan.q, plan.qp, plan.dq, plan.data_format)

        def code(use_hdsp: bool) -> bytes:
            parent = NduParent(put_node_depth=depth, tca=tca, tca_base=h.levels if tca else None,
                                hdsp_history=hist, hdsp=use_hdsp)
            return encode_ndu(plan, cfg, parent_signalling=True, parent=parent)

        off = code(False)
        if self.hdsp and hist is not None:
            on = code(True)
            if len(on) < len(off):   # ties keep HDSP off, like the reference
                return on
        return off


def _reconstruct(plan: TensorPlan, cfg: EncoderConfig) -> np.ndarray:
    if plan.qp is None:
        return plan.q.astype(np.int64)
    return reconstruct_uniform(plan.q, plan.qp, cfg.qp_density)


class UpdateDecoder:
    """Decodes the bitstreams of an :class:`UpdateEncoder` (or of NNCodec's incremental coder) in order.

    Args:
        base: the model the updates apply to (needed by :meth:`apply`).
        config: decoder limits.
    """

    def __init__(self, base: Mapping[str, np.ndarray] | None = None, config: DecoderConfig | None = None):
        if isinstance(base, DecoderConfig) and config is None:  # UpdateDecoder(config), as Decoder(config)
            base, config = None, base
        if base is not None and not isinstance(base, Mapping):
            raise TypeError(f"base must be a mapping name -> array (or pass config=), got {type(base).__name__}")
        self._decoder = Decoder(config)
        self.state = UpdateState()
        self.model = ({k: np.array(v, copy=True) for k, v in base.items()} if base is not None else None)

    def decode_model(self, bitstream) -> DecodedModel:
        """Decode the next update; returns the decoded differences with their coding details."""
        model = self._decoder.decode_model(bitstream, state=self.state)
        for name, t in model.details.items():
            depth = t.put_node_depth if t.put_node_depth is not None else self.state.history(name).put_node_depth + 1
            self.state.record(name, t.levels, depth, t.parameter_id, t.device_id)
        if model.parent_signalling:
            self.state.add_to_history({n: t.levels for n, t in model.details.items()})
        return model

    def decode_update(self, bitstream) -> dict[str, np.ndarray]:
        """Decode the next update to ``{name: difference}`` (absent names: no change)."""
        return self.decode_model(bitstream).tensors

    def apply(self, bitstream) -> dict[str, np.ndarray]:
        """Decode the next update, add it to :attr:`model` and return the updated model."""
        if self.model is None:
            raise UpdateStateError("apply() needs a base model; pass base= or use decode_update()")
        delta = self.decode_update(bitstream)
        for k, d in delta.items():
            if k not in self.model:
                raise UpdateStateError(f"update names tensor {k!r}, which the base model does not have")
            d = in_model_shape(d, self.model[k].shape)
            if self.model[k].shape != d.shape:
                raise UpdateStateError(f"update of {k!r} has shape {d.shape}, the base has {self.model[k].shape}")
            self.model[k] = (self.model[k] + d).astype(self.model[k].dtype)
        return self.model
