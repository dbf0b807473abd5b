"""Whole-model encoding and decoding: tensors <-> NNR units.

Layout written (as NNCodec 2.1.3 does, spec §1.12): NNR_STR, NNR_MPS, NNR_TPL, then one NNR_NDU per tensor
in input order. Float tensors are quantised (uniform or dependent quantisation) and sent as NNR_PT_FLOAT;
integer tensors are sent losslessly as NNR_PT_INT.
"""
from __future__ import annotations

import collections
import functools
import math
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, Mapping

import numpy as np

from . import bitstream as bs
from . import deepcabac
from ._atomic import atomic_stream
from .bitstream.source import as_bytes
from .coding import tools as _tools
from .coding.dtypes import (bfloat16_dtype, coding_kind, dtype_record, float32_view, format_for_dtype,
                            is_bfloat16, recorded_dtypes)
from .coding.ndu import NduParent, NduPlan, effective_scan, plan_ndu, signalled_scan, with_history
from .coding.quant import quantize_tensor, reconstruct_codebook, step_size
from .config import DecoderConfig, EncoderConfig, default_decoder_config
from .errors import BitstreamError, InputError, LimitExceededError, NNCError, UnsupportedFeatureError
from .topology import Topology

__all__ = ["Encoder", "Decoder", "DecodedModel", "DecodedTensor", "EncodeSummary", "encode", "decode",
           "decode_model"]


def resolve_threads(threads: int | None) -> int:
    """``threads`` of a config: ``None`` means every CPU this process may run on."""
    if threads is not None:
        return int(threads)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _ordered_map(fn: Callable, items, threads: int, window: int | None = None, *,
                 costs: "list[tuple[int, int]] | None" = None, cap: int | None = None) -> Iterator:
    """``map(fn, items)`` on ``threads`` worker threads, results yielded in input order as they complete.

    At most ``threads`` items run at once, and at most ``window`` (default ``4 * threads``) have been
    submitted and not yet yielded, so memory stays bounded by a few items whatever the length of ``items``
    (``items`` may be a lazy iterator: it is consumed no faster than results are taken). On an error the
    items not started are cancelled and the first error in input order is raised.

    With ``costs`` (``items`` a sequence; per item: bytes in use while it runs, bytes its result holds until
    it is yielded) the items are scheduled largest first instead (see :func:`_largest_first`)."""
    if threads <= 1:
        for x in items:
            yield fn(x)
        return
    if costs is not None:
        yield from _largest_first(fn, list(items), threads, costs, cap, window or 64 * threads)
        return
    window = window or 4 * threads
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(threads) as pool:
        try:
            for x in items:
                pending.append(pool.submit(fn, x))
                while len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def _largest_first(fn: Callable, items: list, threads: int, costs: list[tuple[int, int]], cap: int | None,
                   lookahead: int) -> Iterator:
    """The scheduler of :func:`_ordered_map` with costs. In input order, one large tensor near the end (or the
    start) of a model leaves every other thread idle while it alone is coded; so a free thread takes the most
    expensive item not yet started among the next ``lookahead`` ones whose cost fits: everything started and
    not yet yielded (running items at their running cost, finished ones at what their result holds) stays
    within ``cap`` bytes (default: the ``threads`` largest running costs, what running in input order can
    hold at once). The next item to yield may always start, so a single item over ``cap`` still runs.
    Results are yielded in input order, so the output does not depend on the schedule."""
    n = len(items)
    run = [int(c[0]) for c in costs]
    held_after = [int(c[1]) for c in costs]
    if cap is None:
        cap = sum(sorted(run, reverse=True)[:threads])
    futures: dict[int, object] = {}
    running: dict[object, int] = {}
    held = 0
    head = 0
    with ThreadPoolExecutor(threads) as pool:
        try:
            while head < n:
                while len(running) < threads:
                    pick = None
                    for j in range(head, min(n, head + lookahead)):
                        if j not in futures and held + run[j] <= cap and (pick is None or run[j] > run[pick]):
                            pick = j
                    if pick is None and head not in futures:
                        pick = head
                    if pick is None:
                        break
                    f = pool.submit(fn, items[pick])
                    futures[pick] = f
                    running[f] = pick
                    held += run[pick]
                if running:
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for f in done:
                        j = running.pop(f)
                        held += held_after[j] - run[j]
                while head < n and head in futures and futures[head].done():
                    f = futures.pop(head)
                    held -= held_after[head]
                    head += 1
                    yield f.result()
        finally:
            for f in futures.values():
                f.cancel()


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
        raise InputError(f"tensor {name!r} is a torch tensor; nnc.encode takes numpy arrays (bfloat16 as "
                         "ml_dtypes.bfloat16): use lm = nnc.converters.from_torch(model_or_state_dict), then "
                         "nnc.encode(lm.tensors, config, topology=lm.topology)")
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001 - report any conversion failure as bad input
        raise InputError(f"tensor {name!r} cannot be converted to a numpy array: {e}") from None


