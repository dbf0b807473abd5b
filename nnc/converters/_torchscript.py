"""TorchScript archives (``torch.jit.save``: ``.pt`` / ``.jit``) read as a state_dict, without running them.

``torch.jit.load`` compiles the archive's code and runs its ``__setstate__`` methods, and ``torch.load`` with
``weights_only=True`` refuses such archives. This reader does neither: it unpickles ``data.pkl`` with a closed
list of globals (tensor rebuilds, typed storages, TorchScript list builders, ``OrderedDict``); every
``__torch__.*`` object becomes an inert record of its attribute dict. Which attributes are parameters and
buffers is read from the ``__parameters__`` / ``__buffers__`` literals of the class declarations under
``code/`` (parsed with ``ast.literal_eval``, nothing executed). The result has the names and order of
``torch.jit.load(path).state_dict()``; other tensor attributes (RNN states and the like) are not part of it.
"""
from __future__ import annotations

import ast
import io
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from ..errors import ModelFormatError
from ._common import atomic_path
from ._torchbase import tensor_from_numpy
from ._torchbase import torch_module as _torch
from ._zipscreen import screen_zip

# decompressed size allowed for one pickle or code file of the archive (tensor data is checked against the
# sizes the pickle declares instead)
_MAX_PICKLE_BYTES = 64 << 20
_MAX_CODE_BYTES = 16 << 20
_MAX_DEPTH = 256
_MAX_VISITS = 200_000
# bounded work for hostile archives: opcodes the screen walks, the length of one __parameters__/__buffers__
# literal, and the parameter names looked up over all module visits (a shared submodule is visited per path)
_MAX_OPCODES = 4_000_000
_MAX_LIST_LITERAL = 4 << 20
_MAX_NAME_VISITS = 4_000_000

_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}
_LIST_BUILDERS = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist")
# the opcodes a TorchScript data.pkl is made of (binary protocol 2, as torch's pickler writes it), plus a few
# harmless equivalents; text forms, extension codes, INST/OBJ and huge integers (LONG4) are not accepted
_OPCODES = frozenset("""PROTO STOP GLOBAL MARK TUPLE EMPTY_TUPLE TUPLE1 TUPLE2 TUPLE3 NEWOBJ BUILD REDUCE BINPERSID
    BININT BININT1 BININT2 LONG1 BINFLOAT BINUNICODE SHORT_BINUNICODE NONE NEWTRUE NEWFALSE EMPTY_LIST APPEND
    APPENDS LIST EMPTY_DICT SETITEM SETITEMS DICT BINPUT LONG_BINPUT BINGET LONG_BINGET MEMOIZE POP
    POP_MARK""".split())


