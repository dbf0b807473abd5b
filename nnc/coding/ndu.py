"""What an NNR_NDU means, declared once (spec §1.9, §1.10.2, §3.9, §6).

The syntax layer (:mod:`nnc.bitstream`) says which fields a unit has; the DeepCABAC core (:mod:`nnc.deepcabac`)
codes integer arrays. Between them this module says what an NDU *means*: which tensors it holds and in which
coding order, their shapes and kinds, the dtype decoding returns, the codebook, the scan order that is signalled
and the one the coder uses, and the checks that make a header decodable. The decoder (:mod:`nnc.codec`), the
conformance checker and the describer (:mod:`nnc.describe`) all build an :class:`NduPlan` from a parsed header;
the encoders use the same scan and block-member rules to write one.

Errors raised here carry a ``code`` (a key of :data:`nnc.conformance.checker.CODES`), so the checker classifies
them without reading message text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from .. import bitstream as bs
from .. import deepcabac
from ..deepcabac import effective_scan
from ..errors import BitstreamError, LimitExceededError, UnsupportedFeatureError
from .dtypes import dtype_for_format

__all__ = ["MAX_SCAN_ORDER", "NduParent", "NduMember", "NduPlan", "plan_ndu", "with_history", "block_members",
           "effective_scan", "signalled_scan", "layer_width"]

#: scan_order values 0..4 are defined (spec §1.9); larger ones are reserved.
MAX_SCAN_ORDER = 4

_NDU = "NNR_NDU.nnr_compressed_data_unit_header"


# ----------------------------------------------------------------------------------------------------------
# scan rules (spec §3.9, §6 item 12)
# ----------------------------------------------------------------------------------------------------------
def layer_width(shape: tuple[int, ...]) -> int:
    """W of a tensor: the product of every dimension but the first (1 for rank <= 1)."""
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def signalled_scan(shape: tuple[int, ...], scan_order: int) -> int:
    """The scan order an encoder writes: a W == 1 tensor must signal 0, since the entry-point count follows the
    header dims (spec §6 item 12); an H == 1 tensor signals the configured order (NNCodec does)."""
    return 0 if len(shape) < 2 or layer_width(shape) == 1 else scan_order


# ----------------------------------------------------------------------------------------------------------
# block members (spec §1.10.2)
# ----------------------------------------------------------------------------------------------------------
def block_members(cpt: int) -> list[tuple[str, int]]:
    """(role, index into topology_elem_id_list) of a non-DC block's tensors in coding order:
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


# ----------------------------------------------------------------------------------------------------------
# incremental coding (spec §1.9 parent node id, §3.11 TCA, §3.12 HDSP)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class NduParent:
    """The parent hook of an incremental NDU, as the encoder writes it: its depth in the update chain
    (``put_node_depth``), temporal context adaptation from the parent's levels (``tca``, ``tca_base``) and the
    history-dependent significance probability state (``hdsp``, ``hdsp_history``)."""

    put_node_depth: int
    tca: bool = False
    tca_base: np.ndarray | None = None
    hdsp_history: np.ndarray | None = None
    hdsp: bool = False


# ----------------------------------------------------------------------------------------------------------
# the plan of one NDU
# ----------------------------------------------------------------------------------------------------------
class TensorState(Protocol):
    """Incremental-decoding state (nnc.incremental.UpdateState): the TCA base and HDSP history of a tensor."""

    def inputs_for(self, name: str, header) -> tuple[np.ndarray | None, np.ndarray | None]: ...


@dataclass(frozen=True)
class NduMember:
    """One tensor of an NDU, in coding order."""

    name: str
    role: str                       # "tensor" (a single-tensor NDU), or a block role: "weight", "ls", "bias", "bn.*"
    shape: tuple[int, ...]
    kind: str                       # "int" | "uniform" | "codebook" | "raw"
    coding: deepcabac.TensorCoding | None   # None for NNR_PT_RAW_FLOAT


@dataclass(frozen=True)
class NduPlan:
    """What a parsed NDU header says is in its payload."""

    payload_type: int
    members: tuple[NduMember, ...]  # in coding order (a block's weight comes last)
    out_dtype: np.dtype | None      # signalled nnr_decompressed_data_format, None: int32/float32 by payload type
    itemsize: int                   # bytes per element of a returned array: 4, or the signalled dtype's if wider
    codebook: tuple[np.ndarray, int] | None   # (values as int64, zero offset)
    scan_order: int                 # as signalled (0 when absent)
    dq: bool
    parent_present: bool
    tca: bool

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def elements(self) -> int:
        return sum(math.prod(m.shape) for m in self.members)


