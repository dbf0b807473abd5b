"""Frozen configuration objects for the encoder and the decoder.

Settings live in small immutable dataclasses with named constructors instead of long keyword lists.
Contradictory or out-of-range settings raise :class:`nnc.errors.ConfigError` when the object is built;
nothing is silently changed later.
"""
from __future__ import annotations

import contextlib
import contextvars
import fnmatch
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

from .errors import ConfigError

__all__ = ["EncoderConfig", "DecoderConfig", "decoder_limits", "default_decoder_config", "active_decoder_limits"]


def _qp_range(qp_density: int) -> tuple[int, int]:
    """The QP values a ``6 + qp_density``-bit two's-complement offset can carry (MPS QP is 0)."""
    half = 1 << (5 + qp_density)
    return -half, half - 1


@dataclass(frozen=True)
class EncoderConfig:
    """How tensors are quantised and entropy coded.

    The defaults reproduce NNCodec 2.1.3's ``nncodec.nn.encode`` behaviour for a dict of arrays
    (profile 1, qp_density 2, dependent quantisation, row skipping and parameter optimisation on,
    non-weight QP -75), so that nnc's bitstreams are byte-identical to the reference's.

    Attributes:
        qp: quantisation parameter of weight tensors (rank > 1). Step size ``(1 + (qp mod k)/k) * 2**(qp//k)``
            with ``k = 2**qp_density``: lowering qp by ``k`` halves the step.
        qp_density: 0..7, QP steps per octave of step size is ``2**qp_density``.
        nonweight_qp: QP of tensors with rank <= 1 (biases, norms). ``None`` means ``qp - 2**(qp_density+1)``.
        qp_per_tensor: QP overrides by tensor name; keys are exact names or fnmatch patterns
            (``"*.bias"``); an exact name wins over a pattern, and the first matching pattern wins.
        dq: dependent (trellis-coded) quantisation.
        row_skipping: signal all-zero rows so that their elements are not coded (profile 1).
        param_opt: choose context initialisations per tensor (DeepCABAC parameter optimisation).
        scan_order: 0 row-major, 1..4 block scan with 8/16/32/64 blocks (adds entry points).
        unary_length_minus1: ``cabac_unary_length_minus1`` (greater-than flags minus one).
        profile: ``general_profile_idc`` (1 = 2nd edition tools; 0 = 1st edition).
        device_id: ``device_id`` written in each NDU (profile 1).
        signal_dtype: for inputs that are neither float32 nor int32 (float16, float64, int8, int16, int64),
            write ``nnr_decompressed_data_format`` so that decoding restores the dtype.
        threads: worker threads coding tensors in parallel (the C++ core releases the GIL); ``None`` (default)
            = every CPU this process may use. The bitstream does not depend on it.
        codebook: ``"off"``, ``"auto"`` (codebook per tensor when it codes smaller than uniform/DQ, NNCodec's
            ``codebook_mode=2``) or ``"force"`` (always, ``codebook_mode=1``). With ``dq=True`` the codebook
            levels come from URQ at ``qp - 2**qp_density`` (spec §2.5).
        bitdepth: integer-aligned mode with this many bits (1..31): per-tensor qps from the 99.95th
            percentile of |w| and clipped levels (spec §2.7); replaces ``qp``/``nonweight_qp``.
        opt_qp: NNCodec's per-tensor QP heuristic from tensor sizes and spreads (:mod:`nnc.coding.tools.optqp`).
        sparsity: unstructured sparsification before quantisation (weights below half a step are zeroed;
            a value > 0 is the overall target fraction of zeros); ``None`` = off.
        struct_sparsity: structured sparsification gain (zero output channels whose mean |w| is below
            ``gain`` times the mean); ``None`` = off.
        target_bits_per_param / max_rel_error: rate control instead of a fixed qp (:meth:`for_size`,
            :meth:`for_error`; :mod:`nnc.coding.tools.ratecontrol`).
        tensor_weights: per-tensor distortion weights for ``target_bits_per_param`` (task sensitivities, e.g.
            from :func:`nnc.coding.tools.ratecontrol.sensitivities`); missing names weigh 1.
    """

    qp: int = -38
    qp_density: int = 2
    nonweight_qp: int | None = -75
    qp_per_tensor: Mapping[str, int] = field(default_factory=dict)
    dq: bool = True
    row_skipping: bool = True
    param_opt: bool = True
    scan_order: int = 0
    unary_length_minus1: int = 10
    profile: int = 1
    device_id: int = 0
    signal_dtype: bool = True
    threads: int | None = None
    codebook: str = "off"
    bitdepth: int | None = None
    opt_qp: bool = False
    sparsity: float | None = None
    struct_sparsity: float | None = None
    target_bits_per_param: float | None = None
    max_rel_error: float | None = None
    tensor_weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not 0 <= self.qp_density <= 7:
            raise ConfigError(f"qp_density must be 0..7, got {self.qp_density}")
        lo, hi = _qp_range(self.qp_density)
        for what, value in [("qp", self.qp), ("nonweight_qp", self.nonweight_qp), *(
                (f"qp_per_tensor[{k!r}]", v) for k, v in self.qp_per_tensor.items())]:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{what} must be an int, got {value!r}")
            if not lo <= value <= hi:
                raise ConfigError(f"{what}={value} is outside {lo}..{hi}, the range a qp offset of "
                                  f"{6 + self.qp_density} bits can carry with qp_density={self.qp_density}")
        if self.profile not in (0, 1):
            raise ConfigError(f"profile must be 0 or 1, got {self.profile}")
        if self.row_skipping and self.profile == 0:
            raise ConfigError("row_skipping needs profile 1 (it is a 2nd-edition tool); "
                              "use row_skipping=False with profile=0")
        if not 0 <= self.scan_order <= 4:
            raise ConfigError(f"scan_order must be 0..4, got {self.scan_order}")
        if self.scan_order > 0 and self.dq and self.row_skipping:
            # NNCodec's trellis does not model the DQ state jumps that row skipping causes in block scans
            # (spec §6 item 25); nnc refuses the combination instead of writing streams that decode wrongly.
            raise ConfigError("scan_order > 0 cannot be combined with dq=True and row_skipping=True; "
                              "disable one of them")
        if not 0 <= self.unary_length_minus1 <= 254:
            raise ConfigError(f"unary_length_minus1 must be 0..254, got {self.unary_length_minus1}")
        if self.device_id < 0:
            raise ConfigError("device_id must be >= 0")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"threads must be None (every CPU) or an int >= 1, got {self.threads!r}")
        if self.codebook not in ("off", "auto", "force"):
            raise ConfigError(f"codebook must be 'off', 'auto' or 'force', got {self.codebook!r}")
        if self.bitdepth is not None:
            if isinstance(self.bitdepth, bool) or not isinstance(self.bitdepth, int) or not 1 <= self.bitdepth <= 31:
                raise ConfigError(f"bitdepth must be an int in 1..31 or None, got {self.bitdepth!r}")
            if self.qp_per_tensor or self.opt_qp:
                raise ConfigError("bitdepth derives every tensor's qp; it cannot be combined with qp_per_tensor "
                                  "or opt_qp")
        for what in ("sparsity", "struct_sparsity"):
            v = getattr(self, what)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0):
                raise ConfigError(f"{what} must be None or a number in 0..1, got {v!r}")
        targets = [t for t in ("target_bits_per_param", "max_rel_error") if getattr(self, t) is not None]
        if len(targets) > 1:
            raise ConfigError("give either target_bits_per_param or max_rel_error, not both")
        for t in targets:
            v = getattr(self, t)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"{t} must be a positive number, got {v!r}")
            if self.bitdepth is not None or self.opt_qp:
                raise ConfigError(f"{t} chooses the qps itself; it cannot be combined with bitdepth or opt_qp")
        for k, v in dict(self.tensor_weights).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f"tensor_weights[{k!r}] must be a number >= 0, got {v!r}")
        object.__setattr__(self, "tensor_weights", MappingProxyType(dict(self.tensor_weights)))
        object.__setattr__(self, "qp_per_tensor", MappingProxyType(dict(self.qp_per_tensor)))

    # --- named constructors -------------------------------------------------------------------------
    @classmethod
    def from_qp(cls, qp: int, qp_density: int = 2, **kw) -> "EncoderConfig":
        """Weights at ``qp``, non-weights at NNCodec's default -75 (or ``nonweight_qp=`` in ``kw``)."""
        return cls(qp=qp, qp_density=qp_density, **kw)

    @classmethod
    def reference_defaults(cls) -> "EncoderConfig":
        """``nncodec.nn.encode`` defaults (qp -32 there, not -38)."""
        return cls(qp=-32)

    @classmethod
    def fast(cls, qp: int = -38, **kw) -> "EncoderConfig":
        """Uniform quantisation without trellis or parameter optimisation: fastest encode, larger output."""
        return cls(qp=qp, dq=False, param_opt=False, **kw)

    @classmethod
    def with_codebook(cls, qp: int = -38, mode: str = "auto", **kw) -> "EncoderConfig":
        """Codebook quantisation (``mode`` ``"auto"`` or ``"force"``) at ``qp``."""
        return cls(qp=qp, codebook=mode, **kw)

    @classmethod
    def integer_aligned(cls, bits: int, **kw) -> "EncoderConfig":
        """Integer-aligned bit-depth mode: every tensor's levels fit ``bits``-bit integers."""
        return cls(bitdepth=bits, **kw)

    @classmethod
    def for_size(cls, bits_per_param: float, **kw) -> "EncoderConfig":
        """Choose per-tensor qps so that the payload is about ``bits_per_param`` bits per float parameter,
        spending bits where they reduce the squared error most (equal-slope allocation)."""
        return cls(target_bits_per_param=float(bits_per_param), **kw)

    @classmethod
    def for_error(cls, max_rel_error: float, **kw) -> "EncoderConfig":
        """Choose for every float tensor the coarsest qp whose relative RMS error
        ``||w - w_hat|| / ||w||`` stays at or below ``max_rel_error``."""
        return cls(max_rel_error=float(max_rel_error), **kw)

    def replace(self, **changes) -> "EncoderConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # --- derived values ---------------------------------------------------------------------------
    @property
    def effective_nonweight_qp(self) -> int:
        if self.nonweight_qp is None:
            return self.qp - (2 << self.qp_density)
        return self.nonweight_qp

    def qp_for(self, name: str, ndim: int) -> int:
        """The QP a float tensor called ``name`` of rank ``ndim`` gets."""
        per = self.qp_per_tensor
        if name in per:
            return per[name]
        for pattern, value in per.items():
            if fnmatch.fnmatchcase(name, pattern):
                return value
        return self.qp if ndim > 1 else self.effective_nonweight_qp


