"""Whole-model encoding and decoding: tensors <-> NNR units.

Layout written (as NNCodec 2.1.3 does, spec §1.12): NNR_STR, NNR_MPS, NNR_TPL, then one NNR_NDU per tensor
in input order. Float tensors are quantised (uniform or dependent quantisation) and sent as NNR_PT_FLOAT;
integer tensors are sent losslessly as NNR_PT_INT.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from . import bitstream as bs
from . import deepcabac
from .bitstream.source import as_bytes
from .coding import tools as _tools
from .coding.dtypes import coding_kind, format_for_dtype
from .coding.ndu import NduParent, NduPlan, effective_scan, plan_ndu, signalled_scan, with_history
from .coding.quant import quantize_tensor, reconstruct_codebook, reconstruct_uniform, step_size
from .config import DecoderConfig, EncoderConfig
from .errors import BitstreamError, InputError, LimitExceededError, UnsupportedFeatureError
from .topology import Topology

__all__ = ["Encoder", "Decoder", "DecodedModel", "DecodedTensor", "encode", "decode", "decode_model"]


# ----------------------------------------------------------------------------------------------------------
# encoding
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TensorPlan:
    """One tensor, ready for entropy coding (:meth:`Encoder.plan`; :func:`encode_ndu` writes its NDU)."""

    name: str
    index: int
    shape: tuple[int, ...]          # coded shape (0-d inputs become (1,))
    q: np.ndarray                   # stored integers, int32, C order
    qp: int | None                  # None for NNR_PT_INT
    dq: bool
    data_format: int | None         # nnr_decompressed_data_format to signal, or None
    codebook: tuple | None = None   # (values, zero_offset, egk) for codebook tensors


def _validate_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise InputError(f"tensor names must be non-empty strings, got {name!r}")
    if "\x00" in name:
        raise InputError(f"tensor name {name!r} contains a NUL character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"tensor name {name!r} is not valid UTF-8: {e}") from None
    return name


def _as_array(name: str, value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        raise InputError(f"tensor {name!r} is a torch tensor; nnc.encode takes numpy arrays: use "
                         "lm = nnc.converters.from_torch(model_or_state_dict), then "
                         "nnc.encode(lm.tensors, config, topology=lm.topology)")
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001 - report any conversion failure as bad input
        raise InputError(f"tensor {name!r} cannot be converted to a numpy array: {e}") from None


def _plan(name: str, arr: np.ndarray, index: int, cfg: EncoderConfig, qp: int | None = None) -> TensorPlan:
    kind = coding_kind(name, arr.dtype)
    shape = tuple(int(d) for d in arr.shape) or (1,)
    if any(d == 0 for d in shape):
        raise InputError(f"tensor {name!r} has shape {arr.shape} with a zero dimension; NNC cannot code "
                         "empty tensors")
    if len(shape) > 255:
        raise InputError(f"tensor {name!r} has rank {len(shape)}")
    if math.prod(shape) > (1 << 31) - 1:
        raise InputError(f"tensor {name!r} has {math.prod(shape)} elements, more than 2**31-1")
    fmt = format_for_dtype(arr.dtype) if cfg.signal_dtype else None
    if kind == "int":
        if arr.size and arr.dtype.itemsize >= 4 and arr.dtype != np.int32:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < -(1 << 31) or hi > (1 << 31) - 1:
                raise InputError(f"integer tensor {name!r} has values in {lo}..{hi}, outside the int32 range "
                                 "that NNR_PT_INT carries losslessly")
        q = np.ascontiguousarray(arr, dtype=np.int32).reshape(shape)
        return TensorPlan(name, index, shape, q, None, False, fmt)
    x = np.ascontiguousarray(arr, dtype=np.float32).reshape(shape)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise InputError(f"tensor {name!r} holds a non-finite value (first at flat index {bad}); "
                         "NNC quantisation needs finite numbers")
    qp = cfg.qp_for(name, len(arr.shape)) if qp is None else qp
    scan = effective_scan(shape, cfg.scan_order if len(shape) > 1 else 0)
    bits = None
    if cfg.bitdepth is not None and ".num_batches_tracked" not in name:
        bits = _tools.bitdepth.effective_bits(cfg.bitdepth, len(arr.shape) > 1)
    if cfg.codebook != "off":
        ch = _tools.codebook.codebook_quantize(
            x, qp, cfg.qp_density, mode=cfg.codebook, dq=cfg.dq, scan_order=scan, profile=cfg.profile,
            param_opt=cfg.param_opt, unary_length_minus1=cfg.unary_length_minus1, bitdepth=bits)
        cb = None if ch.values is None else (ch.values, ch.zero_offset, ch.egk)
        return TensorPlan(name, index, shape, ch.q, ch.qp, ch.dq, fmt, cb)
    q, qp_used = quantize_tensor(x, qp, cfg.qp_density, dq=cfg.dq, scan_order=scan, name=name)
    if bits is not None:
        q = _tools.bitdepth.clip_levels(q, x, bits)
    return TensorPlan(name, index, shape, q, qp_used, cfg.dq, fmt)


def encode_ndu(plan: TensorPlan, cfg: EncoderConfig, *, parent_signalling: bool, parent: NduParent | None = None
                ) -> bytes:
    scan = signalled_scan(plan.shape, cfg.scan_order)
    coding = deepcabac.TensorCoding(
        shape=plan.shape,
        profile=cfg.profile,
        unary_length=cfg.unary_length_minus1 + 1,
        qp_bits=None if plan.qp is None else 6 + cfg.qp_density,
        scan_order=scan,
        dq=plan.dq,
        parent_present=parent is not None,
        codebook_size=len(plan.codebook[0]) if plan.codebook is not None and cfg.profile == 1 else 0,
        codebook_zero=plan.codebook[1] if plan.codebook is not None and cfg.profile == 1 else 0,
        tca_base=parent.tca_base if parent is not None and parent.tca else None,
        hdsp_history=parent.hdsp_history if parent is not None else None,
    )
    options = deepcabac.EncodeOptions(param_opt=cfg.param_opt, row_skipping=cfg.row_skipping and cfg.profile == 1,
                                      hdsp=bool(parent is not None and parent.hdsp),
                                      # bit-depth clipping of DQ levels ignores the parity rule, as NNCodec does
                                      # (spec §6 item 30): code the clipped values as the reference does
                                      allow_dq_mismatch=bool(plan.dq and cfg.bitdepth is not None))
    payload, eps = deepcabac.encode_payload([(plan.q, coding, plan.qp or 0, options)])
    header = bs.NduHeaderSpec(
        payload_type=bs.PayloadType.NNR_PT_INT if plan.qp is None else bs.PayloadType.NNR_PT_FLOAT,
        name=plan.name,
        shape=plan.shape,
        dq_flag=plan.dq,
        unary_length_minus1=cfg.unary_length_minus1,
        scan_order=scan if len(plan.shape) > 1 else None,
        entry_points=[(e.value, e.dq_state, e.bit_offset) for e in eps[0]],
        device_id=cfg.device_id,
        parameter_id=plan.index,
        put_node_depth=0 if parent is None else parent.put_node_depth,
        parent_signalling=parent_signalling,
        parent_node_id_present=parent is not None,
        temporal_context_modeling_flag=bool(parent is not None and parent.tca),
        decompressed_data_format=plan.data_format,
        codebook=None if plan.codebook is None else bs.Codebook.from_values(*plan.codebook),
    )
    return bs.ndu_unit(header, payload, profile=cfg.profile)


class Encoder:
    """Reusable encoder: build once, call :meth:`encode` for every model (e.g. every FL round).

    >>> enc = Encoder(EncoderConfig(qp=-32))
    >>> data = enc.encode({"fc.weight": np.zeros((4, 4), np.float32)})
    """

    def __init__(self, config: EncoderConfig | None = None):
        self.config = config if config is not None else EncoderConfig()
        if not isinstance(self.config, EncoderConfig):
            raise TypeError(f"config must be an EncoderConfig, got {type(self.config).__name__}")

    def _prepare(self, tensors: Mapping[str, np.ndarray]) -> tuple[list[tuple[int, str, np.ndarray]], dict]:
        """Validate names and arrays and apply the model-level encoder tools (sparsification, opt_qp, bit-depth
        QPs, rate control; ``nnc.coding.tools``). Returns ``[(index, name, array)]`` and per-tensor QP overrides."""
        if not isinstance(tensors, Mapping):
            kind = type(tensors).__name__
            if hasattr(tensors, "tensors") and hasattr(tensors, "topology"):  # nnc.converters.LoadedModel
                raise InputError(f"tensors must be a mapping name -> array, got a {kind}: pass "
                                 "nnc.encode(m.tensors, config, topology=m.topology)")
            if hasattr(tensors, "state_dict"):  # a torch.nn.Module, without importing torch
                raise InputError(f"tensors must be a mapping name -> array, got a {kind} module: use "
                                 "lm = nnc.converters.from_torch(module), then "
                                 "nnc.encode(lm.tensors, config, topology=lm.topology)")
            raise InputError(f"tensors must be a mapping name -> array, got {kind}")
        if not tensors:
            raise InputError("no tensors to encode")
        items = [(_validate_name(k), _as_array(k, v)) for k, v in tensors.items()]
        arrays, qps = _tools.prepare(dict(items), self.config)
        return [(i, k, arrays[k]) for i, (k, _) in enumerate(items)], qps

    def plan(self, tensors: Mapping[str, np.ndarray]) -> list[TensorPlan]:
        """Validate and quantise ``tensors`` (name -> array) in order."""
        items, qps = self._prepare(tensors)
        return self._map(lambda it: _plan(it[1], it[2], it[0], self.config, qps.get(it[1])), items)

    def encode(self, tensors: Mapping[str, np.ndarray], *, topology: Topology | None = None,
               progress: bool = False) -> bytes:
        """Encode ``tensors`` into one NNC bitstream.

        ``progress=True`` shows a progress bar (tqdm) over the tensors.

        Raises:
            InputError: a name, dtype, shape or value cannot be coded.
        """
        cfg = self.config
        items, qps = self._prepare(tensors)

        def one(item) -> bytes:
            plan = _plan(item[1], item[2], item[0], cfg, qps.get(item[1]))
            return encode_ndu(plan, cfg, parent_signalling=False)

        if topology is None and cfg.signal_dtype:
            topology = _dtype_record([(k, a) for _, k, a in items])
        units = [bs.start_unit(cfg.profile),
                 bs.mps_unit(profile=cfg.profile, qp_density=cfg.qp_density, parent_signalling=False),
                 bs.tpl_unit(topology if topology is not None else Topology())]
        units += self._map(one, items, progress=progress, total_elements=lambda it: it[2].size)
        return b"".join(units)

    def _map(self, fn, items: list, *, progress: bool = False, total_elements=None) -> list:
        bar = None
        if progress and items:
            from tqdm import tqdm
            bar = tqdm(total=sum(total_elements(x) for x in items) if total_elements else len(items),
                       unit=" params" if total_elements else " tensors", unit_scale=True, leave=False, disable=None,
                       desc="encoding")

        def run(x):
            out = fn(x)
            if bar is not None:
                bar.update(total_elements(x) if total_elements else 1)
            return out

        try:
            if self.config.threads > 1 and len(items) > 1:
                with ThreadPoolExecutor(self.config.threads) as pool:
                    return list(pool.map(run, items))
            return [run(x) for x in items]
        finally:
            if bar is not None:
                bar.close()


#: marker of the dtype record nnc.encode writes (no topology given, signal_dtype=True) for integer dtypes the
#: standard has no nnr_decompressed_data_format for (uint8, uint16, uint32, bool); raw UTF-8 JSON in storage format
#: 0, which NNCodec reads and ignores
_DTYPE_RECORD = b'{"nnc_dtypes":1,'
_UNSIGNALLED = ("uint8", "uint16", "uint32", "bool")


def _dtype_record(items) -> Topology | None:
    import json
    dtypes = {k: str(a.dtype) for k, a in items if str(a.dtype) in _UNSIGNALLED}
    if not dtypes:
        return None
    body = json.dumps({"nnc_dtypes": 1, "dtypes": dtypes}, ensure_ascii=False, separators=(",", ":"))
    return Topology(0, 0, body.encode("utf-8"))


def _apply_dtype_record(model: "DecodedModel") -> None:
    import json
    topo = model.topology
    if topo is None or topo.storage_format != 0 or topo.compression_format != 0 or \
            not bytes(topo.data).startswith(_DTYPE_RECORD):
        return
    try:
        dtypes = json.loads(bytes(topo.data).decode("utf-8"))["dtypes"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise BitstreamError("the topology unit's dtype record is not valid JSON", unit_index=None,
                             syntax_path="NNR_TPL.topology_data") from None
    for name, dt in (dtypes.items() if isinstance(dtypes, dict) else ()):
        arr = model.tensors.get(name)
        if dt not in _UNSIGNALLED or arr is None or arr.dtype.kind not in "iu":
            continue
        target = np.dtype(dt)
        if dt != "bool":
            info = np.iinfo(target)
            if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
                raise BitstreamError(f"tensor {name!r}: decoded values do not fit its recorded dtype {dt}",
                                     unit_index=model.details[name].unit_index, syntax_path="NNR_NDU.payload")
        model.tensors[name] = arr != 0 if dt == "bool" else arr.astype(target)


# ----------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DecodedTensor:
    """One decoded tensor with the coding information that produced it."""

    name: str
    array: np.ndarray
    levels: np.ndarray              # stored integers (q; codebook indices for codebook tensors)
    qp: int | None
    unit_index: int
    parameter_id: int | None = None
    put_node_depth: int | None = None
    device_id: int | None = None


@dataclass
class DecodedModel:
    """Result of :func:`decode_model`: the tensors in bitstream order, the topology and per-tensor details."""

    tensors: dict[str, np.ndarray]
    topology: Topology | None
    details: dict[str, DecodedTensor] = field(default_factory=dict)
    profile: int = 1
    parent_signalling: bool = False


class Decoder:
    """Reusable decoder with resource limits (:class:`DecoderConfig`)."""

    def __init__(self, config: DecoderConfig | None = None):
        self.config = config if config is not None else DecoderConfig()
        if not isinstance(self.config, DecoderConfig):
            raise TypeError(f"config must be a DecoderConfig, got {type(self.config).__name__}")

    def decode(self, bitstream) -> dict[str, np.ndarray]:
        """Decode a whole-model bitstream to ``{name: array}`` in bitstream order."""
        return self.decode_model(bitstream).tensors

    def decode_model(self, bitstream, *, state=None) -> DecodedModel:
        """Decode and also return the topology and per-tensor coding details.

        ``state`` (used by :class:`nnc.UpdateDecoder`) supplies TCA bases and HDSP histories per name.
        """
        data = as_bytes(bitstream)
        parsed = bs.parse(data, max_units=self.config.max_units)
        ctx = _StreamContext.from_parsed(parsed)
        ndus = [u for u in parsed if u.nnr_unit_type == bs.UnitType.NNR_NDU]
        budget = _Budget(self.config)
        jobs = [_prepare_ndu(u, ctx, self.config, budget, state) for u in ndus]
        if self.config.threads > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(self.config.threads) as pool:
                results = list(pool.map(_run_ndu, jobs))
        else:
            results = [_run_ndu(j) for j in jobs]
        model = DecodedModel(tensors={}, topology=ctx.topology, profile=ctx.profile,
                             parent_signalling=ctx.parent_signalling)
        for tensors in results:
            for t in tensors:
                if t.name in model.tensors:
                    raise BitstreamError(f"tensor {t.name!r} is coded twice", unit_index=t.unit_index,
                                         syntax_path="NNR_NDU.topology_elem_id")
                model.tensors[t.name] = t.array
                model.details[t.name] = t
        _apply_dtype_record(model)
        return model


@dataclass
class _StreamContext:
    profile: int
    qp_density: int
    base_qp: int
    parent_signalling: bool
    topology: Topology | None

    @classmethod
    def from_parsed(cls, parsed) -> "_StreamContext":
        mps = parsed.mps
        if mps is None:
            raise BitstreamError("the bitstream has no NNR_MPS unit", unit_index=None)
        qd = mps.mps_qp_density if mps.mps_qp_density is not None else 0
        qp0 = mps.mps_quantization_parameter if mps.mps_quantization_parameter is not None else 0
        lps = parsed.lps
        if lps is not None:
            raise UnsupportedFeatureError("NNR_LPS units are not supported (NNCodec never writes them)")
        if parsed.profile not in (0, 1):
            raise UnsupportedFeatureError(f"general_profile_idc {parsed.profile} is not supported (0 and 1 are)")
        topo = parsed.topology
        return cls(profile=parsed.profile, qp_density=qd, base_qp=qp0,
                   parent_signalling=bool(getattr(mps, "mps_parent_signalling_enabled_flag", 0)),
                   topology=topo)


class _Budget:
    """Running total of decoded bytes, checked before allocation."""

    def __init__(self, cfg: DecoderConfig):
        self.cfg = cfg
        self.total = 0

    def take(self, elements: int, itemsize: int, unit_index: int, name: str) -> None:
        if elements > self.cfg.max_tensor_elements:
            raise LimitExceededError(f"tensor {name!r} claims {elements} elements, more than max_tensor_elements="
                                     f"{self.cfg.max_tensor_elements}", unit_index=unit_index,
                                     syntax_path="NNR_NDU.tensor_dimensions")
        self.total += elements * itemsize
        if self.total > self.cfg.max_total_bytes:
            raise LimitExceededError(f"decoded tensors would exceed max_total_bytes={self.cfg.max_total_bytes}",
                                     unit_index=unit_index, syntax_path="NNR_NDU.tensor_dimensions")


@dataclass
class _NduJob:
    unit: object
    plan: NduPlan
    ctx: _StreamContext


def _prepare_ndu(unit, ctx: _StreamContext, cfg: DecoderConfig, budget: _Budget, state) -> _NduJob:
    """The unit's :class:`nnc.coding.NduPlan`, with every tensor's memory taken from ``budget`` before any
    payload is decoded."""
    h = unit.body
    ptype = h.nnr_compressed_data_unit_payload_type
    if ptype == bs.PayloadType.NNR_PT_RAW_FLOAT:
        raise UnsupportedFeatureError("NNR_PT_RAW_FLOAT NDUs are not supported yet")
    if ptype == bs.PayloadType.NNR_PT_BLOCK and (getattr(h, "parent_node_id_present_flag", 0) or state is not None):
        raise UnsupportedFeatureError("incremental (parent) NNR_PT_BLOCK NDUs are not supported")
    plan = plan_ndu(h, profile=ctx.profile, qp_density=ctx.qp_density, unit_index=unit.index,
                    max_rank=cfg.max_rank, max_codebook_size=cfg.max_codebook_size)
    for m in plan.members:
        budget.take(math.prod(m.shape), plan.itemsize, unit.index, m.name)
    if state is not None:
        plan = with_history(plan, h, state)
    return _NduJob(unit, plan, ctx)


def _check_step(qp: int, qp_density: int, name: str, unit_index: int) -> None:
    """A hostile MPS qp plus qp offset can ask for a step of 2**4000: refuse it instead of raising
    OverflowError or reconstructing inf (an encoder never writes a qp whose float32 step is not finite)."""
    try:
        with np.errstate(over="ignore"):
            step = step_size(qp, qp_density)
    except OverflowError:
        step = np.float32(np.inf)
    if not np.isfinite(step):
        raise BitstreamError(f"tensor {name!r}: qp {qp} (qp_density {qp_density}) gives a step size that "
                             "overflows float32", unit_index=unit_index,
                             syntax_path="NNR_MPS.mps_quantization_parameter")


def _run_ndu(job: _NduJob) -> list[DecodedTensor]:
    unit, plan = job.unit, job.plan
    try:
        res = deepcabac.decode_payload(unit.payload, [m.coding for m in plan.members])
    except BitstreamError as e:
        raise e.located(unit_index=unit.index, byte_offset=unit.offset + unit.header_size,
                        syntax_path="NNR_NDU.payload")
    if res.consumed != len(unit.payload):
        raise BitstreamError(f"the CABAC data ends after {res.consumed} of {len(unit.payload)} payload bytes "
                             "(nnr_unit_size does not match the coded data)", unit_index=unit.index,
                             byte_offset=unit.offset + unit.header_size + res.consumed,
                             syntax_path="NNR_NDU.payload")
    h = unit.body
    out = []
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is detected below and reported
        for member, q, qoff in zip(plan.members, res.levels, res.qp_offsets):
            name, kind = member.name, member.kind
            qp = None if qoff is None else qoff + job.ctx.base_qp
            if kind != "int":
                _check_step(qp, job.ctx.qp_density, name, unit.index)
            if kind == "int":
                arr = q.astype(plan.out_dtype, copy=False) if plan.out_dtype is not None else q
            elif kind == "codebook":
                values, zero = plan.codebook
                lo, hi = int(q.min()), int(q.max())
                if lo + zero < 0 or hi + zero >= len(values):
                    raise BitstreamError(f"codebook index out of range for tensor {name!r}", unit_index=unit.index,
                                         syntax_path="NNR_NDU.payload")
                arr = reconstruct_codebook(q, values, zero, qp, job.ctx.qp_density)
                if plan.out_dtype is not None:
                    arr = arr.astype(plan.out_dtype)
            else:
                arr = reconstruct_uniform(q, qp, job.ctx.qp_density)
                if plan.out_dtype is not None:
                    arr = arr.astype(plan.out_dtype)
            if kind != "int" and not np.isfinite(arr).all():
                raise BitstreamError(f"tensor {name!r}: reconstructed values overflow float32 (hostile levels "
                                     "or qp)", unit_index=unit.index, syntax_path="NNR_NDU.payload")
            out.append(DecodedTensor(name=name, array=arr, levels=q, qp=qp, unit_index=unit.index,
                                     parameter_id=getattr(h, "parameter_id", None),
                                     put_node_depth=getattr(h, "put_node_depth", None),
                                     device_id=getattr(h, "device_id", None)))
    return out


# ----------------------------------------------------------------------------------------------------------
# one-shot functions
# ----------------------------------------------------------------------------------------------------------
def encode(tensors: Mapping[str, np.ndarray], config: EncoderConfig | None = None, *,
           topology: Topology | None = None) -> bytes:
    """Encode ``tensors`` (name -> numpy array, order kept) into an NNC bitstream.

    Float arrays (float16/32/64) are quantised; integer arrays are coded losslessly. For many calls in a
    loop, build one :class:`Encoder`.

    Raises:
        InputError: names, dtypes, shapes or values that cannot be coded.
        ConfigError: invalid settings (raised when the ``EncoderConfig`` is built).
    """
    return Encoder(config).encode(tensors, topology=topology)


def decode(bitstream, config: DecoderConfig | None = None) -> dict[str, np.ndarray]:
    """Decode an NNC bitstream to ``{name: array}``.

    Raises:
        BitstreamError: malformed input (``TruncatedBitstreamError`` if cut short, ``LimitExceededError`` if it
            asks for more than ``config`` allows); the message names the unit, byte offset and syntax element.
        UnsupportedFeatureError: valid syntax nnc does not implement.
    """
    return Decoder(config).decode(bitstream)


def decode_model(bitstream, config: DecoderConfig | None = None) -> DecodedModel:
    """Like :func:`decode` but also returns the topology and per-tensor coding details."""
    return Decoder(config).decode_model(bitstream)
