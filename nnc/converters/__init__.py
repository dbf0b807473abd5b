"""Model files <-> tensors + topology for NNC bitstreams.

``load_model`` turns a model (file path or in-memory object) into ordered numpy tensors plus a
:class:`~nnc.topology.Topology` for the NNR_TPL unit; ``save_model`` writes decoded tensors back as a model
file. See ``docs/converters.md`` for the topology carried per format and how the reference decoder treats it.

===========  ============================================  =======================================================
format       read                                          topology written
===========  ============================================  =======================================================
onnx         ``.onnx`` / ``onnx.ModelProto``               storage format 2 (NNR_TPL_ONNX), deflate: the graph
pytorch      ``.pt .pth .jit .bin .ckpt`` / Module / dict  storage format 3 (NNR_TPL_PYT): empty, or a JSON record
safetensors  ``.safetensors``                              storage format 0 (NNR_TPL_UNREC): empty, or a record
npz          ``.npz``                                      storage format 0: empty, or a JSON record
===========  ============================================  =======================================================

TorchScript archives (``torch.jit.save``, any of the PyTorch extensions) are read as their state_dict without
running them; ``save_model(..., template=original)`` writes the original program with the decoded weights.

The JSON record (UTF-8, no NUL byte, uncompressed, so NNCodec 2.1.3 reads and ignores it) holds what NNC itself
does not carry: original dtypes other than float32 (bfloat16, float16, int64, bool...), the shape of 0-d tensors,
and tied (shared) tensors, which are coded once.
"""
from __future__ import annotations

import collections.abc as _abc
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..coding.dtypes import is_bfloat16
from ..errors import ModelFormatError
from ..topology import Topology
from . import _onnx, _torch, _torchscript
from ._bitstream import drop_topology_units
from ._common import TensorRecord, coded_array, numpy_dtype, plan_restore, restore_array, typed_errors
from ._npz import read_npz, write_npz
from ._safetensors import SafetensorsFile, StreamingSafetensorsWriter, read_safetensors, write_safetensors
from ._torchbase import torch_module

__all__ = [
    "LoadedModel", "load_model", "save_model", "detect_format", "FORMATS", "FOLDER_FILES",
    "from_torch", "to_state_dict", "to_checkpoint", "load_into_module", "from_onnx", "to_onnx",
    "from_safetensors", "from_npz", "restore_tensors", "drop_topology_units", "open_model", "LazyTensors",
    "save_model_streaming",
]

#: canonical format names and the file extensions that select them
# .bin is the Hugging Face name of PyTorch weight files (pytorch_model.bin), .ckpt a Lightning checkpoint
FORMATS = {"onnx": (".onnx",), "pytorch": (".pt", ".pth", ".jit", ".bin", ".ckpt"),
           "safetensors": (".safetensors",), "npz": (".npz",)}
_ALIASES = {"torch": "pytorch", "pt": "pytorch", "pth": "pytorch", "pytorch": "pytorch", "onnx": "onnx",
            "safetensors": "safetensors", "npz": "npz", "numpy": "npz"}


@dataclass
class LoadedModel:
    """Tensors to code (ordered; float16/32/64 and integer numpy arrays), the topology, and the source format."""

    tensors: dict[str, np.ndarray]
    topology: Topology | None
    source_format: str
    #: what the loader wants the user to know (e.g. the parts of a checkpoint left out with model_state_only)
    notes: list[str] = field(default_factory=list)


def detect_format(path: str | os.PathLike, format: str | None = None) -> str:
    if format is not None:
        try:
            return _ALIASES[str(format).lower().lstrip(".")]
        except KeyError:
            raise ModelFormatError(f"unknown model format {format!r}; choose one of {sorted(FORMATS)}") from None
    ext = os.path.splitext(os.fspath(path))[1].lower()
    for fmt, exts in FORMATS.items():
        if ext in exts:
            return fmt
    known = ", ".join(e for exts in FORMATS.values() for e in exts)
    raise ModelFormatError(f"cannot tell the model format of {os.fspath(path)!r} from its extension "
                           f"{ext or '(none)'!r}; known: {known} (or pass format=..., on the command line --format)")