def _plan(name: str, arr, index: int, cfg: EncoderConfig, qp: int | None = None) -> TensorPlan:
    """Validate and quantise one tensor. ``arr`` may be a one-element list holding the array: the list is
    emptied, so that the input can be freed as soon as its float32 copy exists (a caller's argument would
    otherwise keep it alive for the whole call)."""
    if isinstance(arr, list):
        arr = arr.pop()
    kind = coding_kind(name, arr.dtype)
    ndim = arr.ndim
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
    x = _float32_input(name, arr, resolve_threads(cfg.threads)).reshape(shape)
    del arr                          # the caller's reference is all that keeps a lazily read input alive
    qp = cfg.qp_for(name, ndim) if qp is None else qp
    scan = effective_scan(shape, cfg.scan_order if len(shape) > 1 else 0)
    bits = None
    if cfg.bitdepth is not None and ".num_batches_tracked" not in name:
        bits = _tools.bitdepth.effective_bits(cfg.bitdepth, ndim > 1)
    if cfg.codebook != "off":
        ch = _tools.codebook.codebook_quantize(
            x, qp, cfg.qp_density, mode=cfg.codebook, dq=cfg.dq, scan_order=scan, profile=cfg.profile,
            param_opt=cfg.param_opt, unary_length_minus1=cfg.unary_length_minus1, bitdepth=bits)
        cb = None if ch.values is None else (ch.values, ch.zero_offset, ch.egk)
        return TensorPlan(name, index, shape, ch.q, ch.qp, ch.dq, fmt, cb)
    q, qp_used = quantize_tensor(x, qp, cfg.qp_density, dq=cfg.dq, scan_order=scan, name=name)
    if bits is not None:
        q = _tools.bitdepth.clip_levels(q, x, bits)
    del x
    return TensorPlan(name, index, shape, q, qp_used, cfg.dq, fmt)


