"""Encoder coding tools of MPEG NNC beyond plain uniform/DQ quantisation (issue 6).

* :mod:`nnc.coding.tools.codebook` — codebook quantisation (NNCodec's ``codebook_mode`` 1 and 2, byte-exact).
* :mod:`nnc.coding.tools.bitdepth` — integer-aligned bit-depth mode (per-tensor qp from the 99.95th percentile).
* :mod:`nnc.coding.tools.optqp` — NNCodec's size/spread-based per-tensor QP modification (``opt_qp``).
* :mod:`nnc.coding.tools.sparsify` — unstructured and structured sparsification before quantisation.
* :mod:`nnc.coding.tools.ratecontrol` — targets instead of QPs: bits per parameter, maximum relative error.
* :mod:`nnc.coding.tools.compensate` — task-aware rounding: levels chosen column by column with the rounding error
  compensated from calibration inputs' second moments (URQ levels on the tensor's qp grid).

All of them only choose levels, QPs and codebooks; the bitstream syntax is the standard's.
"""
from .bitdepth import intaligned_qp, clip_levels
from .codebook import CodebookChoice, codebook_quantize, codebook_header_bits
from .optqp import modify_qps
from .sparsify import sparsify_unstructured, sparsify_structured
from .planning import prepare
from . import bitdepth, codebook  # noqa: F401 - submodules used by nnc.codec

__all__ = ["intaligned_qp", "clip_levels", "CodebookChoice", "codebook_quantize", "codebook_header_bits",
           "modify_qps", "sparsify_unstructured", "sparsify_structured", "prepare"]
