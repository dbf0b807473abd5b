"""NNR_PT_BLOCK NDUs: a layer's weight with its local-scaling (LS), bias and batch-norm vectors in one NDU
(spec §1.10.2), and batch-norm folding (spec §5.4).

:func:`fold_bn` turns ``(weight, bias, gamma, beta, mean, var)`` into ``(weight, ls, bias)`` with
``g = gamma / sqrt(var + eps)``, ``ls = g`` and ``bias = (bias - mean) * g + beta``: the layer then computes
``ls * (weight @ x) + bias`` (a decoder that wants plain weights multiplies each output channel of the weight
by ``ls``). :func:`block_ndu` codes such a group as one BLOCK NDU that :func:`nnc.decode` (and NNCodec) read.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from . import bitstream as bs
from . import deepcabac
from .codec import Encoder
from .coding.ndu import block_members, effective_scan
from .coding.quant import quantize_tensor
from .topology import Topology

__all__ = ["fold_bn", "block_ndu", "encode_blocks"]

_CPT = {"ls": bs.CompressedParameterTypes.NNR_CPT_LS, "bias": bs.CompressedParameterTypes.NNR_CPT_BI,
        "bn.beta": bs.CompressedParameterTypes.NNR_CPT_BN}
_BN = ("bn.beta", "bn.gamma", "bn.mean", "bn.var")


def fold_bn(weight, bias, gamma, beta, mean, var, eps: float = 1e-5):
    """(weight, ls, bias) of a layer followed by batch norm (float32)."""
    g = (np.asarray(gamma, np.float32) / np.sqrt(np.asarray(var, np.float32) + np.float32(eps))).astype(np.float32)
    b = np.zeros_like(g) if bias is None else np.asarray(bias, np.float32)
    new_bias = ((b - np.asarray(mean, np.float32)) * g + np.asarray(beta, np.float32)).astype(np.float32)
    return np.asarray(weight, np.float32), g, new_bias


def block_ndu(members: Mapping[str, tuple[str, np.ndarray]], cfg, *, parameter_id: int = 0) -> bytes:
    """One BLOCK NDU. ``members`` maps a role (``"weight"`` required; ``"ls"``, ``"bias"``, and either all or
    none of ``"bn.beta"``, ``"bn.gamma"``, ``"bn.mean"``, ``"bn.var"``) to ``(name, float array)``; vectors
    have ``weight.shape[0]`` elements. Weight at ``cfg.qp_for``, vectors at the non-weight qp, all with
    ``cfg.dq``; no codebook."""
    if "weight" not in members:
        raise ValueError("a block needs a weight")
    bn = [r for r in _BN if r in members]
    if bn and len(bn) != 4:
        raise ValueError("batch-norm members come as all four of bn.beta/gamma/mean/var")
    unknown = set(members) - {"weight", "ls", "bias", *_BN}
    if unknown:
        raise ValueError(f"unknown block roles {sorted(unknown)}")
    cpt = sum(int(v) for r, v in _CPT.items() if r in members)
    w_name, w = members["weight"]
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim < 2:
        raise ValueError("the block weight must have rank >= 2")
    order = block_members(cpt)
    names = [""] * len(order)
    items = []
    scan = effective_scan(w.shape, cfg.scan_order)
    for role, pos in order:
        name, arr = members[role]
        x = np.ascontiguousarray(arr, dtype=np.float32)
        if role != "weight" and x.shape != (w.shape[0],):
            raise ValueError(f"{role} {name!r} must have shape ({w.shape[0]},), got {x.shape}")
        names[pos] = name
        is_w = role == "weight"
        qp = cfg.qp_for(name, x.ndim)
        q, qp_used = quantize_tensor(x, qp, cfg.qp_density, dq=cfg.dq, scan_order=scan if is_w else 0)
        coding = deepcabac.TensorCoding(shape=tuple(x.shape), profile=cfg.profile,
                                        unary_length=cfg.unary_length_minus1 + 1, qp_bits=6 + cfg.qp_density,
                                        scan_order=scan if is_w else 0, dq=cfg.dq)
        items.append((q, coding, qp_used, deepcabac.EncodeOptions(
            param_opt=cfg.param_opt, row_skipping=cfg.row_skipping and cfg.profile == 1)))
    payload, eps = deepcabac.encode_payload(items)
    ctx = bs.Context(general_profile_idc=cfg.profile)
    header = bs.ndu_header(
        ctx, payload_type=bs.PayloadType.NNR_PT_BLOCK, topology_elem_id_list=names,
        compressed_parameter_types=cpt, tensor_dimensions=list(w.shape), dq_flag=int(cfg.dq),
        cabac_unary_length_minus1=cfg.unary_length_minus1, scan_order=scan,
        entry_points=[(e.value, e.dq_state, e.bit_offset) for e in eps[-1]],
        device_id=cfg.device_id, parameter_id=parameter_id)
    return bs.ndu_unit(header, payload, context=ctx)


def encode_blocks(blocks, tensors: Mapping[str, np.ndarray], cfg) -> bytes:
    """A whole bitstream: one BLOCK NDU per entry of ``blocks`` (role -> tensor name mappings), then one NDU
    per remaining tensor of ``tensors``."""
    rest = dict(tensors)
    units = []
    for i, blk in enumerate(blocks):
        members = {role: (name, rest.pop(name)) for role, name in blk.items()}
        units.append(block_ndu(members, cfg, parameter_id=i))
    head = Encoder(cfg).encode(rest) if rest else None
    if head is None:
        head = b"".join([bs.start_unit(cfg.profile), bs.mps_unit(profile=cfg.profile, qp_density=cfg.qp_density,
                                                                   parent_signalling=False), bs.tpl_unit(Topology())])
    return head + b"".join(units)
