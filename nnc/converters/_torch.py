"""PyTorch: nn.Module / state_dict / .pt files (loaded only with ``weights_only=True``; TorchScript archives
through the restricted reader in ``_torchscript``)."""
from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from ..coding.dtypes import is_bfloat16
from ..errors import ModelFormatError
from . import _torchscript
from ._common import PlannedTensor, TensorRecord, atomic_path, bf16_from_bits, plan_restore
from ._torchbase import tensor_from_numpy
from ._torchbase import torch_module as _torch
from ._zipscreen import screen_zip

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


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


def load_torch_file(path: str, *, model_state_only: bool = False, notes: list | None = None):
    """(tensors, record) of a PyTorch file. A checkpoint (a dict holding more than tensors) is kept whole
    (:func:`checkpoint_to_tensors`) unless ``model_state_only``: then only its model state_dict is read and
    ``notes`` gets a line naming what was left out."""
    torch = _torch()
    if not os.path.isfile(path):
        raise ModelFormatError(f"cannot read {path!r}: no such file")
    if _torchscript.is_torchscript_archive(path):  # torch.jit.save output: read its state_dict, run nothing
        return state_dict_to_tensors(_torchscript.read_state_dict(path))
    if zipfile.is_zipfile(path):   # torch's zip format: sizes checked before torch inflates anything
        screen_zip(path, what="PyTorch file")
    obj = None
    errors = []
    for mmap in (True, False):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except pickle.UnpicklingError:
            raise ModelFormatError(
                f"{path!r} holds objects other than tensors and plain containers; nnc loads PyTorch files only "
                f"with torch.load(weights_only=True) and refuses arbitrary pickles. Save model.state_dict() "
                f"instead.") from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
            errors.append(e)
            continue
    if obj is None:
        raise ModelFormatError(f"{path!r} is not a readable PyTorch file: it is truncated, corrupt or another "
                               "format; check the file, or pass --format if it is another model format")
    if isinstance(obj, torch.nn.Module):  # cannot happen with weights_only, but be explicit
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and not model_state_only and not all(isinstance(v, torch.Tensor)
                                                                     for v in obj.values()):
        return checkpoint_to_tensors(obj, where=repr(path))
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        # a checkpoint: the state_dict under a usual key, else the only entry that is a mapping of tensors
        def tensor_map(v):
            return isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values())
        others = [k for k, v in obj.items() if tensor_map(v)]
        chosen = primary_state_key(obj)
        if chosen is not None and notes is not None:
            left = [k for k in obj if k != chosen]
            notes.append(f"model state only: coded {chosen!r} ({len(obj[chosen])} tensors); left out "
                         f"{', '.join(map(repr, left)) or 'nothing'}")
        if chosen is not None:
            obj = obj[chosen]
        elif others:
            raise ModelFormatError(f"{path!r} is a checkpoint with several state_dicts "
                                   f"({', '.join(map(repr, others))}); save the one to code on its own")
    if not isinstance(obj, Mapping):
        raise ModelFormatError(f"{path!r} holds a {type(obj).__name__}, not a state_dict (mapping of names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFormatError(f"{path!r} is not a plain state_dict: entries {bad[:5]} are not tensors")
    return state_dict_to_tensors(obj)


def _to_torch(p: PlannedTensor):
    torch = _torch()
    arr = p.array
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, order="C", copy=True)
    t = tensor_from_numpy(arr)
    if is_bfloat16(arr.dtype):
        return t
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
    sd = to_checkpoint(tensors, record)
    with atomic_path(dest) as tmp:
        torch.save(sd, tmp)


# --------------------------------------------------------------------------------------------------
# whole checkpoints: nested containers, optimizer state, scalars

#: JSON tags of the checkpoint structure record (every JSON object in the tree is one tagged node)
_TAGS = {dict: "$d", list: "$l", tuple: "$u"}
#: optimizer state tensors (moments, steps) are carried exactly: their bits are coded as NNC integers
EXACT_DTYPE_VIEW = "int16"


def _is_optimizer_state(obj) -> bool:
    return isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj


def primary_state_key(obj: Mapping) -> Any:
    """The key of a checkpoint's model state_dict: a usual key (``state_dict``, ``model_state_dict``, ``model``)
    holding a mapping of tensors, else the only such entry; None if there is none."""
    torch = _torch()

    def tensor_map(v):
        return isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values()) and \
            not _is_optimizer_state(v)
    usual = [k for k in _WRAPPER_KEYS if tensor_map(obj.get(k))]
    others = [k for k, v in obj.items() if tensor_map(v)]
    if usual:
        return usual[0]
    if len(others) == 1:
        return others[0]
    named = [k for k in others if isinstance(k, str) and "model" in k.lower() and "ema" not in k.lower()]
    return named[0] if len(named) == 1 else None