def _float32_input(name: str, arr: np.ndarray, threads: int) -> np.ndarray:
    """``arr`` as a flat C-contiguous float32 array (itself when it already is one; bfloat16 widened exactly),
    checked finite: in slices, on ``threads`` threads for a large tensor (numpy releases the GIL)."""
    src = np.ascontiguousarray(arr).reshape(-1)
    x = src if src.dtype == np.float32 else np.empty(src.size, np.float32)

    def one(i: int) -> int:
        part = x[i:i + _CHUNK]
        if x is not src:
            float32_view(src[i:i + _CHUNK], out=part)
        ok = np.isfinite(part)
        return -1 if ok.all() else i + int(np.flatnonzero(~ok)[0])

    bad = [b for b in _chunks(src.size, one, threads) if b >= 0]
    if bad:
        raise InputError(f"tensor {name!r} holds a non-finite value (first at flat index {bad[0]}); "
                         "NNC quantisation needs finite numbers")
    return x


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
    payload, eps = deepcabac.encode_payload([(plan.q, coding, plan.qp or 0, options)],
                                            threads=resolve_threads(cfg.threads))
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

    @property
    def threads(self) -> int:
        return resolve_threads(self.config.threads)

    def _check_mapping(self, tensors) -> None:
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

    def _prepare(self, tensors: Mapping[str, np.ndarray]) -> tuple[list[tuple[int, str, np.ndarray]], dict]:
        """Validate names and arrays and apply the model-level encoder tools (sparsification, opt_qp, bit-depth
        QPs, rate control; ``nnc.coding.tools``). Returns ``[(index, name, array)]`` and per-tensor QP overrides."""
        self._check_mapping(tensors)
        items = [(_validate_name(k), _as_array(k, v)) for k, v in tensors.items()]
        arrays, qps = _tools.prepare(dict(items), self.config)
        return [(i, k, arrays[k]) for i, (k, _) in enumerate(items)], qps

    def _sources(self, tensors: Mapping) -> tuple[list[tuple[int, str, Callable[[], np.ndarray]]], dict]:
        """``[(index, name, get_array)]`` without reading any tensor when no model-level tool needs the whole
        model: a lazy mapping (``nnc.converters.open_model``) is then read one tensor at a time, in the worker
        that codes it."""
        cfg = self.config
        if (cfg.sparsity is not None or cfg.struct_sparsity is not None or cfg.bitdepth is not None or cfg.opt_qp
                or cfg.target_bits_per_param is not None or cfg.max_rel_error is not None):
            items, qps = self._prepare(tensors)
            return [(i, k, (lambda a=a: a)) for i, k, a in items], qps
        self._check_mapping(tensors)
        names = [_validate_name(k) for k in tensors.keys()]
        return [(i, k, (lambda k=k: _as_array(k, tensors[k]))) for i, k in enumerate(names)], {}

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
        return b"".join(self.iter_units(tensors, topology=topology, progress=progress))

    def encode_to(self, dest: str | os.PathLike | BinaryIO, tensors: Mapping[str, np.ndarray], *,
                  topology: Topology | None = None, progress: bool = False) -> "EncodeSummary":
        """Encode ``tensors`` and write the bitstream to ``dest`` unit by unit as the units are produced.

        ``dest``: a path (written atomically: a temporary file in the same folder, renamed when complete, so
        an error leaves no partial file) or a binary file object. With a lazy mapping
        (:func:`nnc.converters.open_model`) memory stays bounded by the tensors being coded (at most
        ``threads`` at once) whatever the model size. The bytes are the same as :meth:`encode`'s.
        """
        summary = EncodeSummary()

        def write(f) -> None:
            for unit in self.iter_units(tensors, topology=topology, progress=progress, summary=summary):
                f.write(unit)
                summary.bitstream_bytes += len(unit)

        if hasattr(dest, "write"):
            write(dest)
        else:
            with atomic_stream(os.fspath(dest)) as f:   # nothing named until complete, even if killed
                write(f)
        return summary

    def iter_units(self, tensors: Mapping[str, np.ndarray], *, topology: Topology | None = None,
                   progress: bool = False, summary: "EncodeSummary | None" = None) -> Iterator[bytes]:
        """The NNR units of the bitstream, in order, each as soon as it (and every unit before it) is coded.

        Tensors are coded on ``config.threads`` threads (default: every CPU); the output does not depend on
        the thread count. A tensor is read (``tensors[name]``) only when a worker starts on it and released
        when its NDU is built."""
        cfg = self.config
        items, qps = self._sources(tensors)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(items), unit=" tensors", leave=False, disable=None, desc="encoding")

        def one(item) -> tuple[bytes, int, int]:
            i, name, get = item
            box = [get()]
            n, nbytes = int(box[0].size), int(box[0].nbytes)
            plan = _plan(name, box, i, cfg, qps.get(name))
            return encode_ndu(plan, cfg, parent_signalling=False), n, nbytes

        if topology is None:
            # bfloat16 has no nnr_decompressed_data_format code: its names go in a JSON record in the TPL unit
            # (which NNCodec reads and ignores); without bfloat16 inputs the TPL is NNCodec's empty one.
            # so do the unsigned integer dtypes (and bool) when cfg.signal_dtype asks for the dtypes back
            declared = _declared_dtypes(tensors)
            recorded = {k: dt for k, dt in declared.items()
                        if dt == "bfloat16" or (cfg.signal_dtype and dt in _UNSIGNALLED)}
            topology = _record_topology(recorded)
        try:
            yield bs.start_unit(cfg.profile)
            yield bs.mps_unit(profile=cfg.profile, qp_density=cfg.qp_density, parent_signalling=False)
            yield bs.tpl_unit(topology)
            for unit, n, nbytes in _ordered_map(one, items, self.threads,
                                                 costs=_encode_costs(tensors, items) if self.threads > 1 else None):
                if summary is not None:
                    summary.tensors += 1
                    summary.parameters += n
                    summary.input_bytes += nbytes
                if bar is not None:
                    bar.update(1)
                yield unit
        finally:
            if bar is not None:
                bar.close()

    def _map(self, fn, items: list) -> list:
        """``[fn(x) for x in items]`` on ``config.threads`` threads, in order."""
        return list(_ordered_map(fn, items, min(self.threads, max(1, len(items)))))


