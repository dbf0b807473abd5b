"""A small declarative description of HLS syntax structures.

Each syntax structure of the specification is written down once, as a list of items:

* :class:`Field` — one syntax element with a descriptor (``U(8)``, ``UE(7)``, ``ST()``...), optionally
  guarded by a condition;
* :class:`Array` — ``name[j]`` for j < count, all with the same descriptor;
* :class:`Loop` — a repeated group of items, read into a list of records;
* :class:`If` — a conditional group (with an optional ``orelse`` group);
* :class:`Sub` — a nested syntax structure (e.g. ``codebook()``);
* :class:`Align` — ``byte_alignment()``;
* :class:`Fail` — a condition under which the data are invalid or use an unsupported feature.

Conditions and counts are Python expressions (strings) over the syntax elements read so far, the
elements of the enclosing structures, the context handed in by the caller (e.g. ``general_profile_idc``)
and the names registered with :func:`register_names` (enumeration members, helper functions). They are
compiled once. Because the declaration is data, the same list drives the reader (:func:`read_struct`, which
runs the structure's reader generated from it by :mod:`nnc.bitstream.compiled`; :func:`interpret_struct` walks it
item by item and is the reference), the writer (:func:`write_struct`) and the documentation
(:func:`struct_markdown`).

A structure becomes a class with :func:`syntax`, which turns the decorated class into a dataclass whose
fields are exactly the syntax element names (absent elements are ``None``).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import numpy as np

from ..errors import BitstreamError, ConfigError, NNCError, TruncatedBitstreamError, UnsupportedFeatureError
from .bits import BitReader, BitWriter, Float32

__all__ = [
    "Expr", "U", "I", "UE", "IE", "ST", "FLT", "Descriptor",
    "Field", "Array", "Loop", "If", "Sub", "Align", "Fail",
    "Struct", "Scope", "syntax", "register_names", "read_struct", "interpret_struct", "write_struct", "struct_markdown",
    "over_limit", "BUDGET_KEY", "LIMITS_KEY", "scope_value",
]

_NAMES: dict[str, Any] = {"__builtins__": {"len": len, "min": min, "max": max, "int": int}}


def register_names(**names: Any) -> None:
    """Make names (constants, helper functions) available to condition and count expressions."""
    _NAMES.update(names)


class Expr:
    """A condition or count: a Python expression string, or a callable ``f(scope)`` plus a ``doc`` text."""

    __slots__ = ("src", "code", "fn", "limit")

    def __init__(self, src: "str | Callable[[Scope], Any] | Expr", doc: str | None = None):
        #: for :func:`over_limit` conditions: (DecoderConfig attribute, element name, offset), which the compiled
        #: readers evaluate inline
        self.limit = None
        if isinstance(src, Expr):
            self.src, self.code, self.fn, self.limit = src.src, src.code, src.fn, src.limit
            return
        if callable(src):
            self.fn = src
            self.code = None
            self.src = doc or getattr(src, "__doc__", None) or src.__name__
        else:
            self.fn = None
            self.src = src
            self.code = compile(src, f"<syntax {src!r}>", "eval")

    def __call__(self, scope: "Scope"):
        if self.fn is not None:
            return self.fn(scope)
        return eval(self.code, _NAMES, scope)  # noqa: S307 - our own declarations only

    def __str__(self) -> str:
        return self.src


def _expr(x) -> Expr | None:
    return None if x is None else (x if isinstance(x, Expr) else Expr(x))


_MISSING = object()


class Scope:
    """Name lookup for expressions: elements of the current structure, then of enclosing ones, then the
    caller's context. A name declared in a structure but absent from the data evaluates to ``None``."""

    __slots__ = ("values", "parent", "declared", "index", "done")

    def __init__(self, values: dict, parent: "Scope | None" = None, declared: frozenset = frozenset(),
                 index: int | None = None, done: list | None = None):
        self.values = values
        self.parent = parent
        self.declared = declared
        self.index = index
        self.done = done

    def __getitem__(self, key: str):
        v = scope_value(self, key, _MISSING)
        if v is _MISSING:
            raise KeyError(key)
        return v

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def loop(self) -> "Scope | None":
        """The innermost enclosing scope that is a loop iteration."""
        s = self
        while s is not None and s.index is None:
            s = s.parent
        return s


