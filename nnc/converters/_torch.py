"""PyTorch: nn.Module / state_dict / .pt files (loaded only with ``weights_only=True``; TorchScript archives
through the restricted reader in ``_torchscript``)."""
from __future__ import annotations

import os
import pickle
from typing import Any, Mapping

import numpy as np

from ..errors import ModelFormatError
from ._common import PlannedTensor, TensorRecord, atomic_path, plan_restore

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ModelFormatError("PyTorch support needs the 'torch' package (pip install 'nnc[torch]')") from None
    return torch


def _dtype_name(t) -> str:
    torch = _torch()
    names = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64",
             torch.bfloat16: "bfloat16", torch.int8: "int8", torch.int16: "int16", torch.int32: "int32",
             torch.int64: "int64", torch.uint8: "uint8", torch.bool: "bool"}
    for extra in ("uint16", "uint32", "uint64"):
        dt = getattr(torch, extra, None)
        if dt is not None:
            names[dt] = extra
    try:
        return names[t.dtype]
    except KeyError:
        raise ModelFormatError(f"tensor dtype {t.dtype} is not supported by nnc.converters") from None


def _to_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach()
    if t.layout != torch.strided:
        raise ModelFormatError(f"sparse/quantized tensor layout {t.layout} is not supported")
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:   # bit patterns viewed as ml_dtypes.bfloat16: not widened
        from ._common import bf16_from_bits
        return bf16_from_bits(t.contiguous().view(torch.int16).numpy())
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    return t.contiguous().numpy()


def _tie_key(t):
    if t.numel() == 0:
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except Exception:  # pragma: no cover - exotic tensor subclasses
        return None
    return (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def state_dict_to_tensors(state_dict: Mapping[str, Any], source_format: str = "pytorch"):
    """(ordered numpy tensors, TensorRecord) for a state_dict; tied tensors are kept once."""
    torch = _torch()
    tensors: dict[str, np.ndarray] = {}
    record = TensorRecord(source_format=source_format)
    seen: dict[Any, str] = {}
    order: list[str] = []
    for name, t in state_dict.items():
        if not isinstance(name, str):
            raise ModelFormatError(f"state_dict key {name!r} is not a string")
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(np.asarray(t, order="C")) if t.dtype.kind in "fiub" else t  # keeps 0-d
        if not isinstance(t, torch.Tensor):
            raise ModelFormatError(f"state_dict entry {name!r} is a {type(t).__name__}, not a tensor")
        order.append(name)
        key = _tie_key(t)
        if key is not None and key in seen:
            record.tied[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        dname = _dtype_name(t)
        arr = _to_numpy(t)
        if dname == "bool":
            arr = arr.view(np.uint8)
        if dname != "float32":
            record.dtypes[name] = dname
        if t.dim() == 0:
            record.shapes[name] = []
        tensors[name] = arr
    if record.tied:
        record.order = order
    return tensors, record


def from_module(module) -> tuple[dict[str, np.ndarray], TensorRecord]:
    return state_dict_to_tensors(module.state_dict(keep_vars=False))


def load_torch_file(path: str):
    torch = _torch()
    if not os.path.isfile(path):
        raise ModelFormatError(f"cannot read {path!r}: no such file")
    from . import _torchscript
    if _torchscript.is_torchscript_archive(path):  # torch.jit.save output: read its state_dict, run nothing
        return state_dict_to_tensors(_torchscript.read_state_dict(path))
    obj = None
    errors = []
    for mmap in (True, False):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except pickle.UnpicklingError as e:
            raise ModelFormatError(
                f"{path!r} holds objects other than tensors and plain containers; nnc loads PyTorch files only "
                f"with torch.load(weights_only=True) and refuses arbitrary pickles. Save model.state_dict() "
                f"instead. (torch: {str(e).splitlines()[0]})") from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
            errors.append(e)
            continue
    if obj is None:
        raise ModelFormatError(f"{path!r} is not a readable PyTorch file (truncated or corrupt?): {errors[-1]}")
    if isinstance(obj, torch.nn.Module):  # cannot happen with weights_only, but be explicit
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        # a checkpoint: the state_dict under a usual key, else the only entry that is a mapping of tensors
        def tensor_map(v):
            return isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values())
        usual = [k for k in _WRAPPER_KEYS if tensor_map(obj.get(k))]
        others = [k for k, v in obj.items() if tensor_map(v)]
        if usual:
            obj = obj[usual[0]]
        elif len(others) == 1:
            obj = obj[others[0]]
        elif others:
            raise ModelFormatError(f"{path!r} is a checkpoint with several state_dicts ({', '.join(map(repr, others))}); "
                                   f"save the one to code on its own")
    if not isinstance(obj, Mapping):
        raise ModelFormatError(f"{path!r} holds a {type(obj).__name__}, not a state_dict (mapping of names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFormatError(f"{path!r} is not a plain state_dict: entries {bad[:5]} are not tensors")
    return state_dict_to_tensors(obj)


def tensor_from_numpy(arr: np.ndarray):
    """torch.from_numpy that also takes ml_dtypes.bfloat16 (as a bfloat16 view of the same bits)."""
    torch = _torch()
    from ..dtypes import is_bfloat16
    if is_bfloat16(arr.dtype):
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def _to_torch(p: PlannedTensor):
    torch = _torch()
    arr = p.array
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, order="C", copy=True)
    from ..dtypes import is_bfloat16
    if is_bfloat16(arr.dtype):
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    t = torch.from_numpy(arr)
    if p.dtype_name == "bfloat16":
        t = t.to(torch.bfloat16)
    elif p.dtype_name == "bool" and t.dtype != torch.bool:
        t = t != 0
    return t


def to_state_dict(tensors: Mapping[str, np.ndarray], record: TensorRecord | None) -> dict:
    out: dict = {}
    for p in plan_restore(tensors, record):
        out[p.name] = out[p.alias_of] if p.alias_of is not None else _to_torch(p)
    return out


def write_torch_file(dest: str, tensors: Mapping[str, np.ndarray], record: TensorRecord | None) -> None:
    torch = _torch()
    sd = to_state_dict(tensors, record)
    with atomic_path(dest) as tmp:
        torch.save(sd, tmp)