def _encode_costs(tensors: Mapping, items: list) -> "list[tuple[int, int]] | None":
    """Per item of :meth:`Encoder._sources` (bytes while it is coded, bytes of its NDU until written), from the
    shapes without reading a tensor: a lazy mapping's ``shapes()`` (``nnc.converters.open_model``) or a
    dict's arrays; None (input order) when neither says. While coded a tensor holds its input, a float32 copy
    and int32 levels; its NDU is counted at one byte per element (coded NDUs are smaller)."""
    shapes = getattr(tensors, "shapes", None)
    try:
        if callable(shapes):
            sizes = {k: math.prod(v) for k, v in shapes().items()}
            itemsize = dict.fromkeys(sizes, 4)
        elif type(tensors) is dict:       # a subclass may read lazily in __getitem__
            arrays = {k: v for k, v in tensors.items() if isinstance(v, np.ndarray)}
            sizes = {k: int(v.size) for k, v in arrays.items()}
            itemsize = {k: int(v.itemsize) for k, v in arrays.items()}
        else:
            return None
        return [(sizes[name] * (itemsize[name] + 8), sizes[name]) for _, name, _ in items]
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class EncodeSummary:
    """What :meth:`Encoder.encode_to` wrote: tensor and parameter counts, input bytes at the inputs' own width
    (bfloat16/float16 count 2 bytes), bitstream bytes."""

    tensors: int = 0
    parameters: int = 0
    input_bytes: int = 0
    bitstream_bytes: int = 0


def _dtype_name(v) -> str:
    dt = getattr(v, "dtype", None)
    name = str(dt) if dt is not None else ""
    return "bfloat16" if name in ("torch.bfloat16", "bfloat16") else name


def _declared_dtypes(tensors: Mapping) -> dict[str, str]:
    """name -> dtype name, without reading lazily stored tensors (a mapping may offer ``dtype_names()``)."""
    names = getattr(tensors, "dtype_names", None)
    if callable(names):
        return dict(names())
    return {k: _dtype_name(v) for k, v in tensors.items()}


#: integer dtypes without an nnr_decompressed_data_format code: recorded by name when signal_dtype is set
_UNSIGNALLED = ("uint8", "uint16", "uint32", "bool")


def _record_topology(dtypes: dict[str, str]) -> Topology:
    return Topology(data=dtype_record(dtypes)) if dtypes else Topology()


# ----------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DecodedTensor:
    """One decoded tensor with the coding information that produced it."""

    name: str
    array: np.ndarray
    levels: np.ndarray | None       # stored integers (q; codebook indices for codebook tensors); None when
                                    # the stream was opened with levels=False
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
        self.last_budget: _Budget | None = None   # what the last decode held (the CLI bounds topology inflation
        #                                           by the rest)
        #: the parsed units of the last :meth:`decode_model` that failed after the stream parsed cleanly (a
        #: payload or plan error), else None: :func:`nnc.check` (``units=``) words the failure without a second
        #: parse
        self.failed_units: list | None = None

    def decode(self, bitstream) -> dict[str, np.ndarray]:
        """Decode a whole-model bitstream to ``{name: array}`` in bitstream order (the levels of each tensor
        are freed as soon as it is reconstructed)."""
        return self._collect(self._open(bitstream, None, levels=False, hold_outputs=True)).tensors

    def decode_model(self, bitstream, *, state=None, levels: bool = True) -> DecodedModel:
        """Decode and also return the topology and per-tensor coding details.

        ``state`` (used by :class:`nnc.UpdateDecoder`) supplies TCA bases and HDSP histories per name;
        ``levels=False`` drops each tensor's decoded integers (``details[name].levels`` is then None).
        """
        self.failed_units = None
        units: list = []
        try:
            return self._collect(self._open(bitstream, state, levels=levels, hold_outputs=True, units=units))
        except NNCError:
            self.failed_units = units or None
            raise

    def _open(self, bitstream, state, *, levels: bool, hold_outputs: bool, units: list | None = None
              ) -> "DecodeStream":
        stream = DecodeStream(self.config, bitstream, state, levels, hold_outputs, units)
        self.last_budget = stream.budget
        return stream

    def _collect(self, stream: "DecodeStream") -> DecodedModel:
        model = DecodedModel(tensors={}, topology=stream.topology, profile=stream.profile,
                             parent_signalling=stream.parent_signalling)
        with bs.paused_gc():    # decoded tensors are acyclic: no collector passes over them
            for t in stream:
                model.tensors[t.name] = t.array
                model.details[t.name] = t
        return model

    def stream(self, bitstream, *, state=None, levels: bool = True) -> "DecodeStream":
        """A bitstream (bytes-like, or a ``pathlib.Path``: memory-mapped) opened for decoding tensor by tensor.

        All unit headers are parsed and checked against the limits first (nothing is decoded before the
        whole stream is known to be acceptable); iterating the result then decodes the NDUs in bitstream
        order on ``config.threads`` threads, with at most a few tensors in memory at once, and yields each
        :class:`DecodedTensor` once it and all before it are done. ``entries`` lists (name, shape, dtype) of
        every tensor before anything is decoded, so an output file can be laid out up front.
        ``levels=False`` drops each tensor's decoded integers once it is reconstructed (``DecodedTensor.levels``
        is then None), which halves the memory of a tensor waiting to be written.

        ``config.max_total_bytes`` bounds what decoding holds at once: the parsed headers plus the tensors in
        flight (the caller writes each yielded tensor away; what it keeps is its own), not the whole model."""
        return self._open(bitstream, state, levels=levels, hold_outputs=False)