def _dims(h, unit_index, max_rank: int | None) -> tuple[int, ...]:
    if h.tensor_dimensions is None:
        raise UnsupportedFeatureError(f"unit {unit_index}: tensor dimensions are not in the bitstream "
                                      "(out-of-band signalling is not supported)")
    dims = tuple(map(int, h.tensor_dimensions))
    if max_rank is not None and len(dims) > max_rank:
        raise LimitExceededError(f"rank {len(dims)} exceeds max_rank={max_rank}", unit_index=unit_index,
                                 syntax_path="NNR_NDU.count_tensor_dimensions")
    if not dims or min(dims) <= 0:
        raise BitstreamError(f"tensor dimensions {list(dims)} are impossible (rank >= 1, no zero dimension)",
                             unit_index=unit_index, syntax_path=f"{_NDU}.tensor_dimensions",
                             code="DIMENSIONS_INVALID")
    return dims


def _out_dtype(h) -> tuple[np.dtype | None, int]:
    out = None
    if getattr(h, "nnr_decompressed_data_format_present_flag", 0):
        out = dtype_for_format(h.nnr_decompressed_data_format)
    return out, max(4, np.dtype(out).itemsize if out is not None else 4)


def _scan_order(h, unit_index) -> int:
    scan = h.scan_order or 0
    if scan > MAX_SCAN_ORDER:
        raise BitstreamError(f"reserved scan_order {scan} (0..{MAX_SCAN_ORDER} defined)", unit_index=unit_index,
                             syntax_path=f"{_NDU}.scan_order", code="RESERVED_SCAN_ORDER")
    return scan


def _codebook(h, profile: int, unit_index, max_codebook_size: int | None):
    """(values and zero offset, or None; S and Z for the CABAC layer, 0 unless profile 1)."""
    if not getattr(h, "codebook_present_flag", 0):
        return None, 0, 0
    cb = h.codebook
    if max_codebook_size is not None and cb.codebook_size > max_codebook_size:
        raise LimitExceededError(f"codebook of {cb.codebook_size} entries exceeds max_codebook_size="
                                 f"{max_codebook_size}", unit_index=unit_index,
                                 syntax_path="NNR_NDU.codebook.codebook_size")
    values = cb.values_array()            # int64, by cumulative sums; None past the int32 range
    if values is None:
        vals = cb.values                   # increasing: the ends are the extremes
        raise BitstreamError(f"codebook values {vals[0]}..{vals[-1]} leave the int32 range codebook entries "
                             "have (the reference decoder stores them as int32)", unit_index=unit_index,
                             syntax_path="NNR_NDU.codebook.codebook_delta_right" if vals[-1] > 0 else
                             "NNR_NDU.codebook.codebook_delta_left", code="CODEBOOK_INVALID")
    codebook = (values, cb.zero_offset)
    if profile == 1:
        return codebook, len(values), cb.zero_offset
    return codebook, 0, 0


def plan_ndu(h, *, profile: int, qp_density: int, unit_index: int | None = None, max_rank: int | None = None,
             max_codebook_size: int | None = None) -> NduPlan:
    """The :class:`NduPlan` of a parsed NDU header ``h`` (an :class:`nnc.bitstream.NduHeader`) in a stream of
    ``profile`` and MPS ``qp_density``. Incremental NDUs get their parent's inputs from :func:`with_history`.

    Raises (each with a ``code``): :class:`UnsupportedFeatureError` for valid syntax nnc does not decode
    (out-of-band dimensions, decomposed blocks), :class:`LimitExceededError` past ``max_rank`` /
    ``max_codebook_size``, :class:`BitstreamError` for a header that cannot describe a payload.
    """
    PT = bs.PayloadType
    ptype = h.nnr_compressed_data_unit_payload_type
    key = None
    if ptype != PT.NNR_PT_BLOCK and ptype != PT.NNR_PT_RAW_FLOAT and not getattr(h, "codebook_present_flag", 0):
        dims = h.tensor_dimensions
        key = (ptype, None if dims is None else tuple(dims), getattr(h, "nnr_decompressed_data_format_present_flag", 0),
               getattr(h, "nnr_decompressed_data_format", None), h.scan_order, h.dq_flag, h.unary_length_minus1,
               getattr(h, "parent_node_id_present_flag", 0), getattr(h, "temporal_context_modeling_flag", 0),
               profile, qp_density, max_rank)
        template = _PLANS.get(key)
        if template is not None:
            return _renamed(template, h.element_names[0])
    plan = _plan_ndu(h, ptype, profile, qp_density, unit_index, max_rank, max_codebook_size)
    if key is not None:
        if len(_PLANS) >= _PLAN_CACHE_SIZE:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


