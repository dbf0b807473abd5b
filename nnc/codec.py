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
from .config import DecoderConfig, EncoderConfig, default_decoder_config
from .dtypes import coding_kind, dtype_for_format, format_for_dtype
from .errors import BitstreamError, InputError, LimitExceededError, UnsupportedFeatureError
from .quant import quantize_tensor, reconstruct_codebook, step_size
from .topology import Topology
from . import tools as _tools

__all__ = ["Encoder", "Decoder", "DecodedModel", "DecodedTensor", "encode", "decode", "decode_model"]


# ----------------------------------------------------------------------------------------------------------
# encoding
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """One tensor, ready for entropy coding."""

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


def _plan(name: str, arr: np.ndarray, index: int, cfg: EncoderConfig, qp: int | None = None) -> _Plan:
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
        return _Plan(name, index, shape, q, None, False, fmt)
    x = np.ascontiguousarray(arr, dtype=np.float32).reshape(shape)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise InputError(f"tensor {name!r} holds a non-finite value (first at flat index {bad}); "
                         "NNC quantisation needs finite numbers")
    qp = cfg.qp_for(name, len(arr.shape)) if qp is None else qp
    scan = _effective_scan(shape, cfg.scan_order if len(shape) > 1 else 0)
    bits = None
    if cfg.bitdepth is not None and ".num_batches_tracked" not in name:
        bits = _tools.bitdepth.effective_bits(cfg.bitdepth, len(arr.shape) > 1)
    if cfg.codebook != "off":
        ch = _tools.codebook.codebook_quantize(
            x, qp, cfg.qp_density, mode=cfg.codebook, dq=cfg.dq, scan_order=scan, profile=cfg.profile,
            param_opt=cfg.param_opt, unary_length_minus1=cfg.unary_length_minus1, bitdepth=bits)
        cb = None if ch.values is None else (ch.values, ch.zero_offset, ch.egk)
        return _Plan(name, index, shape, ch.q, ch.qp, ch.dq, fmt, cb)
    q, qp_used = quantize_tensor(x, qp, cfg.qp_density, dq=cfg.dq, scan_order=scan)
    if bits is not None:
        q = _tools.bitdepth.clip_levels(q, x, bits)
    return _Plan(name, index, shape, q, qp_used, cfg.dq, fmt)