class DecodeStream:
    """See :meth:`Decoder.stream`."""

    def __init__(self, cfg: DecoderConfig, bitstream, state, levels: bool = True, hold_outputs: bool = False,
                 units: list | None = None):
        self._cfg = cfg
        self._levels = levels
        self._mm = None
        if isinstance(bitstream, os.PathLike):   # a str stays an error: it is too easily bytes meant as text
            import mmap
            try:
                with open(os.fspath(bitstream), "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            except OSError as e:
                raise InputError(f"cannot read bitstream {os.fspath(bitstream)!r}: {e.strerror}") from None
            data = memoryview(self._mm) if self._mm is not None else b""
        else:
            data = as_bytes(bitstream)
        self.budget = _Budget(cfg)
        with bs.paused_gc():     # parsed units, their plans and entries are acyclic: no collector passes
            self._plan(cfg, data, state, hold_outputs, units)
        self._threads = resolve_threads(cfg.threads)

    def _plan(self, cfg: DecoderConfig, data, state, hold_outputs: bool, units: list | None) -> None:
        parsed = bs.parse(data, limits=cfg, budget=self.budget)
        if units is not None:
            units.extend(parsed.units)
        ctx = _StreamContext.from_parsed(parsed)
        self.profile = ctx.profile
        self.topology = ctx.topology
        self.parent_signalling = ctx.parent_signalling
        ndus = [u for u in parsed if u.nnr_unit_type == bs.UnitType.NNR_NDU]
        self._jobs = [_prepare_ndu(u, ctx, cfg, self.budget, state, hold_outputs) for u in ndus]
        seen: set[str] = set()
        self.entries: list[tuple[str, tuple[int, ...], np.dtype]] = []
        for job in self._jobs:
            for m in job.plan.members:
                if m.name in seen:
                    raise BitstreamError(f"tensor {m.name!r} is coded twice", unit_index=job.unit.index,
                                         syntax_path="NNR_NDU.topology_elem_id")
                seen.add(m.name)
                dt = _result_dtype(job, m.name, m.kind)
                job.dtypes.append(dt)
                self.entries.append((m.name, tuple(m.shape), dt))

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[DecodedTensor]:
        jobs, self._jobs = self._jobs, []
        # Block rows of one tensor (entry points) use the same threads as the NDUs: the core joins its row
        # threads before returning, so at most threads x threads short-lived threads exist.
        # Small NDUs go to the threads in batches (a thread hand-off costs more than decoding a tiny tensor);
        # batches run largest first, within what the budget counted in flight (the largest transients, one
        # per thread + 1): decoded tensors that wait for the ones before them stay inside that bound.
        def run(batch):
            return [t for j in batch for t in _run_ndu(j, self._threads, self._release, self._levels)]

        batches = list(_batches(jobs))
        costs = [(sum(j.run_cost for j in b), sum(j.done_cost for j in b)) for b in batches]
        cap = max([sum(self.budget.transients)] + [c[0] for c in costs])
        for tensors in _ordered_map(run, batches, self._threads, costs=costs, cap=cap):
            yield from tensors

    def _release(self, job: "_NduJob") -> None:
        """Drop the mapped pages of a decoded payload from this process's resident set (they are file pages:
        re-read from the page cache if needed), so that decoding a file does not grow RSS with its size."""
        if self._mm is None:
            return
        import mmap
        start = job.unit.offset + job.unit.header_size
        lo = start - start % mmap.PAGESIZE
        hi = start + len(job.unit.payload)
        if hasattr(self._mm, "madvise") and hi > lo:
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):  # pragma: no cover - advisory only
                pass


#: NDUs whose tensors together hold fewer elements than this are decoded together on one thread, up to
#: this many elements per batch (the extra memory a batch holds is bounded by it: a few MB at most).
_BATCH_ELEMENTS = 1 << 15


def _batches(jobs: list) -> Iterator[list]:
    batch: list = []
    size = 0
    for job in jobs:
        n = sum(math.prod(m.shape) for m in job.plan.members)
        if batch and size + n > _BATCH_ELEMENTS:
            yield batch
            batch, size = [], 0
        batch.append(job)
        size += n
    if batch:
        yield batch