# ---------------------------------------------------------------------------------------------------
# Descriptors
# ---------------------------------------------------------------------------------------------------

def scope_value(scope: "Scope | None", name: str, missing):
    """The value of ``name`` in ``scope`` or the scopes enclosing it (None when declared there but absent);
    ``missing`` when no scope of the chain declares it. Shared with the compiled readers."""
    s = scope
    while s is not None:
        v = s.values.get(name, _MISSING)
        if v is not _MISSING:
            return v
        if name in s.declared:
            return None
        s = s.parent
    return missing


class Descriptor:
    """How one syntax element is coded. ``min_bits`` bounds loop counts read from hostile data;
    ``element_bytes`` is the memory one parsed element holds (charged to the parse budget before an array of
    them is read)."""

    min_bits = 1
    element_bytes = 48

    def read(self, r: BitReader, scope: Scope):
        raise NotImplementedError

    def write(self, w: BitWriter, value, scope: Scope) -> None:
        raise NotImplementedError

    def doc(self) -> str:
        raise NotImplementedError


class U(Descriptor):
    def __init__(self, n: int):
        self.n = n
        self.min_bits = n

    def read(self, r, scope):
        return r.u(self.n)

    def write(self, w, value, scope):
        w.u(self.n, value)

    def doc(self):
        return f"u({self.n})"


class I(Descriptor):  # noqa: E742 - the spec's name
    def __init__(self, n: int):
        self.n = n
        self.min_bits = n

    def read(self, r, scope):
        return r.i(self.n)

    def write(self, w, value, scope):
        w.i(self.n, value)

    def doc(self):
        return f"i({self.n})"


class UE(Descriptor):
    """ue(k); ``k`` may be an expression (e.g. ``"codebook_egk"``)."""

    def __init__(self, k: "int | str"):
        self.k = k if isinstance(k, int) else Expr(k)

    def _k(self, scope):
        return self.k if isinstance(self.k, int) else self.k(scope)

    def read(self, r, scope):
        return r.ue(self._k(scope))

    def write(self, w, value, scope):
        w.ue(self._k(scope), value)

    def doc(self):
        return f"ue({self.k})"


class IE(UE):
    def read(self, r, scope):
        return r.ie(self._k(scope))

    def write(self, w, value, scope):
        w.ie(self._k(scope), value)

    def doc(self):
        return f"ie({self.k})"


class ST(Descriptor):
    """st: UTF-8 string + NUL, byte aligned. With ``raw=True`` the value is the bytes (no UTF-8 check)."""

    min_bits = 8
    element_bytes = 80

    def __init__(self, raw: bool = False):
        self.raw = raw

    def read(self, r, scope):
        return r.st_bytes() if self.raw else r.st()

    def write(self, w, value, scope):
        w.st(value)

    def doc(self):
        return "st"


class RestBytes(Descriptor):
    """Binary data filling the rest of the unit (no terminator), byte aligned."""

    min_bits = 0

    def read(self, r, scope):
        return r.rest_bytes()

    def write(self, w, value, scope):
        if isinstance(value, str):
            value = value.encode("utf-8")
        w.raw_bytes(value)

    def doc(self):
        return "bytes to the end of the unit"


class FLT(Descriptor):
    min_bits = 32
    element_bytes = 64

    def read(self, r, scope):
        return r.flt()

    def write(self, w, value, scope):
        w.flt(value)

    def doc(self):
        return "flt"


# ---------------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------------
class Item:
    when: Expr | None = None

    def names(self) -> list[str]:
        return []


class Field(Item):
    def __init__(self, name: str, desc: Descriptor, when=None, default=None, note: str = ""):
        self.name, self.desc, self.when, self.default, self.note = name, desc, _expr(when), default, note

    def names(self):
        return [self.name]