def _layer_width(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def _effective_scan(shape: tuple[int, ...], scan_order: int) -> int:
    if len(shape) < 2 or _layer_width(shape) == 1 or shape[0] == 1:
        return 0
    return scan_order


def _signalled_scan(shape: tuple[int, ...], scan_order: int) -> int:
    # A W == 1 tensor must signal 0: the entry-point count follows the header dims (spec §6 item 12).
    return 0 if len(shape) < 2 or _layer_width(shape) == 1 else scan_order


@dataclass
class _NduParent:
    """Incremental-coding information for one NDU (used by nnc.incremental)."""

    put_node_depth: int
    tca: bool = False
    tca_base: np.ndarray | None = None
    hdsp_history: np.ndarray | None = None
    hdsp: bool = False


def _encode_ndu(plan: _Plan, cfg: EncoderConfig, *, parent_signalling: bool, parent: _NduParent | None = None
                ) -> bytes:
    scan = _signalled_scan(plan.shape, cfg.scan_order)
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
        QPs, rate control; ``nnc.tools``). Returns ``[(index, name, array)]`` and per-tensor QP overrides."""
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

    def plan(self, tensors: Mapping[str, np.ndarray]) -> list[_Plan]:
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
            return _encode_ndu(plan, cfg, parent_signalling=False)

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
        self.config = config if config is not None else default_decoder_config()
        if not isinstance(self.config, DecoderConfig):
            raise TypeError(f"config must be a DecoderConfig, got {type(self.config).__name__}")

    def decode(self, bitstream) -> dict[str, np.ndarray]:
        """Decode a whole-model bitstream to ``{name: array}`` in bitstream order (the levels of each tensor
        are freed as soon as it is reconstructed)."""
        return self._decode(bitstream, keep_levels=False).tensors

    def decode_model(self, bitstream, *, state=None) -> DecodedModel:
        """Decode and also return the topology and per-tensor coding details.

        ``state`` (used by :class:`nnc.UpdateDecoder`) supplies TCA bases and HDSP histories per name.
        """
        return self._decode(bitstream, state=state, keep_levels=True)

    def _decode(self, bitstream, *, state=None, keep_levels: bool) -> DecodedModel:
        data = _as_bytes(bitstream)
        budget = _Budget(self.config)
        self.last_budget = budget          # what the decode held (the CLI bounds topology inflation by the rest)
        parsed = bs.parse(data, limits=self.config, budget=budget)
        ctx = _StreamContext.from_parsed(parsed)
        ndus = [u for u in parsed if u.nnr_unit_type == bs.UnitType.NNR_NDU]
        jobs = [_prepare_ndu(u, ctx, self.config, budget, state) for u in ndus]
        run = (lambda j: _run_ndu(j, keep_levels))
        if self.config.threads > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(self.config.threads) as pool:
                results = list(pool.map(run, jobs))
        else:
            results = [run(j) for j in jobs]
        model = DecodedModel(tensors={}, topology=ctx.topology, profile=ctx.profile,
                             parent_signalling=ctx.parent_signalling)
        for tensors in results:
            for t in tensors:
                if t.name in model.tensors:
                    raise BitstreamError(f"tensor {t.name!r} is coded twice", unit_index=t.unit_index,
                                         syntax_path="NNR_NDU.topology_elem_id")
                model.tensors[t.name] = t.array
                model.details[t.name] = t
        return model


def _as_bytes(bitstream) -> bytes | memoryview:
    if isinstance(bitstream, (bytes, bytearray, memoryview)):
        return bitstream
    if isinstance(bitstream, np.ndarray) and bitstream.dtype == np.uint8:
        return memoryview(np.ascontiguousarray(bitstream)).cast("B")
    raise TypeError(f"bitstream must be bytes-like, got {type(bitstream).__name__}")


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


#: Elements reconstructed per step (bounds the float temporaries of reconstruction to a few MB).
_CHUNK = 1 << 18
#: Memory per block row while decoding: the core's entry point (16 bytes) and its Python tuple in the result.
_ENTRY_POINT_BYTES = 160


class _Budget(bs.MemoryBudget):
    """The decoder's account (:class:`nnc.bitstream.MemoryBudget`): parsed headers, then per tensor the output
    and, while it decodes, its int32 levels, row-skip flags, entry points and reconstruction temporaries, all
    checked against ``max_total_bytes`` before anything is allocated. ``threads`` tensors may be in flight at
    once, so the largest ``threads`` transients are counted together."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__(cfg)
        self.cfg = cfg
        self.transients: list[int] = []

    def take_tensor(self, elements: int, held: int, transient: int, unit_index: int, name: str) -> None:
        if elements > self.cfg.max_tensor_elements:
            raise LimitExceededError(f"tensor {name!r} claims {elements} elements, more than max_tensor_elements="
                                     f"{self.cfg.max_tensor_elements}", unit_index=unit_index,
                                     syntax_path="NNR_NDU.tensor_dimensions")
        peak = sorted(self.transients + [transient], reverse=True)[:self.cfg.threads]
        if not self.check(held, sum(peak)):
            raise LimitExceededError(
                f"tensor {name!r} ({elements} elements) would bring the memory decoding holds to "
                f"{self.used + held + sum(peak)} bytes, more than max_total_bytes={self.cfg.max_total_bytes} "
                f"(outputs, levels, temporaries and parsed headers count)", unit_index=unit_index,
                syntax_path="NNR_NDU.tensor_dimensions")
        self.data += held
        self.transients = peak


def _tensor_cost(elements: int, rows: int, block_rows: int, out_itemsize: int, levels_are_output: bool,
                 keep_levels: bool, table: int = 0) -> tuple[int, int]:
    """(bytes held after the tensor is decoded, bytes in use only while it decodes)."""
    levels = 4 * elements
    out = 0 if levels_are_output else elements * out_itemsize
    held = out + (levels if keep_levels or levels_are_output else 0)
    transient = (0 if keep_levels or levels_are_output else levels) + rows + block_rows * _ENTRY_POINT_BYTES
    if not levels_are_output:      # one chunk of float32 (uniform) or int64 indices (codebook)
        transient += min(elements, _CHUNK) * (8 if table else 4) + table
    return held, transient


@dataclass
class _NduJob:
    unit: object
    names: list[str]
    codings: list
    kinds: list[str]                 # "int" | "uniform" | "codebook"
    payload: memoryview
    ctx: _StreamContext
    out_dtype: np.dtype | None
    codebook: tuple | None