def _result_dtype(job: "_NduJob", name: str, kind: str) -> np.dtype:
    recorded = job.ctx.recorded.get(name)
    if recorded == "bfloat16" and kind != "int" and bfloat16_dtype() is not None:
        return bfloat16_dtype()
    if recorded in _UNSIGNALLED and kind == "int":
        return np.dtype(recorded)
    if job.plan.out_dtype is not None:
        return np.dtype(job.plan.out_dtype)
    if kind == "int":
        return np.dtype(np.int32)
    return np.dtype(np.float64) if kind == "codebook" else np.dtype(np.float32)


@dataclass
class _StreamContext:
    profile: int
    qp_density: int
    base_qp: int
    parent_signalling: bool
    topology: Topology | None
    recorded: dict = field(default_factory=dict)   # name -> original dtype the TPL record names (bfloat16, uint8)

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
        recorded = {k: v for k, v in recorded_dtypes(topo).items() if v == "bfloat16" or v in _UNSIGNALLED}
        return cls(profile=parsed.profile, qp_density=qd, base_qp=qp0,
                   parent_signalling=bool(getattr(mps, "mps_parent_signalling_enabled_flag", 0)),
                   topology=topo, recorded=recorded)


#: Elements reconstructed per step (bounds the float temporaries of reconstruction to a few MB).
_CHUNK = 1 << 18
#: Memory per block row while decoding: the core's entry point (16 bytes) and its Python tuple in the result.
_ENTRY_POINT_BYTES = 160


def _in_flight_slots(threads: int | None) -> int:
    """How many tensors' transients the decode budget counts at once: one per thread, plus one with several
    threads, so that the largest-first schedule can keep the other threads busy while the largest tensor
    decodes (results wait in memory for the ones before them)."""
    n = resolve_threads(threads)
    return n + 1 if n > 1 else 1


class _Budget(bs.MemoryBudget):
    """The decoder's account (:class:`nnc.bitstream.MemoryBudget`): parsed headers, then per tensor the output
    and, while it decodes, its int32 levels, row-skip flags, entry points and reconstruction temporaries, all
    checked against ``max_total_bytes`` before anything is allocated. Several tensors may be in flight at
    once, so the largest :func:`_in_flight_slots` transients are counted together."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__(cfg)
        self.cfg = cfg
        self.transients: list[int] = []
        self.threads: int | None = None

    def take_tensor(self, elements: int, held: int, transient: int, unit_index: int, name: str) -> None:
        if elements > self.cfg.max_tensor_elements:
            raise LimitExceededError(f"tensor {name!r} claims {elements} elements, more than max_tensor_elements="
                                     f"{self.cfg.max_tensor_elements}", unit_index=unit_index,
                                     syntax_path="NNR_NDU.tensor_dimensions")
        if self.threads is None:
            self.threads = _in_flight_slots(self.cfg.threads)
        peak = self.transients
        if len(peak) < self.threads:
            peak = sorted(peak + [transient], reverse=True)
        elif transient > peak[-1]:      # the largest ``threads`` (+ 1) transients, kept in decreasing order
            peak = sorted(peak[:-1] + [transient], reverse=True)
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
    plan: NduPlan
    ctx: _StreamContext
    entry_points: list | None = None     # per coded tensor: the signalled entry points (or None)
    run_cost: int = 0                    # bytes in use while it decodes (what the budget counts in flight)
    done_cost: int = 0                   # bytes its decoded tensors hold until they are taken
    dtypes: list = field(default_factory=list)   # per member: the dtype it decodes to (_result_dtype)


def _prepare_ndu(unit, ctx: _StreamContext, cfg: DecoderConfig, budget: _Budget, state,
                 hold_outputs: bool = True) -> _NduJob:
    """The unit's :class:`nnc.coding.NduPlan`, with every tensor's memory taken from ``budget`` before any
    payload is decoded. ``hold_outputs=False`` (a stream whose consumer writes each tensor away) counts the
    output among the tensor's transient memory instead of what decoding keeps."""
    h = unit.body
    ptype = h.nnr_compressed_data_unit_payload_type
    if ptype == bs.PayloadType.NNR_PT_RAW_FLOAT:
        raise UnsupportedFeatureError("NNR_PT_RAW_FLOAT NDUs are not supported yet")
    if ptype == bs.PayloadType.NNR_PT_BLOCK and (getattr(h, "parent_node_id_present_flag", 0) or state is not None):
        raise UnsupportedFeatureError("incremental (parent) NNR_PT_BLOCK NDUs are not supported")
    plan = plan_ndu(h, profile=ctx.profile, qp_density=ctx.qp_density, unit_index=unit.index,
                    max_rank=cfg.max_rank, max_codebook_size=cfg.max_codebook_size)
    run_cost = done_cost = 0
    for m in plan.members:
        n = math.prod(m.shape)
        cb = m.kind == "codebook"
        itemsize = max(plan.itemsize, 8) if cb else plan.itemsize   # codebook tensors reconstruct in float64
        levels_are_output = m.kind == "int" and plan.out_dtype in (None, np.dtype(np.int32))
        held, transient = _tensor_cost(n, m.shape[0], deepcabac.block_row_count(m.coding), itemsize,
                                       levels_are_output, state is not None, 16 * len(plan.codebook[0]) if cb else 0)
        if not hold_outputs:
            done_cost += held
            held, transient = 0, held + transient
        budget.take_tensor(n, held, transient, unit.index, m.name)
        run_cost += transient
    if state is not None:
        plan = with_history(plan, h, state)
    eps = _signalled_entry_points(h)
    return _NduJob(unit, plan, ctx, [eps if m.role in ("tensor", "weight") else None for m in plan.members],
                   run_cost, done_cost)