@dataclass(frozen=True)
class DecoderConfig:
    """Resource limits checked against the headers *before* anything is allocated, and decode threads.

    Attributes:
        max_tensor_elements: largest element count of one tensor.
        max_total_bytes: largest memory decoding may hold, in bytes: the decoded arrays (in their output dtype,
            float64 for codebook tensors), the int32 levels and temporaries of the tensors being decoded (of the
            ``threads`` largest at once; levels :meth:`nnc.Decoder.decode_model` returns count for good), and the
            parsed headers beyond a 16 MiB allowance. :func:`nnc.inspect`, :func:`nnc.check` and topology
            inflation charge the same budget. Peak RSS stays within 1.25x this plus the interpreter
            (benchmarks/bench_bombs.py).
        max_units: largest number of NNR units in one bitstream.
        min_unit_bytes: units beyond the first 2048 (:data:`nnc.bitstream.UNIT_ALLOWANCE`) must bring this many
            bytes of input each: a bitstream of ``B`` bytes may hold at most ``2048 + B // min_unit_bytes``
            units. Parsing, planning and describing cost tens of microseconds per unit whatever its size, so a
            flood of minimal units (20 bytes each) is what costs the most CPU per input byte; this bounds that
            work per byte. 0 (the default): no such bound; :meth:`strict` uses 256 (real models average
            kilobytes per unit).
        max_rank: largest ``count_tensor_dimensions``.
        max_codebook_size: largest ``codebook_size``.
        threads: worker threads decoding NDUs in parallel, and the block rows of a tensor whose NDU signals
            entry points (scan_order > 0); ``None`` (default) = every CPU this process may use. The decoded
            arrays do not depend on it.
    """

    max_tensor_elements: int = (1 << 31) - 1
    max_total_bytes: int = 16 << 30
    max_units: int = 1 << 20
    min_unit_bytes: int = 0
    max_rank: int = 16
    max_codebook_size: int = 1 << 16
    threads: int | None = None

    def __post_init__(self):
        for name in ("max_tensor_elements", "max_total_bytes", "max_units", "max_rank", "max_codebook_size",
                     "threads"):
            v = getattr(self, name)
            if name == "threads" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive int, got {v!r}")
        v = self.min_unit_bytes
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"min_unit_bytes must be an int >= 0, got {v!r}")

    @classmethod
    def strict(cls, max_total_bytes: int = 1 << 30, **kw) -> "DecoderConfig":
        """Tighter limits for bitstreams from untrusted peers (e.g. FL clients): 65536 units at most, and no
        more than 2048 + one per 256 bytes of input (``min_unit_bytes``)."""
        kw.setdefault("min_unit_bytes", 256)
        return cls(max_total_bytes=max_total_bytes, max_tensor_elements=min(max_total_bytes // 4, (1 << 31) - 1),
                   max_units=1 << 16, **kw)

    def replace(self, **changes) -> "DecoderConfig":
        return replace(self, **changes)


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("nnc_decoder_config", default=None)


def active_decoder_limits() -> DecoderConfig | None:
    """The limits of the innermost :func:`decoder_limits`, or ``None`` outside one."""
    return _ACTIVE.get()


def default_decoder_config() -> DecoderConfig:
    """The limits used where none are passed: those of the innermost :func:`decoder_limits`, else
    ``DecoderConfig()``."""
    cfg = _ACTIVE.get()
    return cfg if cfg is not None else DecoderConfig()


@contextlib.contextmanager
def decoder_limits(config: DecoderConfig):
    """Make ``config`` the default limits of every decode, inspect, check and topology inflation started in
    this context (the CLI's ``--max-memory``/``--strict``)."""
    if not isinstance(config, DecoderConfig):
        raise ConfigError(f"decoder_limits needs a DecoderConfig, got {type(config).__name__}")
    token = _ACTIVE.set(config)
    try:
        yield config
    finally:
        _ACTIVE.reset(token)