def _roots(names) -> list[str]:
    """The ``<root>/`` folders of an archive's entry names that hold a ``data.pkl``."""
    return sorted({n[: -len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1})


def is_torchscript_archive(path: str) -> bool:
    """True for a zip file laid out as ``torch.jit.save`` writes it (``<root>/data.pkl`` and ``<root>/code/``)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(any(n.startswith(r + "code/") for n in names) for r in _roots(names))


class _ScriptObject:
    """An unpickled ``__torch__`` object: its class name and attribute state, nothing callable."""

    qualname = ""

    def __setstate__(self, state):
        self.state = state


class _StorageType:
    def __init__(self, dtype_name: str):
        self.dtype_name = dtype_name


class _Archive:
    def __init__(self, path: str):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise ModelFormatError(f"{path!r} is not a readable TorchScript archive: {e}") from None
        names = self.zip.namelist()
        roots = _roots(names)
        if len(roots) != 1:
            raise ModelFormatError(f"{path!r}: expected one <root>/data.pkl in the TorchScript archive, "
                                   f"found {len(roots)}")
        self.root = roots[0]
        screen_zip(path, what="TorchScript archive")   # declared vs compressed sizes, the decoder budget
        self.entries = set(names)
        self.classes: dict[str, tuple[list[str], list[str]] | None] = {}
        self.storages: dict[str, Any] = {}
        self.object_types: dict[str, type] = {}

    def close(self):
        self.zip.close()

    def read(self, name: str, limit: int) -> bytes:
        if name not in self.entries:
            raise ModelFormatError(f"{self.path!r}: the TorchScript archive has no entry {name!r}")
        info = self.zip.getinfo(name)
        if info.file_size > limit:
            raise ModelFormatError(f"{self.path!r}: entry {name!r} is {info.file_size} bytes, more than {limit}")
        try:
            return self.zip.read(name)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise ModelFormatError(f"{self.path!r}: cannot read entry {name!r}: {e}") from None

    # -- class declarations ---------------------------------------------------------------------------------
    def declaration(self, qualname: str) -> tuple[list[str], list[str]] | None:
        """(parameters, buffers) of a ``__torch__`` module class, None for a class that is not a Module."""
        if qualname not in self.classes:
            module, _, cls = qualname.rpartition(".")
            entry = self.root + "code/" + module.replace(".", "/") + ".py"
            if entry not in self.entries:
                raise ModelFormatError(f"{self.path!r}: {qualname} has no class declaration in the archive ({entry} "
                                       f"is missing); TorchScript custom classes are not supported")
            source = self.read(entry, _MAX_CODE_BYTES)
            self._parse_code(module, source.decode("utf-8", errors="replace"))
            self.classes.setdefault(qualname, None)
        return self.classes[qualname]

    def _parse_code(self, module: str, text: str):
        # top-level "class Name(Module):" blocks; the two literals follow the class line
        for block in re.split(r"^(?=class )", text, flags=re.M):
            head = re.match(r"class (\w+)\((\w+)\):", block)
            if head is None:
                continue
            name = f"{module}.{head.group(1)}"
            if head.group(2) != "Module":
                self.classes.setdefault(name, None)
                continue
            lists = []
            for key in ("__parameters__", "__buffers__"):
                m = re.search(rf"^  {key} = (\[[^\]\n]*\])\s*$", block, flags=re.M)
                if m and len(m.group(1)) > _MAX_LIST_LITERAL:
                    raise ModelFormatError(f"{self.path!r}: class {name} has a {key} list of {len(m.group(1))} "
                                           f"characters, more than {_MAX_LIST_LITERAL}")
                try:
                    value = ast.literal_eval(m.group(1)) if m else []
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise ModelFormatError(f"{self.path!r}: class {name} has an unreadable {key} list") from None
                if not all(isinstance(v, str) for v in value):
                    raise ModelFormatError(f"{self.path!r}: class {name} has a non-string entry in {key}")
                lists.append(value)
            self.classes[name] = (lists[0], lists[1])

    # -- unpickling -----------------------------------------------------------------------------------------
    def storage(self, pid):
        torch = _torch()
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise ModelFormatError(f"{self.path!r}: unexpected persistent id {pid!r:.100} in data.pkl")
        _, kind, key, _location, numel = pid
        if not re.fullmatch(r"\w+", key):
            raise ModelFormatError(f"{self.path!r}: storage key {key!r:.40} is not a plain name")
        cached = self.storages.get(key)
        if cached is not None:
            return cached
        dtype = getattr(torch, kind.dtype_name)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if numel < 0:
            raise ModelFormatError(f"{self.path!r}: storage {key} has a negative size")
        raw = self.read(f"{self.root}data/{key}", numel * itemsize)
        if len(raw) != numel * itemsize:
            raise ModelFormatError(f"{self.path!r}: storage {key} holds {len(raw)} bytes, its header says "
                                   f"{numel} x {itemsize}")
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        self.storages[key] = flat
        return flat

    def rebuild_tensor(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        torch = _torch()
        ints = lambda v: isinstance(v, tuple) and all(isinstance(i, int) and i >= 0 for i in v)  # noqa: E731
        if not (isinstance(storage, torch.Tensor) and isinstance(offset, int) and offset >= 0
                and ints(size) and ints(stride) and len(size) == len(stride)):
            raise ModelFormatError(f"{self.path!r}: malformed tensor record in data.pkl")
        if all(size):
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= storage.numel():
                raise ModelFormatError(f"{self.path!r}: a tensor of shape {list(size)} reaches element {last} of a "
                                       f"storage of {storage.numel()}")
        return storage.as_strided(size, stride, offset)

    def screen(self, data: bytes) -> None:
        """Walk the opcodes without executing them: only the accepted ones, and memo slots used in order (the
        C unpickler sizes its memo by the largest index, so one mutated BINPUT could ask for gigabytes)."""
        try:
            with warnings.catch_warnings():  # genops decodes text-opcode arguments before we can refuse them
                warnings.simplefilter("ignore")
                self._screen_ops(data)
        except ModelFormatError:
            raise
        except Exception as e:  # noqa: BLE001 - genops' complaints about malformed opcodes or arguments
            raise ModelFormatError(f"{self.path!r}: data.pkl is malformed ({e})") from None

    def _screen_ops(self, data: bytes) -> None:
        puts = 0
        for count, (op, arg, pos) in enumerate(pickletools.genops(data)):
            if count >= _MAX_OPCODES:
                raise ModelFormatError(f"{self.path!r}: data.pkl has more than {_MAX_OPCODES} opcodes")
            if op.name not in _OPCODES:
                raise ModelFormatError(f"{self.path!r}: data.pkl uses opcode {op.name} at byte {pos}, which "
                                       f"torch.jit.save does not write")
            if op.name in ("BINPUT", "LONG_BINPUT"):
                if arg > puts:
                    raise ModelFormatError(f"{self.path!r}: data.pkl stores memo slot {arg} at byte {pos} after "
                                           f"{puts} slots")
                puts += arg == puts
            elif op.name == "MEMOIZE":
                puts += 1
            elif op.name in ("BINGET", "LONG_BINGET") and arg >= puts:
                raise ModelFormatError(f"{self.path!r}: data.pkl reads memo slot {arg} at byte {pos} before it is "
                                       f"stored")

    def object_type(self, qualname: str) -> type:
        t = self.object_types.get(qualname)
        if t is None:
            t = type("ScriptObject", (_ScriptObject,), {"qualname": qualname})
            self.object_types[qualname] = t
        return t

    def load_data(self):
        archive = self

        class Restricted(pickle.Unpickler):
            def find_class(self, module, name):
                if module.startswith("__torch__.") or module == "__torch__":
                    return archive.object_type(f"{module}.{name}")
                if module == "torch" and name in _STORAGE_DTYPES:
                    return _StorageType(_STORAGE_DTYPES[name])
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return archive.rebuild_tensor
                if module == "torch._utils" and name == "_rebuild_parameter":
                    return lambda data, requires_grad=False, hooks=None: data
                if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
                    return list
                if module == "torch.jit._pickle" and name == "restore_type_tag":
                    return lambda value, type_str: value
                if module == "collections" and name == "OrderedDict":
                    return OrderedDict
                raise ModelFormatError(f"{archive.path!r}: data.pkl refers to {module}.{name}, which a TorchScript "
                                       f"state_dict reader does not accept")

            def persistent_load(self, pid):
                return archive.storage(pid)

        data = self.read(self.root + "data.pkl", _MAX_PICKLE_BYTES)
        self.screen(data)
        try:
            return Restricted(io.BytesIO(data)).load()
        except ModelFormatError:
            raise
        except RecursionError:
            raise ModelFormatError(f"{self.path!r}: data.pkl nests too deeply") from None
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise ModelFormatError(f"{self.path!r}: data.pkl cannot be read ({type(e).__name__}: {e})") from None


def read_state_dict(path: str) -> "OrderedDict[str, Any]":
    """The state_dict (names -> torch tensors, ``ScriptModule.state_dict()`` order) of a TorchScript archive."""
    archive = _Archive(path)
    try:
        return _state_dict(archive)
    finally:
        archive.close()


def _state_dict(archive: _Archive) -> "OrderedDict[str, Any]":
    """The state_dict of an open archive; its tensors are views of ``archive.storages``."""
    torch = _torch()
    path = archive.path
    root = archive.load_data()
    if not isinstance(root, _ScriptObject):
        raise ModelFormatError(f"{path!r}: data.pkl does not hold a TorchScript module")
    out: OrderedDict[str, Any] = OrderedDict()
    stack = [(root, "", 0)]
    visits = 0
    names_seen = 0
    # depth-first, a module's own parameters and buffers before its submodules, as Module.state_dict(); a
    # submodule shared under two names is listed under both (its tensors are tied), so a pickle can make a
    # graph whose paths multiply: visits are capped, as is the depth (a cycle)
    while stack:
        obj, prefix, depth = stack.pop()
        visits += 1
        if depth > _MAX_DEPTH:
            raise ModelFormatError(f"{path!r}: modules nest more than {_MAX_DEPTH} levels deep")
        if visits > _MAX_VISITS:
            raise ModelFormatError(f"{path!r}: more than {_MAX_VISITS} module visits (submodules shared "
                                   f"along many paths)")
        decl = archive.declaration(obj.qualname)
        state = getattr(obj, "state", None)
        if decl is None or not isinstance(state, dict):
            raise ModelFormatError(f"{path!r}: {prefix or 'the root'} ({obj.qualname}) is not a plain module")
        params, buffers = decl
        names_seen += len(params) + len(buffers)
        if names_seen > _MAX_NAME_VISITS:
            raise ModelFormatError(f"{path!r}: more than {_MAX_NAME_VISITS} parameter and buffer names over all "
                                   f"module visits")
        for name in params + buffers:
            value = state.get(name)
            if value is None:  # an optional parameter set to None (bias=False)
                continue
            if not isinstance(value, torch.Tensor):
                raise ModelFormatError(f"{path!r}: {prefix}{name} is declared a parameter or buffer but holds "
                                       f"a {type(value).__name__}")
            out[prefix + name] = value
        children = [(v, f"{prefix}{k}.", depth + 1) for k, v in state.items()
                    if isinstance(v, _ScriptObject) and archive.declaration(v.qualname) is not None]
        stack.extend(reversed(children))
    return out


def rewrite_archive(template: str, dest: str, tensors: Mapping[str, Any]) -> None:
    """Write ``dest``: the TorchScript archive ``template`` with its state_dict replaced by ``tensors`` (numpy
    arrays of the same names and shapes, e.g. decoded ones). Nothing of the template is run: its code, its other
    attributes and every byte outside the replaced tensors are copied, each tensor is written into its storage
    (cast to the storage's dtype), and the archive is written entry by entry in the template's order."""
    torch = _torch()
    archive = _Archive(template)
    try:
        sd = _state_dict(archive)
        missing = [n for n in sd if n not in tensors]
        extra = [n for n in tensors if n not in sd]
        if missing or extra:
            raise ModelFormatError(f"the tensors do not fit the TorchScript template {template!r}: missing "
                                   f"{missing[:5]}, not in the template {extra[:5]}")
        for name, view in sd.items():
            arr = np.asarray(tensors[name])
            if tuple(arr.shape) != tuple(view.shape):
                raise ModelFormatError(f"tensor {name!r} has shape {list(arr.shape)}, the template's "
                                       f"{list(view.shape)}")
            with torch.no_grad():
                view.copy_(tensor_from_numpy(np.array(arr, order="C", copy=True)).to(view.dtype))  # keeps 0-d
        replaced = {f"{archive.root}data/{key}": flat for key, flat in archive.storages.items()}
        with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
            for info in archive.zip.infolist():
                flat = replaced.get(info.filename)
                data = (archive.read(info.filename, info.file_size) if flat is None
                        else flat.view(torch.uint8).numpy().tobytes())
                entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                entry.compress_type = zipfile.ZIP_STORED
                out.writestr(entry, data)
    finally:
        archive.close()