def _signalled_entry_points(h) -> list | None:
    """The NDU's cabac_entry_point_list as core entry points (None when absent): with them the core decodes
    the block rows of the tensor in parallel (and falls back to sequential decoding when they do not join up
    with the payload, which gives what any sequential decoder gives)."""
    eps = getattr(h, "cabac_entry_point_list", None)
    if not eps:
        return None
    return [deepcabac.EntryPoint(int(e.value), int(e.dq_state or 0), int(e.bit_offset)) for e in eps]


@functools.lru_cache(maxsize=1024)
def _step_is_finite(qp: int, qp_density: int) -> bool:
    try:
        with np.errstate(over="ignore"):
            step = step_size(qp, qp_density)
    except OverflowError:
        return False
    return bool(np.isfinite(step))


def _check_step(qp: int, qp_density: int, name: str, unit_index: int) -> None:
    """A hostile MPS qp plus qp offset can ask for a step of 2**4000: refuse it instead of raising
    OverflowError or reconstructing inf (an encoder never writes a qp whose float32 step is not finite)."""
    if not _step_is_finite(qp, qp_density):
        raise BitstreamError(f"tensor {name!r}: qp {qp} (qp_density {qp_density}) gives a step size that "
                             "overflows float32", unit_index=unit_index,
                             syntax_path="NNR_MPS.mps_quantization_parameter")