def checkpoint_to_tensors(obj: Mapping, where: str = "checkpoint"):
    """(ordered numpy tensors, TensorRecord) for a nested checkpoint. The model state's tensors keep their
    state_dict names; every other tensor is named by its path (``optimizer_state/state/0/exp_avg``,
    ``ema/conv.weight``). Tensors inside an optimizer state (a mapping with ``state`` and ``param_groups``) are
    carried exactly (their bytes viewed as int16, coded losslessly); all others are coded like weights.
    Non-tensor leaves (ints, floats, strings, None, lists, tuples, dicts with any plain keys) go into the
    record's ``checkpoint`` structure."""
    torch = _torch()
    primary = primary_state_key(obj)
    flat: dict[str, Any] = {}
    exact: set[str] = set()

    def name_for(path: list) -> str:
        if primary is not None and len(path) == 2 and path[0] == primary and isinstance(path[1], str):
            base = path[1]
        else:
            base = "/".join(str(p) for p in path)
        name, k = base or "tensor", 1
        while name in flat:
            name, k = f"{base}#{k}", k + 1
        return name

    def enc(v, path: list, in_optimizer: bool):
        if isinstance(v, torch.Tensor):
            name = name_for(path)
            flat[name] = v
            if in_optimizer and v.is_floating_point():
                exact.add(name)
            return {"$t": name}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, torch.Size):
            return {"$S": [int(d) for d in v]}
        if isinstance(v, torch.dtype):
            return {"$D": str(v).replace("torch.", "")}
        if isinstance(v, Mapping):
            opt = in_optimizer or _is_optimizer_state(v)
            items = [[enc(k, path + ["<key>"], False), enc(x, path + [k], opt)] for k, x in v.items()]
            tag = "$o" if type(v).__name__ == "OrderedDict" else "$d"
            return {tag: items}
        if isinstance(v, (list, tuple)):
            return {"$l" if isinstance(v, list) else "$u": [enc(x, path + [i], in_optimizer) for i, x in enumerate(v)]}
        raise ModelFormatError(f"{where}: entry {'/'.join(map(str, path)) or '(root)'} is a {type(v).__name__}, "
                               "which nnc cannot carry (tensors, numbers, strings, None, lists, tuples and dicts)")

    tree = enc(obj, [], False)
    tensors, record = state_dict_to_tensors(flat)
    views = {}
    for name in exact:
        if name in tensors:
            arr = np.ascontiguousarray(tensors[name])
            if arr.dtype.kind == "f" and arr.dtype.itemsize in (2, 4, 8):
                views[name] = [str(arr.dtype), list(arr.shape)]
                tensors[name] = arr.reshape(-1).view(np.int16)
    record.extra["checkpoint"] = tree
    if views:
        record.extra["exact_views"] = views
    return tensors, record


def _decode_tree(node, tensors: Mapping[str, Any]):
    torch = _torch()
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, dict) and len(node) == 1:
        (tag, v), = node.items()
        if tag == "$t":
            if v not in tensors:
                raise ModelFormatError(f"checkpoint record names tensor {v!r}, which is not in the bitstream")
            return tensors[v]
        if tag == "$S":
            return torch.Size(v)
        if tag == "$D":
            dt = getattr(torch, str(v), None)
            if not isinstance(dt, torch.dtype):
                raise ModelFormatError(f"checkpoint record: unknown torch dtype {v!r}")
            return dt
        if tag in ("$d", "$o"):
            out = OrderedDict() if tag == "$o" else {}
            for kv in v:
                out[_decode_tree(kv[0], tensors)] = _decode_tree(kv[1], tensors)
            return out
        if tag == "$l":
            return [_decode_tree(x, tensors) for x in v]
        if tag == "$u":
            return tuple(_decode_tree(x, tensors) for x in v)
    raise ModelFormatError(f"corrupt checkpoint record node {str(node)[:80]!r}")


def to_checkpoint(tensors: Mapping[str, np.ndarray], record) -> Any:
    """The checkpoint object (nested containers as saved) with decoded tensors, or the flat state_dict when the
    record holds no checkpoint structure."""
    sd = to_state_dict(tensors, record)
    tree = (record.extra or {}).get("checkpoint") if record is not None else None
    if tree is None:
        return sd
    try:
        return _decode_tree(tree, sd)
    except (TypeError, ValueError, IndexError, RecursionError) as e:
        raise ModelFormatError(f"corrupt checkpoint record: {e}") from None
