"""Codebook quantisation (spec §1.9.3, §2.5), reproducing NNCodec 2.1.3's encoder choices byte for byte.

Procedure (the reference's, described in the spec): quantise with URQ (no DQ; when DQ was requested the qp is
lowered by 2**qp_density, i.e. the step is halved), take the sorted distinct levels as the codebook and the
indices into it as coded values. The zero offset Z is the one giving the smallest CABAC payload in a profile-0
trial encode with parameter optimisation on; the Exp-Golomb order of the codebook deltas is the one giving the
fewest header bits. In ``"auto"`` mode the codebook is kept only if (CABAC bytes + codebook header *bits*,
the reference's own yardstick) is smaller than the payload of plain uniform/DQ coding; otherwise the tensor is
coded uniformly (with DQ if requested).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import deepcabac
from ...bitstream.bits import BitWriter, ie_to_ue
from ..quant import quantize_tensor
from .bitdepth import clip_levels

__all__ = ["CodebookChoice", "codebook_quantize", "codebook_header_bits", "best_egk", "best_zero_offset"]


@dataclass
class CodebookChoice:
    """Outcome for one tensor: either a codebook (``values`` not None) or uniform levels."""

    q: np.ndarray                        # codebook index offsets (c = index - Z), or uniform/DQ levels
    qp: int
    dq: bool
    values: np.ndarray | None = None     # strictly increasing integer levels
    zero_offset: int = 0
    egk: int = 0
    bytes_uniform: int | None = None     # the trial sizes the decision was based on (auto mode)
    cost_codebook: int | None = None


def codebook_header_bits(values, zero_offset: int, egk: int) -> int:
    """Bits of the ``codebook()`` syntax structure (§1.9.3) for these values."""
    w = BitWriter()
    size = len(values)
    w.u(4, egk)
    w.ue(2, size)
    w.ue(2, ie_to_ue(zero_offset - (size >> 1)))
    w.ue(7, ie_to_ue(int(values[zero_offset])))
    for j in range(zero_offset - 1, -1, -1):
        w.ue(egk, int(values[j + 1]) - int(values[j]) - 1)
    for j in range(zero_offset + 1, size):
        w.ue(egk, int(values[j]) - int(values[j - 1]) - 1)
    return w.nbits


def best_egk(values, zero_offset: int) -> tuple[int, int]:
    """(egk, bits) with the fewest header bits; the smallest egk wins ties."""
    best = None
    for k in range(16):
        b = codebook_header_bits(values, zero_offset, k)
        if best is None or b < best[1]:
            best = (k, b)
    return best


def _trial_bytes(q: np.ndarray, *, dq: bool, profile: int, param_opt: bool, unary_length: int,
                 scan_order: int) -> int:
    coding = deepcabac.TensorCoding(shape=tuple(q.shape) if q.ndim else (1,), profile=profile,
                                    unary_length=unary_length, qp_bits=None, scan_order=scan_order, dq=dq)
    payload, _ = deepcabac.encode_payload(
        [(q, coding, 0, deepcabac.EncodeOptions(param_opt=param_opt, row_skipping=False,
                                                allow_dq_mismatch=True))])
    return len(payload)


def best_zero_offset(indices: np.ndarray, size: int, unary_length: int) -> int:
    """Z minimising the CABAC size of ``indices - Z`` (profile 0, parameter optimisation on, row-major scan);
    the smallest Z wins ties."""
    best_z, best_n = 0, None
    for z in range(size):
        n = _trial_bytes(indices - np.int32(z), dq=False, profile=0, param_opt=True, unary_length=unary_length,
                         scan_order=0)
        if best_n is None or n < best_n:
            best_z, best_n = z, n
    return best_z


def codebook_quantize(x: np.ndarray, qp: int, qp_density: int, *, mode: str, dq: bool, scan_order: int = 0,
                      profile: int = 1, param_opt: bool = True, unary_length_minus1: int = 10,
                      bitdepth: int | None = None) -> CodebookChoice:
    """Codebook-quantise float32 ``x`` requested at ``qp`` (``dq`` = DQ requested).

    ``mode``: ``"force"`` (NNCodec codebook_mode 1) or ``"auto"`` (codebook_mode 2). ``scan_order`` is the
    effective scan of the tensor. ``bitdepth`` (already the tensor's effective bits) clips levels as the
    integer-aligned mode does. The trial encodes use ``cabac_unary_length_minus1`` greater-than flags, as
    NNCodec's do.
    """
    if mode not in ("force", "auto"):
        raise ValueError(f"mode must be 'force' or 'auto', got {mode!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    enc_qp = qp - ((1 << qp_density) if dq else 0)
    q, qp_used = quantize_tensor(x, enc_qp, qp_density, dq=False, scan_order=scan_order)
    if bitdepth is not None and x.any():
        q = clip_levels(q, x, bitdepth)
    values, inverse = np.unique(q, return_inverse=True)
    indices = inverse.reshape(q.shape).astype(np.int32)
    ul = unary_length_minus1   # NNCodec's trial encoders are built with one greater-than flag fewer
    z = best_zero_offset(indices, len(values), ul)
    egk, hdr_bits = best_egk(values, z)
    coded = (indices - np.int32(z)).astype(np.int32)
    cb = CodebookChoice(q=coded, qp=qp_used, dq=False, values=values.astype(np.int64), zero_offset=z, egk=egk)
    if mode == "force":
        return cb
    if dq:
        uq, uqp = quantize_tensor(x, qp, qp_density, dq=True, scan_order=scan_order)
    else:
        uq, uqp = q, qp_used
    if bitdepth is not None and x.any():
        uq = clip_levels(uq, x, bitdepth)
    n_uni = _trial_bytes(uq, dq=dq, profile=profile, param_opt=param_opt, unary_length=ul, scan_order=scan_order)
    n_cb = _trial_bytes(coded, dq=False, profile=profile, param_opt=param_opt, unary_length=ul,
                        scan_order=scan_order) + hdr_bits
    cb.bytes_uniform, cb.cost_codebook = n_uni, n_cb
    if n_cb < n_uni:
        return cb
    return CodebookChoice(q=uq, qp=uqp, dq=dq, bytes_uniform=n_uni, cost_codebook=n_cb)