def _header_dims(h, idx: int, cfg: DecoderConfig, what: str) -> tuple[int, ...]:
    """The NDU header's tensor dimensions, checked against the rank limit and for impossible values."""
    if h.tensor_dimensions is None:
        raise UnsupportedFeatureError(f"unit {idx}: tensor dimensions are not in the bitstream (out-of-band "
                                      "signalling is not supported)")
    dims = tuple(int(d) for d in h.tensor_dimensions)
    if len(dims) > cfg.max_rank:
        raise LimitExceededError(f"rank {len(dims)} exceeds max_rank={cfg.max_rank}", unit_index=idx,
                                 syntax_path="NNR_NDU.count_tensor_dimensions")
    if not dims or any(d <= 0 for d in dims):
        raise BitstreamError(f"{what} has impossible dimensions {list(dims)}", unit_index=idx,
                             syntax_path="NNR_NDU.tensor_dimensions")
    return dims


def _output_dtype(h) -> tuple[np.dtype | None, int]:
    """The signalled output dtype (None: int32/float32 by payload type) and the bytes per element of the
    returned array: 4, or the signalled dtype's size if wider (float64, int64)."""
    out_dtype = None
    if getattr(h, "nnr_decompressed_data_format_present_flag", 0):
        out_dtype = dtype_for_format(h.nnr_decompressed_data_format)
    return out_dtype, max(4, np.dtype(out_dtype).itemsize if out_dtype is not None else 4)


def _scan_order(h, idx: int) -> int:
    scan_order = h.scan_order or 0
    if scan_order > 4:
        raise BitstreamError(f"reserved scan_order {scan_order}", unit_index=idx, syntax_path="NNR_NDU.scan_order")
    return scan_order


def _codebook(h, ctx: _StreamContext, cfg: DecoderConfig, idx: int):
    """(values and zero offset, or None; S and Z for the CABAC layer, 0 unless profile 1) of an NDU."""
    if not getattr(h, "codebook_present_flag", 0):
        return None, 0, 0
    cb = h.codebook
    if cb.codebook_size > cfg.max_codebook_size:   # checked before the value list is built
        raise LimitExceededError(f"codebook of {cb.codebook_size} entries exceeds max_codebook_size="
                                 f"{cfg.max_codebook_size}", unit_index=idx,
                                 syntax_path="NNR_NDU.codebook.codebook_size")
    values = cb.values_array()
    if values is None:
        vals = cb.values                   # increasing: the ends are the extremes
        raise BitstreamError(f"codebook values {vals[0]}..{vals[-1]} leave the int32 range codebook entries "
                             "have (the reference decoder stores them as int32)", unit_index=idx,
                             syntax_path="NNR_NDU.codebook.codebook_delta_right" if vals[-1] > 0 else
                             "NNR_NDU.codebook.codebook_delta_left")
    codebook = (values, cb.zero_offset)
    if ctx.profile == 1:
        return codebook, len(values), cb.zero_offset
    return codebook, 0, 0


def _prepare_ndu(unit, ctx: _StreamContext, cfg: DecoderConfig, budget: _Budget, state) -> _NduJob:
    h = unit.body
    idx = unit.index
    ptype = h.nnr_compressed_data_unit_payload_type
    if ptype == bs.PayloadType.NNR_PT_BLOCK:
        return _prepare_block(unit, ctx, cfg, budget, state)
    if ptype == bs.PayloadType.NNR_PT_RAW_FLOAT:
        raise UnsupportedFeatureError("NNR_PT_RAW_FLOAT NDUs are not supported yet")
    name = h.topology_elem_id
    dims = _header_dims(h, idx, cfg, f"tensor {name!r}")
    n = math.prod(dims)
    is_int = ptype == bs.PayloadType.NNR_PT_INT
    out_dtype, itemsize = _output_dtype(h)
    scan_order = _scan_order(h, idx)
    codebook, cb_size, cb_zero = _codebook(h, ctx, cfg, idx)
    if codebook is not None:
        itemsize = max(itemsize, 8)              # codebook tensors are reconstructed in float64
    held, transient = _tensor_cost(n, dims[0], _block_rows(dims, scan_order), itemsize,
                                   is_int and out_dtype in (None, np.dtype(np.int32)), state is not None,
                                   0 if codebook is None else 16 * len(codebook[0]))
    budget.take_tensor(n, held, transient, idx, name)
    tca_base = hdsp_hist = None
    parent_present = bool(getattr(h, "parent_node_id_present_flag", 0))
    if state is not None:
        tca_base, hdsp_hist = state.inputs_for(name, h)
    coding = deepcabac.TensorCoding(
        shape=dims, profile=ctx.profile, unary_length=_unary_length_minus1(h) + 1,
        qp_bits=None if is_int else 6 + ctx.qp_density, scan_order=scan_order,
        dq=bool(h.dq_flag) and not is_int, parent_present=parent_present, codebook_size=cb_size,
        codebook_zero=cb_zero, tca_base=tca_base, hdsp_history=hdsp_hist)
    kind = "int" if is_int else ("codebook" if codebook is not None else "uniform")
    return _NduJob(unit, [name], [coding], [kind], unit.payload, ctx, out_dtype, codebook)