def _finish(tensors: dict[str, np.ndarray], record: TensorRecord, source_format: str) -> LoadedModel:
    tensors = {k: coded_array(v) for k, v in tensors.items()}
    return LoadedModel(tensors, record.to_topology(), source_format)


def _from_array_dict(arrays: Mapping[str, np.ndarray], source_format: str,
                     dtypes: Mapping[str, str] | None = None) -> LoadedModel:
    record = TensorRecord(source_format="numpy")
    tensors: dict[str, np.ndarray] = {}
    seen: dict[Any, str] = {}
    order = []
    for name, arr in arrays.items():
        if not isinstance(name, str):
            raise ModelFormatError(f"tensor name {name!r} is not a string")
        arr = np.asarray(arr)
        if (arr.dtype.kind not in "fiub" or arr.dtype.itemsize > 8) and not is_bfloat16(arr.dtype):
            raise ModelFormatError(f"tensor {name!r} has unsupported dtype {arr.dtype}")
        order.append(name)
        key = None
        if arr.size:
            key = (arr.__array_interface__["data"][0], arr.shape, arr.strides, arr.dtype.str)
        if key is not None and key in seen:
            record.tied[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        dname = (dtypes or {}).get(name) or str(arr.dtype)
        if dname != "float32":
            record.dtypes[name] = dname
        if arr.ndim == 0:
            record.shapes[name] = []
        tensors[name] = arr
    if record.tied:
        record.order = order
    return _finish(tensors, record, source_format)


def from_safetensors(path: str | os.PathLike) -> LoadedModel:
    arrays, dtypes, metadata = read_safetensors(os.fspath(path))
    lm = _from_array_dict(arrays, "safetensors", dtypes)
    if metadata:
        rec = TensorRecord.from_topology(lm.topology) or TensorRecord()
        rec.extra["safetensors_metadata"] = metadata
        lm.topology = rec.to_topology()
    return lm


def from_npz(path: str | os.PathLike) -> LoadedModel:
    return _from_array_dict(read_npz(os.fspath(path)), "npz")


def from_torch(module_or_state_dict) -> LoadedModel:
    """From an ``nn.Module`` (its state_dict: parameters and persistent buffers) or a state_dict."""
    torch = torch_module()
    if isinstance(module_or_state_dict, torch.nn.Module):
        tensors, record = _torch.from_module(module_or_state_dict)
    elif isinstance(module_or_state_dict, Mapping) and not all(
            isinstance(v, (torch.Tensor, np.ndarray)) for v in module_or_state_dict.values()):
        tensors, record = _torch.checkpoint_to_tensors(module_or_state_dict)   # a whole checkpoint
    elif isinstance(module_or_state_dict, Mapping):
        tensors, record = _torch.state_dict_to_tensors(module_or_state_dict)
    else:
        raise ModelFormatError("from_torch expects an nn.Module or a state_dict, got "
                               f"{type(module_or_state_dict).__name__}")
    return _finish(tensors, record, "pytorch")


def from_onnx(model, *, constant_min_elements: int = _onnx.DEFAULT_CONSTANT_MIN_ELEMENTS,
              small_tensor_elements: int = _onnx.DEFAULT_SMALL_TENSOR_ELEMENTS) -> LoadedModel:
    """From an in-memory ``onnx.ModelProto`` (not modified). Initializers kept in external files need a path.

    Float tensors with fewer than ``small_tensor_elements`` elements and every tensor that reaches a shape-like
    input or is a quantisation parameter stay in the graph, exact (``docs/converters.md``)."""
    tensors, topology = _onnx.from_onnx(model, constant_min_elements=constant_min_elements,
                                        small_tensor_elements=small_tensor_elements)
    return LoadedModel({k: coded_array(v) for k, v in tensors.items()}, topology, "onnx")


#: weight files of a model folder (Hugging Face names), in the order they are looked for
FOLDER_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "model.onnx")