class Array(Item):
    """``name[j]`` for j = 0 .. count-1 (a negative count means no element)."""

    def __init__(self, name: str, desc: Descriptor, count, when=None, note: str = ""):
        self.name, self.desc, self.count, self.when, self.note = name, desc, _expr(count), _expr(when), note

    def names(self):
        return [self.name]


class Loop(Item):
    """A group of items repeated ``count`` times; the value is a list of ``cls`` records."""

    def __init__(self, name: str, count, items: list, cls=None, when=None, note: str = "", fast=None,
                 record_bytes: int = 400):
        self.name, self.count, self.items, self.when, self.note = name, _expr(count), items, _expr(when), note
        #: optional bulk reader ``fast(r, scope, n) -> list`` used for long loops (same result as the items)
        self.fast = fast
        #: memory one record holds once parsed (charged to the parse budget before the loop runs)
        self.record_bytes = record_bytes
        self.declared = frozenset(_collect(items))
        self.cls = cls or _record_class(name, _collect(items))
        self.min_bits = max(1, _min_bits(items))

    def names(self):
        return [self.name]


class If(Item):
    def __init__(self, cond, items: list, orelse: list | None = None):
        self.when, self.items, self.orelse = _expr(cond), items, orelse or []

    def names(self):
        return _collect(self.items) + _collect(self.orelse)


class Sub(Item):
    """A nested syntax structure (a class decorated with :func:`syntax`), stored under ``name``."""

    def __init__(self, name: str, cls, when=None, note: str = ""):
        self.name, self.cls, self.when, self.note = name, cls, _expr(when), note

    def names(self):
        return [self.name]


class Align(Item):
    """``byte_alignment()``: a 1-bit, then 0-bits to the next byte boundary (always at least one bit)."""


class Fail(Item):
    """Raise when ``cond`` holds: ``exc`` is :class:`BitstreamError` (invalid data) or
    :class:`UnsupportedFeatureError` (valid but not implemented). On the writing side an invalid value
    raises :class:`ConfigError`. ``code`` names the violation for :func:`nnc.check` (``SYNTAX_ERROR`` if
    omitted)."""

    def __init__(self, cond, message: str, exc: type = BitstreamError, at: str | None = None,
                 code: str | None = None):
        self.when, self.message, self.exc, self.at, self.code = _expr(cond), message, exc, at, code


def _collect(items) -> list[str]:
    out: list[str] = []
    for it in items:
        for n in it.names():
            if n not in out:
                out.append(n)
    return out


def _min_bits(items) -> int:
    """Bits an iteration of ``items`` takes at least (unconditional fields only)."""
    total = 0
    for it in items:
        if isinstance(it, Field) and it.when is None:
            total += it.desc.min_bits
    return total


class _Record:
    """Base of the auto-generated loop record classes."""

    def to_dict(self) -> dict:
        return _to_dict(self)


def _record_class(name: str, fields: list[str]):
    cls_name = "".join(p.capitalize() for p in name.split("_")) + "Entry"
    return dataclasses.make_dataclass(cls_name, [(f, Any, dataclasses.field(default=None)) for f in fields],
                                      bases=(_Record,), repr=False, namespace={"__repr__": _record_repr})


def _record_repr(self) -> str:
    parts = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
             if getattr(self, f.name) is not None]
    return f"{type(self).__name__}({', '.join(parts)})"


def _to_dict(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if getattr(obj, f.name) is not None}
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        return {k: _to_dict(v) for k, v in obj._asdict().items()}
    if isinstance(obj, list):
        return [_to_dict(v) for v in obj]
    if isinstance(obj, Float32):
        return float(obj)
    return obj


# ---------------------------------------------------------------------------------------------------
# Structures
# ---------------------------------------------------------------------------------------------------
class Struct:
    """A named syntax structure bound to its record class. ``path`` names it in error syntax paths."""

    def __init__(self, name: str, items: list, cls, title: str = "", path: str | None = None):
        self.name, self.items, self.cls, self.title = name, items, cls, title
        self.path = path or name.replace("()", "")
        self.fields = _collect(items)
        self.declared = frozenset(self.fields)


