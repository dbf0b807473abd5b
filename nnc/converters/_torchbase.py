"""What the PyTorch state_dict converter (``_torch``) and the TorchScript archive reader (``_torchscript``) both
need: torch itself, imported on first use (it is an optional dependency), and numpy -> torch without copies.

Import rule of the converters (docs/architecture.md): nnc modules are imported at the top of a module; optional
third-party packages (torch, onnx, protobuf, ml_dtypes) are imported inside the function that needs them, so that
``import nnc.converters`` works without them and reading an ONNX file never loads torch."""
from __future__ import annotations

import numpy as np

from ..coding.dtypes import is_bfloat16
from ..errors import ModelFormatError


def torch_module():
    """The ``torch`` module, or :class:`ModelFormatError` saying how to install it."""
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ModelFormatError("PyTorch support needs the 'torch' package (pip install 'nnc[torch]')") from None
    return torch


def tensor_from_numpy(arr: np.ndarray):
    """torch.from_numpy that also takes ml_dtypes.bfloat16 (as a bfloat16 view of the same bits)."""
    torch = torch_module()
    if is_bfloat16(arr.dtype):
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)