def _load_folder(path: str, format: str | None) -> LoadedModel:
    for name in FOLDER_FILES:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            if name.endswith(".index.json"):
                return _load_sharded(candidate, format)
            return load_model(candidate, format=format)
    exts = {e for group in FORMATS.values() for e in group}
    found = sorted(f for f in os.listdir(path)
                   if os.path.splitext(f)[1].lower() in exts and os.path.isfile(os.path.join(path, f)))
    if len(found) == 1:
        return load_model(os.path.join(path, found[0]), format=format)
    what = "no model file" if not found else f"several model files ({', '.join(found[:6])})"
    raise ModelFormatError(f"cannot read {path!r}: it is a directory with {what} and none of the usual names "
                           f"({', '.join(FOLDER_FILES)}); name the file")


def _read_shard_index(index_path: str) -> tuple[list[str], dict]:
    """(shard file names in first-use order, weight_map) of a ``*.index.json``, each shard checked to be a file
    in the index's folder."""
    folder = os.path.dirname(index_path)
    try:
        with open(index_path, "rb") as f:
            weight_map = json.loads(f.read(16 << 20).decode("utf-8"))["weight_map"]
        if not (isinstance(weight_map, dict) and weight_map
                and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
            raise TypeError("weight_map must map tensor names to shard file names")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ModelFormatError(f"{index_path!r} is not a readable shard index: {e}") from None
    shards = list(dict.fromkeys(weight_map.values()))
    for shard in shards:
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise ModelFormatError(f"{index_path!r}: shard {shard!r} is not a file name in the index's folder")
        if not os.path.isfile(os.path.join(folder, shard)):
            raise ModelFormatError(f"{index_path!r}: shard {shard!r} does not exist")
    return shards, weight_map


def _load_sharded(index_path: str, format: str | None) -> LoadedModel:
    """A checkpoint split into shards (``*.index.json`` with a ``weight_map`` name -> shard file): the shards'
    tensors in shard order, each shard in its own order, as one model."""
    folder = os.path.dirname(index_path)
    shards, weight_map = _read_shard_index(index_path)
    tensors: dict[str, np.ndarray] = {}
    merged = None
    order: list[str] = []
    source = None
    for shard in shards:
        part = load_model(os.path.join(folder, shard), format=format)
        rec = TensorRecord.from_topology(part.topology) or TensorRecord()
        names = rec.order or list(part.tensors)
        unlisted = [n for n in names if weight_map.get(n) != shard]
        if unlisted:
            raise ModelFormatError(f"{index_path!r}: shard {shard!r} holds {unlisted[:3]}, which the index does not "
                                   f"place in it")
        tensors.update(part.tensors)
        order += names
        source = source or part.source_format
        if merged is None:
            merged = rec
        else:
            merged.dtypes.update(rec.dtypes)
            merged.shapes.update(rec.shapes)
            merged.tied.update(rec.tied)
    held = set(order)
    missing = [n for n in weight_map if n not in held]
    if missing:
        raise ModelFormatError(f"{index_path!r}: the index lists {missing[:3]}, which no shard holds")
    merged.order = order if merged.tied else []
    return LoadedModel(tensors, merged.to_topology(), source)


class LazyTensors(_abc.Mapping):
    """name -> array of safetensors files, read from disk one tensor per access (nothing is cached), so that
    :meth:`nnc.Encoder.encode_to` holds only the tensors being coded. ``dtype_names()`` and ``shapes()`` come
    from the headers without reading data."""

    def __init__(self, files: list, order: list[str]):
        self._where = {}
        for sf in files:
            for name in sf.entries:
                self._where[name] = sf
        self._order = order

    def __getitem__(self, name: str) -> np.ndarray:
        return coded_array(self._where[name].read(name))

    def __iter__(self):
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def dtype_names(self) -> dict[str, str]:
        return {n: self._where[n].entries[n][0] for n in self._order}

    def shapes(self) -> dict[str, list[int]]:
        return {n: list(self._where[n].entries[n][1]) for n in self._order}

    def nbytes(self) -> int:
        return sum(e[3] - e[2] for n in self._order for e in [self._where[n].entries[n]])


def _safetensors_paths(path: str) -> tuple[list[str], dict | None] | None:
    """The safetensors file(s) of ``path`` (a file, a folder with model.safetensors or a sharded index) and
    the index's weight map; None when ``path`` is not safetensors."""
    if os.path.isdir(path):
        single = os.path.join(path, "model.safetensors")
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(single):
            return [single], None
        if not os.path.isfile(index):
            return None
        path = index
    if path.endswith(".safetensors.index.json"):
        shards, weight_map = _read_shard_index(path)
        return [os.path.join(os.path.dirname(path), s) for s in shards], weight_map
    if os.path.splitext(path)[1].lower() == ".safetensors":
        return [path], None
    return None


def open_model(source, *, format: str | None = None) -> LoadedModel:
    """Like :func:`load_model`, but a safetensors file, folder or sharded checkpoint is opened lazily: only the
    headers are read, and ``tensors`` is a :class:`LazyTensors` that reads each tensor when it is accessed
    (bfloat16 stays bfloat16). The topology (dtype record) is the same as :func:`load_model`'s, so the
    bitstream is too. Other formats are loaded as by :func:`load_model`."""
    if isinstance(source, (str, os.PathLike)) and format in (None, "safetensors"):
        path = os.fspath(source)
        found = _safetensors_paths(path) if os.path.exists(path) else None
        if found is not None:
            paths, weight_map = found
            files = [SafetensorsFile(p) for p in paths]
            order: list[str] = []
            for sf in files:
                if weight_map is not None:
                    shard = os.path.basename(sf.path)
                    unlisted = [n for n in sf.entries if weight_map.get(n) != shard]
                    if unlisted:
                        raise ModelFormatError(f"{path!r}: shard {shard!r} holds {unlisted[:3]}, which the index "
                                               "does not place in it")
                order += list(sf.entries)
            if weight_map is not None:
                held = set(order)
                missing = [n for n in weight_map if n not in held]
                if missing:
                    raise ModelFormatError(f"{path!r}: the index lists {missing[:3]}, which no shard holds")
            tensors = LazyTensors(files, order)
            record = TensorRecord(source_format="numpy")
            for name, dname in tensors.dtype_names().items():
                if dname != "float32":
                    record.dtypes[name] = dname
            for name, shape in tensors.shapes().items():
                if not shape:
                    record.shapes[name] = []
            if files[0].metadata:
                record.extra["safetensors_metadata"] = files[0].metadata
            return LoadedModel(tensors, record.to_topology(), "safetensors")
    return load_model(source, format=format)


def save_model_streaming(dest, stream, *, shard_size: int | None = None, format: str | None = None) -> list[str]:
    """Write the tensors of a :class:`nnc.codec.DecodeStream` as safetensors while they are decoded: one file,
    or with ``shard_size`` (bytes) or a folder ``dest`` (an existing directory, or a path ending in ``/``) a
    Hugging Face sharded checkpoint (``model-0000k-of-0000N.safetensors`` + ``model.safetensors.index.json``).
    Original dtypes, 0-d shapes and tied tensors are restored from the topology as by :func:`save_model`.
    Returns the paths written. Nothing is left behind on error."""
    path = os.fspath(dest)
    folder = path.endswith(("/", os.sep)) or os.path.isdir(path)
    if folder:
        path = path.rstrip("/" + os.sep) or path
        if not os.path.isdir(path):
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise ModelFormatError(f"cannot write {path!r}: directory {parent!r} does not exist")
            os.mkdir(path)
        if shard_size is None:
            shard_size = 5 << 30          # the Hugging Face default (save_pretrained's max_shard_size "5GB")
    elif detect_format(path, format) != "safetensors":
        raise ModelFormatError(f"streaming output is safetensors (a .safetensors file or a folder), not {path!r}")
    record = _record_for(stream.topology) or TensorRecord()
    layout = []
    decoded = {name: (shape, dtype) for name, shape, dtype in stream.entries}
    for name, (shape, dtype) in decoded.items():
        dname = record.dtypes.get(name) or ("bfloat16" if is_bfloat16(dtype) else str(np.dtype(dtype)))
        numpy_dtype(dname)   # a known name, or ModelFormatError
        layout.append((name, dname, list(record.shapes.get(name, shape)), name))
    for alias, canon in record.tied.items():
        if canon not in decoded:
            raise ModelFormatError(f"tied tensor {alias!r} refers to {canon!r}, which is not in the bitstream")
        c = next(e for e in layout if e[0] == canon)
        layout.append((alias, c[1], c[2], canon))
    if record.order and set(record.order) == {e[0] for e in layout}:
        pos = {n: i for i, n in enumerate(record.order)}
        layout.sort(key=lambda e: pos[e[0]])
    meta = record.extra.get("safetensors_metadata") or ({"format": "pt"} if record.source_format == "pytorch"
                                                         else None)
    writer = StreamingSafetensorsWriter(path, layout, meta, shard_size=shard_size, folder=folder)
    try:
        for t in stream:
            writer.write(t.name, restore_array(t.name, t.array, record.dtypes.get(t.name), None))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return writer.paths


@typed_errors
def load_model(source, *, format: str | None = None, model_state_only: bool = False) -> LoadedModel:
    """Load a model file (format from its extension unless ``format`` is given), a model folder (its
    ``model.safetensors``, ``pytorch_model.bin``, ``model.onnx`` or sharded ``*.index.json``; see
    :data:`FOLDER_FILES`) or an in-memory model.

    A PyTorch checkpoint (model and optimizer state, EMA copies, step, epoch, lists...) is kept whole: see
    ``docs/converters.md``. ``model_state_only=True`` reads only its model state_dict; ``LoadedModel.notes``
    then names what was left out."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            return _load_folder(path, format)
        fmt = detect_format(path, format)
        if not os.path.exists(path):
            raise ModelFormatError(f"cannot read {path!r}: no such file")
        if fmt == "onnx":
            tensors, topology = _onnx.load_onnx_file(path)
            return LoadedModel({k: coded_array(v) for k, v in tensors.items()}, topology, "onnx")
        if fmt == "pytorch":
            notes: list[str] = []
            tensors, record = _torch.load_torch_file(path, model_state_only=model_state_only, notes=notes)
            lm = _finish(tensors, record, "pytorch")
            lm.notes = notes
            return lm
        if fmt == "safetensors":
            return from_safetensors(path)
        return from_npz(path)
    # in-memory objects
    mod = type(source).__module__ or ""
    if mod.startswith("onnx"):
        return from_onnx(source)
    if mod.startswith("torch") or _is_torch_module(source):
        return from_torch(source)
    if isinstance(source, Mapping):
        if any(type(v).__module__.startswith("torch") for v in source.values()):
            return from_torch(source)
        return _from_array_dict(source, "numpy")
    raise ModelFormatError(f"cannot load a model from a {type(source).__name__}; give a path, a dict of arrays, "
                           "a torch.nn.Module or an onnx.ModelProto")


def _is_torch_module(obj) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def restore_tensors(tensors: Mapping[str, np.ndarray], topology: Topology | None) -> dict[str, np.ndarray]:
    """Decoded tensors with original dtypes (bfloat16 as float32), 0-d shapes and tied names restored."""
    record = _record_for(topology)
    if _onnx.is_onnx_topology(topology):
        tensors = _onnx.with_zero_points(tensors, topology)
    return {p.name: p.array for p in plan_restore(tensors, record)}


def _record_for(topology: Topology | None) -> TensorRecord | None:
    if _onnx.is_onnx_topology(topology):
        return TensorRecord(source_format="onnx", dtypes=_onnx.tensor_dtypes(topology, restored=True),
                            shapes=_onnx.tensor_shapes(topology))
    return TensorRecord.from_topology(topology)


def to_checkpoint(tensors: Mapping[str, np.ndarray], topology: Topology | None = None):
    """The decoded checkpoint with its original structure (nested dicts, lists, scalars; tensors as torch
    tensors), or the flat state_dict for a bitstream made from a plain state_dict."""
    return _torch.to_checkpoint(tensors, _record_for(topology))


def to_state_dict(tensors: Mapping[str, np.ndarray], topology: Topology | None = None) -> dict:
    """A torch state_dict: original dtypes, 0-d shapes, and tied entries as the same tensor object."""
    if _onnx.is_onnx_topology(topology):
        tensors = _onnx.with_zero_points(tensors, topology)
    return _torch.to_state_dict(tensors, _record_for(topology))


def load_into_module(module, tensors: Mapping[str, np.ndarray], topology: Topology | None = None, *,
                     strict: bool = True):
    """Load decoded tensors into ``module`` (``load_state_dict``); returns the module."""
    sd = to_state_dict(tensors, topology)
    try:
        module.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        raise ModelFormatError(f"decoded tensors do not fit the module: {e}") from None
    return module


def to_onnx(tensors: Mapping[str, np.ndarray], topology: Topology):
    """Rebuild the ``onnx.ModelProto`` from decoded tensors and an NNR_TPL_ONNX topology."""
    return _onnx.to_onnx(tensors, topology)


@typed_errors
def save_model(dest, tensors: Mapping[str, np.ndarray], topology: Topology | None, *,
               format: str | None = None, template: str | os.PathLike | None = None) -> None:
    """Write a model file atomically (temp file in the same directory + ``os.replace``).

    ``template``: a TorchScript archive whose state_dict the tensors replace; the result is that program with
    the new weights (nothing of the template is run; see ``docs/converters.md``)."""
    path = os.fspath(dest)
    fmt = detect_format(path, format)
    if os.path.isdir(path):
        raise ModelFormatError(f"cannot write {path!r}: it is a directory")
    if template is not None:
        if fmt != "pytorch":
            raise ModelFormatError(f"a TorchScript template makes a TorchScript archive; {path!r} names a {fmt} file")
        if not _torchscript.is_torchscript_archive(os.fspath(template)):
            raise ModelFormatError(f"template {os.fspath(template)!r} is not a TorchScript archive")
        _torchscript.rewrite_archive(os.fspath(template), path, restore_tensors(tensors, topology))
        return
    if fmt == "onnx":
        if not _onnx.is_onnx_topology(topology):
            raise ModelFormatError("cannot write an .onnx model: the bitstream carries no ONNX topology "
                                   "(it was not made from an ONNX model); write .safetensors, .pt or .npz instead")
        _onnx.write_onnx_file(path, tensors, topology)
        return
    record = _record_for(topology)
    if _onnx.is_onnx_topology(topology):
        tensors = _onnx.with_zero_points(tensors, topology)
    if fmt == "pytorch" and os.path.splitext(path)[1].lower() == ".jit":
        raise ModelFormatError(f"cannot write {path!r} without the TorchScript program: pass the original archive "
                               "as template (CLI: --template original.jit), or write a .pt state_dict")
    if fmt == "pytorch":
        _torch.write_torch_file(path, tensors, record)
    elif fmt == "safetensors":
        write_safetensors(path, tensors, record)
    else:
        write_npz(path, tensors, record)