def syntax(name: str, items: list, title: str = "", path: str | None = None):
    """Class decorator: make ``cls`` a dataclass with one field per syntax element of ``items``
    (default ``None``) and attach the declaration as ``cls.SYNTAX``."""

    def deco(cls):
        names = _collect(items)
        own = dict(cls.__dict__.get("__annotations__", {}))
        ann = {}
        for n in names:
            ann[n] = own.pop(n, "Any")
            if n in cls.__dict__ and isinstance(cls.__dict__[n], property):
                raise TypeError(f"{cls.__name__}.{n} is both a syntax element and a property")
            setattr(cls, n, None)
        ann.update(own)
        cls.__annotations__ = ann
        cls = dataclasses.dataclass(cls, repr=False)
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = _record_repr
        if not hasattr(cls, "to_dict"):
            cls.to_dict = _to_dict
        cls.SYNTAX = Struct(name, items, cls, title, path)
        return cls

    return deco


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------
def _located(exc: NNCError, byte_offset: int | None, path: str):
    if isinstance(exc, BitstreamError):
        return exc.located(byte_offset=byte_offset, syntax_path=path)
    if getattr(exc, "syntax_path", None) is None:
        exc.syntax_path = path
        exc.byte_offset = byte_offset
    return exc


def _count(expr: Expr, scope: Scope, path: str, r: BitReader | None, min_bits: int,
           element_bytes: int = 0) -> int:
    try:
        n = expr(scope)
    except (NameError, TypeError, ValueError, ArithmeticError) as exc:
        raise _count_error(expr, exc, path) from None
    return _checked_count(n, expr, path, r, min_bits, element_bytes,
                          scope.get(BUDGET_KEY) if r is not None and element_bytes else None)


def _count_error(expr, exc, path: str) -> BitstreamError:
    return BitstreamError(f"cannot evaluate count '{expr}': {exc}", syntax_path=path)


def _checked_count(n, expr, path: str, r: BitReader | None, min_bits: int, element_bytes: int, budget) -> int:
    """A count read from the data, checked against the bits left and charged to ``budget`` (if any) before a
    single element is read."""
    n = max(0, int(n))
    if r is not None and n * min_bits > r.bits_left():
        raise TruncatedBitstreamError(
            f"count {n} from '{expr}' needs at least {n * min_bits} bits but only {r.bits_left()} remain",
            byte_offset=r.pos >> 3, syntax_path=path)
    if r is not None and n and element_bytes and budget is not None:
        budget.charge(n * element_bytes, f"{n} elements of {path.rsplit('.', 1)[-1]}", r.pos >> 3, path)
    return n


#: Scope name under which the parser hands its memory account (an object with ``charge(nbytes, what,
#: byte_offset, path)``) and its limits (``LIMITS_KEY``, an object with DecoderConfig's attributes) to the syntax
#: reader. Absent when writing, so the checks below never apply to the writer.
BUDGET_KEY = "__nnc_budget__"
LIMITS_KEY = "__nnc_limits__"


def over_limit(limit: str, value_name: str, offset: int = 0) -> Expr:
    """A condition for :class:`Fail`: ``value_name + offset`` exceeds the reader's ``limit`` (a DecoderConfig
    attribute such as ``max_codebook_size``). False when no limits are given (e.g. when writing)."""

    def cond(scope):
        lim = scope.get(LIMITS_KEY)
        if lim is None:
            return False
        v = scope.get(value_name)
        return v is not None and v + offset > getattr(lim, limit)

    e = Expr(cond, f"{value_name}{f' + {offset}' if offset else ''} > {limit}")
    e.limit = (limit, value_name, offset)
    return e


_BULK_MIN = 64   # arrays of exp-Golomb codes at least this long are read with BitReader.ue_array


def _cond(expr: Expr, scope: Scope, path: str) -> bool:
    try:
        return bool(expr(scope))
    except (NameError, TypeError, ValueError, ArithmeticError) as exc:
        raise _cond_error(expr, exc, path) from None