def block_members(cpt: int) -> list[tuple[str, int]]:
    """(role, index into topology_elem_id_list) of a non-DC block's tensors in coding order (spec §1.10.2):
    ls, bias, bn.beta, bn.gamma, bn.mean, bn.var, then the weight (index 0)."""
    T = bs.CompressedParameterTypes
    ls, bn, bi = bool(cpt & T.NNR_CPT_LS), bool(cpt & T.NNR_CPT_BN), bool(cpt & T.NNR_CPT_BI)
    out = []
    if ls:
        out.append(("ls", 1))
    if bi:
        out.append(("bias", 1 + ls + (4 if bn else 0)))
    if bn:
        out += [(role, 1 + ls + i) for i, role in enumerate(("bn.beta", "bn.gamma", "bn.mean", "bn.var"))]
    out.append(("weight", 0))
    return out


def _prepare_block(unit, ctx: _StreamContext, cfg: DecoderConfig, budget: _Budget, state) -> _NduJob:
    """An NNR_PT_BLOCK NDU: a weight with its LS / bias / BN vectors in one CABAC stream (spec §1.10.2).
    All members share dq_flag and scan_order, each has its own qp offset; only the weight may use the
    codebook. Decomposed (DC) blocks and incremental (parent) blocks are not supported."""
    h = unit.body
    idx = unit.index
    cpt = int(h.compressed_parameter_types or 0)
    if cpt & bs.CompressedParameterTypes.NNR_CPT_DC:
        raise UnsupportedFeatureError("NNR_PT_BLOCK NDUs with decomposed tensors (NNR_CPT_DC) are not supported")
    if getattr(h, "parent_node_id_present_flag", 0) or state is not None:
        raise UnsupportedFeatureError("incremental (parent) NNR_PT_BLOCK NDUs are not supported")
    dims = _header_dims(h, idx, cfg, "block")
    names = [str(n) for n in h.element_names]
    members = block_members(cpt)
    if len(names) != len(members):
        raise BitstreamError(f"compressed_parameter_types {cpt} implies {len(members)} tensors, the NDU lists "
                             f"{len(names)}", unit_index=idx, syntax_path="NNR_NDU.topology_elem_id_list")
    out_dtype, itemsize = _output_dtype(h)
    scan_order = _scan_order(h, idx)
    codebook, cb_size, cb_zero = _codebook(h, ctx, cfg, idx)
    coded_names, codings, kinds = [], [], []
    for role, pos in members:
        shape = dims if role == "weight" else (dims[0],)
        cb = codebook is not None and role == "weight"
        held, transient = _tensor_cost(math.prod(shape), shape[0], _block_rows(shape, scan_order) if role == "weight"
                                       else 1, max(itemsize, 8) if cb else itemsize, False, state is not None,
                                       16 * len(codebook[0]) if cb else 0)
        budget.take_tensor(math.prod(shape), held, transient, idx, names[pos])
        is_w = role == "weight"
        codings.append(deepcabac.TensorCoding(
            shape=shape, profile=ctx.profile, unary_length=_unary_length_minus1(h) + 1, qp_bits=6 + ctx.qp_density,
            scan_order=scan_order if is_w else 0, dq=bool(h.dq_flag),
            codebook_size=cb_size if is_w else 0, codebook_zero=cb_zero if is_w else 0))
        coded_names.append(names[pos])
        kinds.append("codebook" if is_w and codebook is not None else "uniform")
    return _NduJob(unit, coded_names, codings, kinds, unit.payload, ctx, out_dtype, codebook)