#: Plans of single-tensor NDUs without a codebook by everything in the header but the tensor's name: the
#: headers of a model's small tensors repeat (biases, norms of one width), and a plan is built per NDU.
#: Bounded: cleared when full (a stream of all-different headers only rebuilds each plan, as without it).
_PLANS: dict = {}
_PLAN_CACHE_SIZE = 4096


def _renamed(plan: NduPlan, name) -> NduPlan:
    """``plan`` (one member) for the tensor ``name``: a copy of the frozen records with the name replaced,
    built without the dataclass constructors (a third of the cost of planning a tiny NDU)."""
    m = plan.members[0]
    member = object.__new__(NduMember)
    member.__dict__.update(m.__dict__)
    member.__dict__["name"] = name
    out = object.__new__(NduPlan)
    out.__dict__.update(plan.__dict__)
    out.__dict__["members"] = (member,)
    return out


def _plan_ndu(h, ptype, profile, qp_density, unit_index, max_rank, max_codebook_size) -> NduPlan:
    PT = bs.PayloadType
    dims = _dims(h, unit_index, max_rank)
    out_dtype, itemsize = _out_dtype(h)
    scan = _scan_order(h, unit_index)
    codebook, cb_size, cb_zero = _codebook(h, profile, unit_index, max_codebook_size)
    parent = bool(getattr(h, "parent_node_id_present_flag", 0))
    tca = bool(getattr(h, "temporal_context_modeling_flag", 0))
    dq = bool(h.dq_flag)
    unary = h.unary_length_minus1 + 1
    common = dict(payload_type=ptype, out_dtype=out_dtype, itemsize=itemsize, codebook=codebook, scan_order=scan,
                  dq=dq, parent_present=parent, tca=tca)
    if ptype == PT.NNR_PT_RAW_FLOAT:
        name = str(h.element_names[0])
        return NduPlan(members=(NduMember(name, "tensor", dims, "raw", None),), **common)
    if ptype != PT.NNR_PT_BLOCK:
        name = h.element_names[0]
        is_int = ptype == PT.NNR_PT_INT
        coding = deepcabac.TensorCoding(
            shape=dims, profile=profile, unary_length=unary, qp_bits=None if is_int else 6 + qp_density,
            scan_order=scan, dq=dq and not is_int, parent_present=parent, codebook_size=cb_size,
            codebook_zero=cb_zero)
        kind = "int" if is_int else ("codebook" if codebook is not None else "uniform")
        return NduPlan(members=(NduMember(name, "tensor", dims, kind, coding),), **common)
    # NNR_PT_BLOCK: a weight with its LS / bias / BN vectors in one CABAC stream; all share dq_flag and
    # scan_order (the vectors use scan 0), each has its own qp offset; only the weight may use the codebook
    cpt = int(h.compressed_parameter_types or 0)
    if cpt & bs.CompressedParameterTypes.NNR_CPT_DC:
        raise UnsupportedFeatureError("NNR_PT_BLOCK NDUs with decomposed tensors (NNR_CPT_DC) are not supported")
    names = [str(n) for n in h.element_names]
    roles = block_members(cpt)
    if len(names) != len(roles):
        raise BitstreamError(f"compressed_parameter_types {cpt:#x} implies {len(roles)} tensors, the NDU lists "
                             f"{len(names)}", unit_index=unit_index, syntax_path=f"{_NDU}.topology_elem_id_list",
                             code="SYNTAX_ERROR")
    members = []
    for role, pos in roles:
        is_w = role == "weight"
        shape = dims if is_w else (dims[0],)
        coding = deepcabac.TensorCoding(
            shape=shape, profile=profile, unary_length=unary, qp_bits=6 + qp_density,
            scan_order=scan if is_w else 0, dq=dq, parent_present=parent, codebook_size=cb_size if is_w else 0,
            codebook_zero=cb_zero if is_w else 0)
        members.append(NduMember(names[pos], role, shape, "codebook" if is_w and codebook is not None else "uniform",
                                 coding))
    return NduPlan(members=tuple(members), **common)


def with_history(plan: NduPlan, h, state: TensorState) -> NduPlan:
    """``plan`` with the TCA base and HDSP history ``state`` holds for its tensor (incremental decoding).
    Blocks carry no parent inputs (nnc does not decode incremental blocks)."""
    if len(plan.members) != 1 or plan.members[0].coding is None:
        return plan
    m = plan.members[0]
    tca_base, hdsp_hist = state.inputs_for(m.name, h)
    coding = replace(m.coding, tca_base=tca_base, hdsp_history=hdsp_hist)
    return replace(plan, members=(replace(m, coding=coding),))