def _cond_error(expr, exc, path: str) -> BitstreamError:
    return BitstreamError(f"cannot evaluate condition '{expr}': {exc}", syntax_path=path)


#: Whether :func:`read_struct` uses the structure's compiled reader (:mod:`nnc.bitstream.compiled`) or walks
#: the declaration item by item. Both give the same records and the same errors; the interpreter is kept as the
#: reference the compiled readers are tested against (and for declarations the compiler does not handle).
USE_COMPILED = True
_READERS: dict = {}
_COMPILER = None        # nnc.bitstream.compiled.compile_struct, installed when that module is imported


def read_struct(cls, r: BitReader, parent: Scope | None, path: str):
    """Read one instance of the structure ``cls`` (decorated with :func:`syntax`)."""
    if USE_COMPILED and _COMPILER is not None:
        fn = _READERS.get(cls)
        if fn is None:
            fn = _READERS[cls] = _COMPILER(cls)
        return fn(r, parent, path)
    return interpret_struct(cls, r, parent, path)


def interpret_struct(cls, r: BitReader, parent: Scope | None, path: str):
    """:func:`read_struct` by walking the declaration item by item (the reference for the compiled readers)."""
    st: Struct = cls.SYNTAX
    values: dict = {}
    scope = Scope(values, parent, st.declared)
    _read_items(st.items, r, scope, path)
    return cls(**values)


def _read_items(items, r: BitReader, scope: Scope, path: str) -> None:
    values = scope.values
    for it in items:
        t = type(it)
        if it.when is not None and t is not If and t is not Fail and not _cond(it.when, scope, path):
            continue
        if t is Field:
            start = r.pos
            try:
                values[it.name] = it.desc.read(r, scope)
            except BitstreamError as exc:
                raise exc.located(byte_offset=start >> 3, syntax_path=f"{path}.{it.name}") from None
        elif t is If:
            _read_items(it.items if _cond(it.when, scope, path) else it.orelse, r, scope, path)
        elif t is Array:
            p = f"{path}.{it.name}"
            n = _count(it.count, scope, p, r, it.desc.min_bits, it.desc.element_bytes)
            values[it.name] = _read_array(it, r, n, p, scope)
        elif t is Loop:
            p = f"{path}.{it.name}"
            values[it.name] = _read_loop(it, r, scope, p)
        elif t is Sub:
            values[it.name] = read_struct(it.cls, r, scope, f"{path}.{it.name}")
        elif t is Align:
            start = r.pos
            try:
                r.byte_alignment()
            except BitstreamError as exc:
                raise exc.located(byte_offset=start >> 3, syntax_path=f"{path}.byte_alignment()") from None
        elif t is Fail:
            if _cond(it.when, scope, path):
                raise _fail(it, r, scope, path)
        else:  # pragma: no cover - declaration error
            raise TypeError(f"unknown syntax item {it!r}")


class ArrayList(list):
    """A list of ints read in bulk that keeps the int64 array it was read as (``array``; ``None`` once the list
    is changed), so that code wanting an array (e.g. :meth:`nnc.bitstream.Codebook.values_array`) does not
    convert the list back element by element. Otherwise a plain list (equal to one, JSON-serialisable)."""

    __slots__ = ("array",)

    def __init__(self, arr=()):
        if isinstance(arr, np.ndarray):
            super().__init__(arr.tolist())
            self.array = arr
        else:
            super().__init__(arr)
            self.array = None


def _dropping_array(name: str):
    base = getattr(list, name)

    def method(self, *args, **kwargs):
        self.array = None
        return base(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
              "reverse", "sort", "clear"):
    setattr(ArrayList, _name, _dropping_array(_name))


def as_int64(values) -> np.ndarray:
    """``values`` (a list of ints, or an :class:`ArrayList`) as an int64 array: the one it was read as when
    there is one."""
    arr = getattr(values, "array", None)
    return arr if arr is not None else np.asarray(values, dtype=np.int64)