def _run_ndu(job: _NduJob, threads: int = 1, release=None, keep_levels: bool = True) -> list[DecodedTensor]:
    unit, plan = job.unit, job.plan
    try:
        try:
            levels, qp_offsets, consumed = deepcabac.decode_levels(
                unit.payload, [m.coding for m in plan.members], entry_points=job.entry_points, threads=threads)
        except BitstreamError as e:
            # the core's location (tensor, element, bit in the payload) stays on e; add the unit and the byte
            at = 0 if e.payload_bit_offset is None else min(e.payload_bit_offset // 8, len(unit.payload))
            raise e.located(unit_index=unit.index, byte_offset=unit.offset + unit.header_size + at,
                            syntax_path="NNR_NDU.payload")
    finally:
        if release is not None:
            release(job)
    if consumed != len(unit.payload):
        raise BitstreamError(f"the CABAC data ends after {consumed} of {len(unit.payload)} payload bytes "
                             "(nnr_unit_size does not match the coded data)", unit_index=unit.index,
                             byte_offset=unit.offset + unit.header_size + consumed,
                             syntax_path="NNR_NDU.payload")
    h = unit.body
    out = []
    for i, member in enumerate(plan.members):
        name, kind = member.name, member.kind
        q = levels[i]
        levels[i] = None                   # the levels of this tensor are freed once it is reconstructed
        qoff = qp_offsets[i]
        qp = None if qoff is None else qoff + job.ctx.base_qp
        if kind != "int":
            _check_step(qp, job.ctx.qp_density, name, unit.index)
        arr = _reconstruct(q, kind, qp, job, job.dtypes[i], name, unit.index, threads)
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
    if dtype.kind == "f" or is_bfloat16(dtype):
        with np.errstate(over="ignore", invalid="ignore"):
            cast = ends.astype(dtype).astype(np.float64)
        if not np.isfinite(ends).all() or not np.isfinite(cast).all():
            raise _range_error(name, lo, hi, dtype, unit_index, "overflow")
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not np.isfinite(ends).all() or lo < info.min or hi > info.max:
            raise _range_error(name, lo, hi, dtype, unit_index, "do not fit")


def _in_errstate(fn: Callable[[int], object], i: int):
    with np.errstate(over="ignore", invalid="ignore"):
        return fn(i)


def _chunks(n: int, fn: Callable[[int], object], threads: int) -> list:
    """``[fn(i) for i in range(0, n, _CHUNK)]``, on up to ``threads`` threads when there are several chunks
    (numpy releases the GIL in its loops, so the slices of one large tensor are converted in parallel)."""
    starts = range(0, n, _CHUNK)
    if threads <= 1 or len(starts) <= 1:
        return [fn(i) for i in starts]
    with ThreadPoolExecutor(min(threads, len(starts))) as pool:
        return list(pool.map(fn, starts))


_SMALL = 64
_F32 = np.dtype(np.float32)
_F32_INF = 2.0 ** 128 - 2.0 ** 103     # float32 products of at least this size round to inf


@functools.lru_cache(maxsize=1024)
def _step32(qp: int, qp_density: int) -> np.float32:
    return step_size(qp, qp_density)


def _reconstruct_small(flat: np.ndarray, qp: int, qp_density: int, name: str, unit_index: int) -> np.ndarray:
    """:func:`_reconstruct` of a few uniform levels into float32, without numpy's per-call error-state and
    reduction overhead: the float32 products of the extreme levels are exact in float64, so comparing them
    with the float32 overflow threshold is the same check as :func:`_check_fits`."""
    step = _step32(qp, qp_density)
    lv = flat.tolist()
    qmin, qmax = min(lv), max(lv)
    s = float(step)
    lo, hi = float(np.float32(qmin)) * s, float(np.float32(qmax)) * s
    if not (abs(lo) < _F32_INF and abs(hi) < _F32_INF):
        with np.errstate(over="ignore", invalid="ignore"):
            _check_fits(name, np.array([qmin, qmax], np.float32) * step, _F32, unit_index)   # raises
    out = flat.astype(np.float32)
    out *= step                       # float32(q) * float32(step), as reconstruct_uniform
    return out


def _reconstruct(q: np.ndarray, kind: str, qp, job: _NduJob, out_dtype: np.dtype, name: str, unit_index: int,
                 threads: int = 1) -> np.ndarray:
    """The decoded array of one tensor in ``out_dtype``, built in place chunk by chunk (no full-size
    temporaries; the chunks of a large tensor on ``threads`` threads), refusing values that would overflow or
    wrap in it."""
    shape = q.shape
    flat = q.reshape(-1)
    if flat.size == 0:
        return q.astype(out_dtype)
    if flat.size <= _SMALL and kind == "uniform" and out_dtype == _F32:
        return _reconstruct_small(flat, qp, job.ctx.qp_density, name, unit_index).reshape(shape)
    lims = _chunks(flat.size, lambda i: (int(flat[i:i + _CHUNK].min()), int(flat[i:i + _CHUNK].max())), threads)
    qmin, qmax = min(lo for lo, _ in lims), max(hi for _, hi in lims)
    if kind == "int":
        if out_dtype == np.int32:
            return q
        if out_dtype == np.bool_:
            return q != 0
        _check_fits(name, np.array([qmin, qmax], np.float64 if out_dtype.kind == "f" else np.int64),
                    out_dtype, unit_index)
        return q.astype(out_dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "codebook":
            values, zero = job.plan.codebook
            if qmin + zero < 0 or qmax + zero >= len(values):
                raise BitstreamError(f"codebook index out of range for tensor {name!r}", unit_index=unit_index,
                                     syntax_path="NNR_NDU.payload")
            table = reconstruct_codebook(np.arange(-zero, len(values) - zero), values, zero, qp, job.ctx.qp_density)
            _check_fits(name, table[[qmin + zero, qmax + zero]], out_dtype, unit_index)
            table = table.astype(out_dtype)
            out = np.empty(flat.size, out_dtype)
            for i in range(0, flat.size, _CHUNK):
                c = flat[i:i + _CHUNK].astype(np.int64)
                c += zero
                np.take(table, c, out=out[i:i + _CHUNK])
            return out.reshape(shape)
        step = step_size(qp, job.ctx.qp_density)
        _check_fits(name, np.array([qmin, qmax], np.float32) * step, out_dtype, unit_index)
        out = np.empty(flat.size, out_dtype)

        def one(i: int) -> None:
            part = flat[i:i + _CHUNK].astype(np.float32)
            part *= step                       # float32(q) * float32(step), as reconstruct_uniform
            out[i:i + _CHUNK] = part

        _chunks(flat.size, lambda i: _in_errstate(one, i), threads)   # errstate is per thread: set in each
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