def _block_rows(dims: tuple[int, ...], scan_order: int) -> int:
    w = math.prod(dims[1:]) if len(dims) > 1 else 1
    if scan_order == 0 or w <= 1 or dims[0] <= 1:
        return 1
    return -(-dims[0] // (4 << scan_order))


def _unary_length_minus1(h) -> int:
    # absent from the header: the standard's default of 9 (spec §1.9 notes, §6 item 9)
    return 9 if h.cabac_unary_length_minus1 is None else int(h.cabac_unary_length_minus1)


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


def _run_ndu(job: _NduJob, keep_levels: bool = True) -> list[DecodedTensor]:
    unit = job.unit
    try:
        res = deepcabac.decode_payload(job.payload, job.codings, threads=1)
    except BitstreamError as e:
        raise e.located(unit_index=unit.index, byte_offset=unit.offset + unit.header_size,
                        syntax_path="NNR_NDU.payload")
    if res.consumed != len(job.payload):
        raise BitstreamError(f"the CABAC data ends after {res.consumed} of {len(job.payload)} payload bytes "
                             "(nnr_unit_size does not match the coded data)", unit_index=unit.index,
                             byte_offset=unit.offset + unit.header_size + res.consumed,
                             syntax_path="NNR_NDU.payload")
    h = unit.body
    out = []
    levels = list(res.levels)
    qp_offsets = list(res.qp_offsets)
    del res
    for i, (name, kind) in enumerate(zip(job.names, job.kinds)):
        q = levels[i]
        levels[i] = None                   # the levels of this tensor are freed once it is reconstructed
        qoff = qp_offsets[i]
        qp = None if qoff is None else qoff + job.ctx.base_qp
        if kind != "int":
            _check_step(qp, job.ctx.qp_density, name, unit.index)
        arr = _reconstruct(q, kind, qp, job, name, unit.index)
        out.append(DecodedTensor(name=name, array=arr, levels=q if keep_levels else None, qp=qp,
                                 unit_index=unit.index, parameter_id=getattr(h, "parameter_id", None),
                                 put_node_depth=getattr(h, "put_node_depth", None),
                                 device_id=getattr(h, "device_id", None)))
        del q
    return out


def _range_error(name: str, lo, hi, dtype, unit_index: int, why: str) -> BitstreamError:
    return BitstreamError(f"tensor {name!r}: values {lo}..{hi} {why} the output dtype {np.dtype(dtype).name} "
                          "(hostile levels, qp or nnr_decompressed_data_format)", unit_index=unit_index,
                          syntax_path="NNR_NDU.payload")


def _check_fits(name: str, ends: np.ndarray, dtype, unit_index: int) -> None:
    """``ends`` are the smallest and largest value a tensor reconstructs to (every rule is monotone in the
    level, so the ends decide): refuse values that would become inf or wrap in the output dtype."""
    dtype = np.dtype(dtype)
    lo, hi = ends.min(), ends.max()
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            cast = ends.astype(dtype)
        if not np.isfinite(ends).all() or not np.isfinite(cast).all():
            raise _range_error(name, lo, hi, dtype, unit_index, "overflow")
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not np.isfinite(ends).all() or lo < info.min or hi > info.max:
            raise _range_error(name, lo, hi, dtype, unit_index, "do not fit")


def _reconstruct(q: np.ndarray, kind: str, qp, job: _NduJob, name: str, unit_index: int) -> np.ndarray:
    """The decoded array of one tensor, built in place chunk by chunk (no full-size temporaries)."""
    shape = q.shape
    flat = q.reshape(-1)
    if flat.size == 0:
        return q.astype(job.out_dtype or (np.int32 if kind == "int" else np.float32))
    qmin, qmax = int(flat.min()), int(flat.max())
    if kind == "int":
        if job.out_dtype is None or job.out_dtype == np.int32:
            return q
        _check_fits(name, np.array([qmin, qmax], np.float64 if job.out_dtype.kind == "f" else np.int64),
                    job.out_dtype, unit_index)
        return q.astype(job.out_dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "codebook":
            values, zero = job.codebook
            if qmin + zero < 0 or qmax + zero >= len(values):
                raise BitstreamError(f"codebook index out of range for tensor {name!r}", unit_index=unit_index,
                                     syntax_path="NNR_NDU.payload")
            table = reconstruct_codebook(np.arange(-zero, len(values) - zero), values, zero, qp, job.ctx.qp_density)
            out_dtype = job.out_dtype or table.dtype
            _check_fits(name, table[[qmin + zero, qmax + zero]], out_dtype, unit_index)
            table = table.astype(out_dtype)
            out = np.empty(flat.size, out_dtype)
            for i in range(0, flat.size, _CHUNK):
                c = flat[i:i + _CHUNK].astype(np.int64)
                c += zero
                np.take(table, c, out=out[i:i + _CHUNK])
            return out.reshape(shape)
        step = step_size(qp, job.ctx.qp_density)
        out_dtype = job.out_dtype or np.dtype(np.float32)
        _check_fits(name, np.array([qmin, qmax], np.float32) * step, out_dtype, unit_index)
        out = np.empty(flat.size, out_dtype)
        for i in range(0, flat.size, _CHUNK):
            part = flat[i:i + _CHUNK].astype(np.float32)
            part *= step                       # float32(q) * float32(step), as reconstruct_uniform
            out[i:i + _CHUNK] = part
        return out.reshape(shape)


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