def _read_array(it: Array, r: BitReader, n: int, p: str, scope: Scope | None) -> list:
    """The ``n`` elements of the array ``it`` (``scope`` is only used by descriptors that evaluate expressions)."""
    if n >= _BULK_MIN and isinstance(it.desc, UE):
        try:
            vals = r.ue_array(n, it.desc._k(scope))
        except BitstreamError as exc:
            raise exc.located(syntax_path=p) from None
        if isinstance(it.desc, IE):
            vals = np.where(vals & 1, (vals + 1) >> 1, -(vals >> 1))
        return ArrayList(vals)
    if n >= _BULK_MIN and isinstance(it.desc, ST):
        try:
            return r.st_array(n, it.desc.raw)
        except BitstreamError as exc:
            raise exc.located(syntax_path=p) from None
    out = []
    read = it.desc.read
    for j in range(n):
        start = r.pos
        try:
            out.append(read(r, scope))
        except BitstreamError as exc:
            raise exc.located(byte_offset=start >> 3, syntax_path=f"{p}[{j}]") from None
    return out


def _read_loop(it: Loop, r: BitReader, scope: Scope, p: str) -> list:
    """The records of the loop ``it`` (its ``when`` already holds)."""
    n = _count(it.count, scope, p, r, it.min_bits, it.record_bytes)
    if it.fast is not None and n >= _BULK_MIN:
        return it.fast(r, scope, n, p)
    out: list = []
    for j in range(n):
        sv: dict = {}
        _read_items(it.items, r, Scope(sv, scope, it.declared, j, out), f"{p}[{j}]")
        out.append(it.cls(**sv))
    return out


def _fail(it: Fail, r: BitReader, scope: Scope, path: str) -> NNCError:
    """The error a :class:`Fail` whose condition holds raises (at the reader's position)."""
    msg = it.message.format_map(_FmtScope(scope))
    where = f"{path}.{it.at}" if it.at else path
    if issubclass(it.exc, BitstreamError):
        return it.exc(msg, byte_offset=r.pos >> 3, syntax_path=where, code=it.code)
    return _located(it.exc(msg), r.pos >> 3, where)


class _FmtScope:
    def __init__(self, scope):
        self.scope = scope

    def __getitem__(self, key):
        return self.scope.get(key)


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------
def _get(obj, name):
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def write_struct(obj, w: BitWriter, parent: Scope | None, path: str, cls=None) -> None:
    """Write ``obj`` (an instance of a :func:`syntax` class, or a dict of its fields)."""
    cls = cls or type(obj)
    st: Struct = cls.SYNTAX
    scope = Scope({}, parent, st.declared)
    _write_items(st.items, obj, w, scope, path)


def _coerce(cls, item):
    if isinstance(item, cls):
        return item
    if isinstance(item, dict):
        return cls(**item)
    if isinstance(item, (tuple, list)):
        return cls(*item)
    return item


def _write_items(items, obj, w: BitWriter, scope: Scope, path: str) -> None:
    values = scope.values
    for it in items:
        t = type(it)
        if it.when is not None and t is not If and t is not Fail and not _cond(it.when, scope, path):
            continue
        if t is Field:
            v = _get(obj, it.name)
            if v is None:
                v = it.default
            if v is None:
                raise ConfigError(f"{path}.{it.name}: value required (condition holds) but missing")
            try:
                it.desc.write(w, v, scope)
            except ConfigError as exc:
                raise ConfigError(f"{path}.{it.name}: {exc}") from None
            values[it.name] = v
        elif t is If:
            _write_items(it.items if _cond(it.when, scope, path) else it.orelse, obj, w, scope, path)
        elif t is Array:
            p = f"{path}.{it.name}"
            n = _count(it.count, scope, p, None, 0)
            seq = list(_get(obj, it.name) or ())
            if len(seq) != n:
                raise ConfigError(f"{p}: {len(seq)} element(s) given but '{it.count}' = {n}")
            for j, v in enumerate(seq):
                try:
                    it.desc.write(w, v, scope)
                except ConfigError as exc:
                    raise ConfigError(f"{p}[{j}]: {exc}") from None
            values[it.name] = seq
        elif t is Loop:
            p = f"{path}.{it.name}"
            n = _count(it.count, scope, p, None, 0)
            seq = [_coerce(it.cls, x) for x in (_get(obj, it.name) or ())]
            if len(seq) != n:
                raise ConfigError(f"{p}: {len(seq)} record(s) given but '{it.count}' = {n}")
            done: list = []
            for j, rec in enumerate(seq):
                _write_items(it.items, rec, w, Scope({}, scope, it.declared, j, done), f"{p}[{j}]")
                done.append(rec)
            values[it.name] = seq
        elif t is Sub:
            v = _get(obj, it.name)
            if v is None:
                raise ConfigError(f"{path}.{it.name}: structure required (condition holds) but missing")
            v = _coerce(it.cls, v)
            write_struct(v, w, scope, f"{path}.{it.name}", it.cls)
            values[it.name] = v
        elif t is Align:
            w.byte_alignment()
        elif t is Fail:
            if _cond(it.when, scope, path):
                msg = f"{path}: " + it.message.format_map(_FmtScope(scope))
                if issubclass(it.exc, BitstreamError):
                    raise ConfigError(msg)
                raise it.exc(msg)
        else:  # pragma: no cover
            raise TypeError(f"unknown syntax item {it!r}")


# ---------------------------------------------------------------------------------------------------
# Documentation
# ---------------------------------------------------------------------------------------------------
def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def struct_markdown(cls, heading_level: int = 3) -> str:
    """A Markdown table (syntax element | descriptor | condition) for one structure."""
    st: Struct = cls.SYNTAX
    rows: list[tuple[str, str, str]] = []

    def conj(conds):
        return " and ".join(f"({c})" if (" or " in c and len(conds) > 1) else c for c in conds) or ""

    def walk(items, conds, depth):
        ind = "&nbsp;&nbsp;" * depth
        for it in items:
            c = conds + ([str(it.when)] if it.when is not None and not isinstance(it, (If, Fail)) else [])
            if isinstance(it, Field):
                name = f"`{it.name}`"
                rows.append((ind + name, it.desc.doc(), conj(c) + (f" — {it.note}" if it.note else "")))
            elif isinstance(it, Array):
                rows.append((ind + f"`{it.name}[j]`, j < {it.count}", it.desc.doc(),
                             conj(c) + (f" — {it.note}" if it.note else "")))
            elif isinstance(it, Loop):
                rows.append((ind + f"**for** i < {it.count}: `{it.name}[i]` =", "",
                             conj(c) + (f" — {it.note}" if it.note else "")))
                walk(it.items, c, depth + 1)
            elif isinstance(it, If):
                walk(it.items, conds + [str(it.when)], depth)
                if it.orelse:
                    walk(it.orelse, conds + [f"not ({it.when})"], depth)
            elif isinstance(it, Sub):
                rows.append((ind + f"`{it.name}` = {it.cls.SYNTAX.name}", "(structure)",
                             conj(c) + (f" — {it.note}" if it.note else "")))
            elif isinstance(it, Align):
                rows.append((ind + "byte_alignment()", "u(1)=1, 0-bits to boundary", conj(c)))
            elif isinstance(it, Fail):
                kind = "unsupported" if issubclass(it.exc, UnsupportedFeatureError) else "error"
                msg = re.sub(r"\{__nnc_limits__\.(\w+)\}", r"<\1>", it.message)
                msg = re.sub(r"\{(\w+)\}", r"<\1>", msg)
                rows.append((ind + f"*{kind}*: {msg}", "", conj(conds + [str(it.when)])))

    walk(st.items, [], 0)
    out = [f"{'#' * heading_level} `{st.name}`" + (f" — {st.title}" if st.title else ""), "",
           "| Syntax element | Descriptor | Condition |", "|---|---|---|"]
    out += [f"| {_md_escape(a)} | {_md_escape(b)} | {_md_escape(c)} |" for a, b, c in rows]
    return "\n".join(out) + "\n"
