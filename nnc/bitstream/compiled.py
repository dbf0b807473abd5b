"""Compiled readers: each syntax declaration of :mod:`nnc.bitstream.syntax` turned into one straight-line
Python function, generated once (``compile``/``exec``) from the same item list the interpreter walks.

The declaration stays the single source of truth (the writer and the documentation keep walking it); this
module only removes the interpreter's per-item work on the reading side: every condition and count is
Python code over local variables instead of an ``eval`` through a chain of scopes, runs of fixed-width fields
are read with one slice of the buffer, and nested structures are inlined. A compiled reader returns the same
record and raises the same error (type, code, message, byte offset, syntax path) as
:func:`nnc.bitstream.syntax.interpret_struct`, with the same limit and budget checks at the same points;
``tests/test_compiled_syntax.py`` compares the two on every conformance vector and on mutated and truncated
inputs.

Name lookup is resolved when the reader is generated: a name declared by the structure being read (or by
one it is nested in) is a local variable; a registered name (:func:`nnc.bitstream.syntax.register_names`,
enumeration members and helpers) that no enclosing structure declares is a constant; anything else (the
caller's context, e.g. ``general_profile_idc``) is looked up at run time in the parent scope, then the
registered names, then the builtins, exactly as ``eval`` does. The parent scopes handed to a reader must not
define registered names (nnc's never do). Loops, callable conditions other than :func:`over_limit` and
descriptors other than the built-in ones are handed to the interpreter's own code with a :class:`Scope` built
from the local variables, so they behave as they do there.
"""
from __future__ import annotations

import ast
import dataclasses

from ..errors import BitstreamError
from . import syntax as S
from .bits import MAX_UE_PREFIX_BITS
from .syntax import (FLT, IE, ST, UE, Align, Array, Fail, Field, I, If, Loop, RestBytes, Scope, Sub, U,
                     scope_value)

__all__ = ["compile_struct", "compile_items", "source_of"]

_EXC = (NameError, TypeError, ValueError, ArithmeticError)
_MISSING = object()
_SIMPLE_NODES = (ast.Expression, ast.Name, ast.Constant, ast.BinOp, ast.BoolOp, ast.Compare, ast.UnaryOp,
                 ast.Call, ast.Attribute, ast.Subscript, ast.IfExp, ast.Load, ast.operator, ast.boolop,
                 ast.cmpop, ast.unaryop, ast.keyword, ast.Tuple, ast.List, ast.Slice)
_MAX_INLINE_DEPTH = 6
_SOURCES: dict = {}


def _lookup(scope, name: str):
    """``eval``'s lookup of a name no enclosing declaration provides: the parent scopes, then the registered
    names, then the builtins the expressions may use."""
    if type(scope) is Scope:      # Scope.__getitem__ without its KeyError
        v = scope_value(scope, name, _MISSING)
        if v is not _MISSING:
            return v
    elif scope is not None:
        try:
            return scope[name]
        except KeyError:
            pass
    v = S._NAMES.get(name, _MISSING)
    if v is _MISSING:
        v = S._NAMES["__builtins__"].get(name, _MISSING)
        if v is _MISSING:
            raise NameError(f"name {name!r} is not defined")
    return v


def _sget(scope, name: str):
    """``Scope.get`` on a parent scope that may be ``None``."""
    if type(scope) is Scope:      # Scope.get without its KeyError
        v = scope_value(scope, name, _MISSING)
        return None if v is _MISSING else v
    return None if scope is None else scope.get(name)


def _over(lim, v, offset: int, attr: str) -> bool:
    """:func:`nnc.bitstream.syntax.over_limit`'s condition on already looked-up values."""
    if lim is None:
        return False
    return v is not None and v + offset > getattr(lim, attr)


def _fast_new(cls):
    """Whether records of ``cls`` can be made by filling ``__dict__`` (a plain dataclass whose fields are
    exactly the syntax elements, no ``__post_init__``, no slots)."""
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__") or "__slots__" in cls.__dict__:
        return False
    names = [f.name for f in dataclasses.fields(cls)]
    return names == list(cls.SYNTAX.fields) and all(f.init for f in dataclasses.fields(cls))


class _Frame:
    def __init__(self, fields: list, declared: frozenset, prefix: str, path: str, cls):
        self.vars = {n: f"{prefix}_{i}" for i, n in enumerate(fields)}
        self.declared = declared
        self.path = path          # Python expression of the syntax path
        self.cls = cls


class _Gen:
    def __init__(self, name: str):
        self.name = name
        self.lines: list[str] = []
        self.ns: dict = {
            "_BE": BitstreamError, "_EXC": _EXC, "_fb": int.from_bytes, "_Scope": Scope, "_lookup": _lookup,
            "_sget": _sget, "_over": _over, "_cond_error": S._cond_error, "_count_error": S._count_error,
            "_checked_count": S._checked_count, "_read_array": S._read_array, "_read_loop": S._read_loop,
            "_fail": S._fail, "_read_struct": S.read_struct, "_new": object.__new__,
            "BUDGET_KEY": S.BUDGET_KEY, "LIMITS_KEY": S.LIMITS_KEY, "_M": _MISSING, "_NOVALS": {},
        }
        self.frames: list[_Frame] = []
        self.nconst = 0
        self.nframe = 0

    # -- helpers ------------------------------------------------------------------------------------
    def const(self, obj, hint: str = "k") -> str:
        name = f"_{hint}{self.nconst}"
        self.nconst += 1
        self.ns[name] = obj
        return name

    def emit(self, ind: int, line: str) -> None:
        self.lines.append("    " * ind + line)

    def resolve(self, name: str) -> str:
        for f in reversed(self.frames):
            if name in f.declared:
                return f.vars[name]
        if name in S._NAMES and name != "__builtins__":
            v = S._NAMES[name]
            if isinstance(v, int) and not isinstance(v, bool):
                # an IntEnum/IntFlag member: its int value gives the same comparisons and counts without the
                # enum machinery (an int & IntFlag is built as a new IntFlag)
                return repr(int(v))
            return self.const(v, "n")
        return f"(_pv if (_pv := pvals.get({name!r}, _M)) is not _M else _lookup(parent, {name!r}))"

    def resolve_get(self, name: str) -> str:
        """Python code for ``scope.get(name)``."""
        for f in reversed(self.frames):
            if name in f.declared:
                return f.vars[name]
        return self.parent_get(repr(name))

    @staticmethod
    def parent_get(key: str) -> str:
        """Python code for ``parent.get(key)``: the parent's own values first (where the scope chain looks
        first), the chain only for a name they lack."""
        return f"(_pv if (_pv := pvals.get({key}, _M)) is not _M else _sget(parent, {key}))"

    def chain(self) -> str:
        """Python code building the interpreter's scope chain from the local variables."""
        e = "parent"
        for f in self.frames:
            vals = ", ".join(f"{n!r}: {v}" for n, v in f.vars.items())
            e = f"_Scope({{{vals}}}, {e}, {self.const(f.declared, 'd')})"
        return e

    def expr(self, x) -> str:
        """Python code evaluating the Expr ``x`` (exceptions propagate as they would from ``x(scope)``)."""
        if x.fn is not None:
            if x.limit is not None:
                attr, value_name, offset = x.limit
                return (f"_over({self.parent_get('LIMITS_KEY')}, {self.resolve_get(value_name)}, {int(offset)}, "
                        f"{attr!r})")
            return f"{self.const(x)}({self.chain()})"
        tree = ast.parse(x.src, mode="eval")
        if not all(isinstance(n, _SIMPLE_NODES) for n in ast.walk(tree)):
            return f"{self.const(x)}({self.chain()})"
        gen = self

        class _Rename(ast.NodeTransformer):
            def visit_Name(self, node):  # noqa: N802 - ast API
                return ast.copy_location(ast.parse(gen.resolve(node.id), mode="eval").body, node)

        return "(" + ast.unparse(_Rename().visit(tree)) + ")"

    def _safe(self, x) -> bool:
        """Whether evaluating ``x`` cannot raise: only ==, !=, and, or, not over elements of the enclosing
        structures (ints, strings, lists, records or None, as read) and constants."""
        if x.fn is not None:
            return False
        tree = ast.parse(x.src, mode="eval")
        for n in ast.walk(tree):
            if isinstance(n, ast.Compare):
                if not all(isinstance(op, (ast.Eq, ast.NotEq)) for op in n.ops):
                    return False
            elif isinstance(n, ast.Name):
                if not any(n.id in f.declared for f in self.frames) and not (
                        isinstance(S._NAMES.get(n.id), int) and n.id != "__builtins__"):
                    return False
            elif not isinstance(n, (ast.Expression, ast.Constant, ast.BoolOp, ast.UnaryOp, ast.Load, ast.boolop,
                                    ast.Not, ast.Eq, ast.NotEq)):
                return False
            if isinstance(n, ast.UnaryOp) and not isinstance(n.op, ast.Not):
                return False
        return True

    def cond_block(self, ind: int, x, path: str) -> int:
        """Emit ``if <x>:`` with the interpreter's handling of a condition that cannot be evaluated; returns
        the indentation of the guarded block."""
        if self._safe(x):
            self.emit(ind, f"if {self.expr(x)}:")
            return ind + 1
        self.guarded(ind, "_c = True if {} else False", x, "_cond_error", path)
        self.emit(ind, "if _c:")
        return ind + 1

    def guarded(self, ind: int, assign: str, x, error: str, path: str) -> None:
        """Emit ``assign`` (a template for the code of the Expr ``x``) inside a try whose failure raises what
        ``error`` (``_cond_error`` or ``_count_error``) builds, located at the read position and ``path``."""
        self.emit(ind, "try:")
        self.emit(ind + 1, assign.format(self.expr(x)))
        self.emit(ind, "except _EXC as _e:")
        self.emit(ind + 1, "r.pos = pos")
        self.emit(ind + 1, f"raise {error}({self.const(x)}, _e, {path}) from None")

    # -- items --------------------------------------------------------------------------------------
    def items(self, ind: int, items: list) -> None:
        start = len(self.lines)
        i = 0
        while i < len(items):
            it = items[i]
            if _fixed(it):
                j = i
                while j < len(items) and _fixed(items[j]):
                    j += 1
                if j - i > 1:
                    self.fixed_run(ind, items[i:j])
                    i = j
                    continue
            self.item(ind, it)
            i += 1
        if len(self.lines) == start:
            self.emit(ind, "pass")

    def item(self, ind: int, it) -> None:
        f = self.frames[-1]
        t = type(it)
        if it.when is not None and t is not If and t is not Fail:
            ind = self.cond_block(ind, it.when, f.path)
        if t is Field:
            self.field(ind, it)
        elif t is If:
            inner = self.cond_block(ind, it.when, f.path)
            self.items(inner, it.items)
            if it.orelse:
                self.emit(ind, "else:")
                self.items(ind + 1, it.orelse)
        elif t is Array:
            self.array(ind, it)
        elif t is Loop:
            self.emit(ind, "r.pos = pos")
            self.emit(ind, f"{f.vars[it.name]} = _read_loop({self.const(it, 'it')}, r, {self.chain()}, "
                           f"{f.path} + {'.' + it.name!r})")
            self.emit(ind, "pos = r.pos")
        elif t is Sub:
            self.sub(ind, it)
        elif t is Align:      # the reference reads and ignores one bit, then skips to the byte boundary
            self.emit(ind, "if pos + 1 > end:")
            self.emit(ind + 1, "r.pos = pos")
            self.emit(ind + 1, f"raise r._truncated('u(1)', 1).located(byte_offset=pos >> 3, syntax_path={f.path} + "
                               f"'.byte_alignment()') from None")
            self.emit(ind, "pos = (pos + 8) & ~7")
        elif t is Fail:
            inner = self.cond_block(ind, it.when, f.path)
            self.emit(inner, "r.pos = pos")
            self.emit(inner, f"raise _fail({self.const(it, 'it')}, r, {self.chain()}, {f.path})")
        else:  # pragma: no cover - declaration error
            raise TypeError(f"unknown syntax item {it!r}")

    def fixed_run(self, ind: int, run: list) -> None:
        """Consecutive unconditional u(n)/i(n) fields: one read of their total width when it fits the data,
        else field by field (which raises the error of the first field that does not fit)."""
        f = self.frames[-1]
        total = sum(it.desc.n for it in run)
        self.emit(ind, f"_s = pos + {total}")
        self.emit(ind, "if _s <= end:")
        self.emit(ind + 1, "_w = _fb(buf[pos >> 3:(_s + 7) >> 3], 'big') >> (-_s & 7)")
        shift = total
        for it in run:
            n = it.desc.n
            shift -= n
            v = f.vars[it.name]
            self.emit(ind + 1, f"{v} = (_w >> {shift}) & {(1 << n) - 1}" if shift else f"{v} = _w & {(1 << n) - 1}")
            if type(it.desc) is I:
                self.emit(ind + 1, f"if {v} >> {n - 1}:")
                self.emit(ind + 2, f"{v} -= {1 << n}")
        self.emit(ind + 1, "pos = _s")
        self.emit(ind, "else:")
        for it in run:
            self.field(ind + 1, it)

    def field(self, ind: int, it: Field) -> None:
        f = self.frames[-1]
        v = f.vars[it.name]
        d = it.desc
        td = type(d)
        where = f"{f.path} + {'.' + it.name!r}"
        if td is U or td is I:
            n = d.n
            if n <= 0:
                self.emit(ind, f"{v} = 0")
                return
            self.emit(ind, f"_s = pos + {n}")
            self.emit(ind, "if _s > end:")
            self.emit(ind + 1, "r.pos = pos")
            self.emit(ind + 1, f"raise r._truncated({f'u({n})'!r}, {n}).located(byte_offset=pos >> 3, "
                               f"syntax_path={where}) from None")
            self.emit(ind, f"{v} = (_fb(buf[pos >> 3:(_s + 7) >> 3], 'big') >> (-_s & 7)) & {(1 << n) - 1}")
            self.emit(ind, "pos = _s")
            if td is I:
                self.emit(ind, f"if {v} >> {n - 1}:")
                self.emit(ind + 1, f"{v} -= {1 << n}")
            return
        if (td is IE or td is UE) and isinstance(d.k, int):
            self.ue(ind, v, d.k, td is IE, where)
            return
        if td is IE or td is UE:
            call = f"r.{'ie' if td is IE else 'ue'}({self.expr(d.k)})"
        elif td is ST:
            call = "r.st_bytes()" if d.raw else "r.st()"
        elif td is FLT:
            call = "r.flt()"
        elif td is RestBytes:
            call = "r.rest_bytes()"
        else:
            call = f"{self.const(d, 'desc')}.read(r, {self.chain()})"
        self.read_located(ind, v, call, where)

    def read_located(self, ind: int, v: str, call: str, where: str) -> None:
        """Emit ``v = call`` by the BitReader at the read position, its error located there and at ``where``."""
        self.emit(ind, "r.pos = pos")
        self.emit(ind, "try:")
        self.emit(ind + 1, f"{v} = {call}")
        self.emit(ind, "except _BE as _e:")
        self.emit(ind + 1, f"raise _e.located(byte_offset=pos >> 3, syntax_path={where}) from None")
        self.emit(ind, "pos = r.pos")

    def ue(self, ind: int, v: str, k: int, signed: bool, where: str) -> None:
        """ue(k)/ie(k) with a constant k: decoded from the next (at most) 64 bits of the unit when the whole
        code lies in them, else by BitReader.ue (which also raises the errors)."""
        self.emit(ind, "_a = end - pos")
        self.emit(ind, "if _a > 64:")
        self.emit(ind + 1, "_a = 64")
        self.emit(ind, "_s = pos + _a")
        self.emit(ind, "_x = (_fb(buf[pos >> 3:(_s + 7) >> 3], 'big') >> (-_s & 7)) & ((1 << _a) - 1)")
        self.emit(ind, "_z = _a - _x.bit_length()")
        self.emit(ind, f"_l = 2 * _z + {1 + k}")
        self.emit(ind, f"if _x and _z <= {MAX_UE_PREFIX_BITS} and _l <= _a:")
        self.emit(ind + 1, f"{v} = ((((1 << _z) - 1) << {k}) + ((_x >> (_a - _l)) & ((1 << (_z + {k})) - 1)))")
        self.emit(ind + 1, "pos += _l")
        if signed:
            self.emit(ind + 1, f"{v} = ({v} + 1) >> 1 if {v} & 1 else -({v} >> 1)")
        self.emit(ind, "else:")
        self.read_located(ind + 1, v, f"r.{'ie' if signed else 'ue'}({k})", where)

    def array(self, ind: int, it: Array) -> None:
        f = self.frames[-1]
        d = it.desc
        self.emit(ind, f"_p = {f.path} + {'.' + it.name!r}")
        self.guarded(ind, "_n = {}", it.count, "_count_error", "_p")
        self.emit(ind, "r.pos = pos")
        budget = self.parent_get("BUDGET_KEY") if d.element_bytes else "None"
        self.emit(ind, f"_n = _checked_count(_n, {self.const(it.count)}, _p, r, {d.min_bits}, {d.element_bytes}, "
                       f"{budget})")
        plain = type(d) in (U, I, ST, FLT, RestBytes) or (type(d) in (UE, IE) and isinstance(d.k, int))
        call = f"_read_array({self.const(it, 'it')}, r, _n, _p, {'None' if plain else self.chain()})"
        if type(d) in (UE, IE) and isinstance(d.k, int):
            # short arrays of exp-Golomb codes (tensor dimensions): element by element, inline
            self.emit(ind, f"if _n < {S._BULK_MIN}:")
            self.emit(ind + 1, "_arr = []")
            self.emit(ind + 1, "for _j in range(_n):")
            self.ue(ind + 2, "_v", d.k, type(d) is IE, "f'{_p}[{_j}]'")
            self.emit(ind + 2, "_arr.append(_v)")
            self.emit(ind + 1, f"{f.vars[it.name]} = _arr")
            self.emit(ind, "else:")
            self.emit(ind + 1, f"{f.vars[it.name]} = {call}")
            self.emit(ind + 1, "pos = r.pos")
        else:
            self.emit(ind, f"{f.vars[it.name]} = {call}")
            self.emit(ind, "pos = r.pos")

    def sub(self, ind: int, it: Sub) -> None:
        f = self.frames[-1]
        st = it.cls.SYNTAX
        path = f"({f.path} + {'.' + it.name!r})"
        if len(self.frames) >= _MAX_INLINE_DEPTH or any(x.cls is it.cls for x in self.frames):
            self.emit(ind, "r.pos = pos")
            self.emit(ind, f"{f.vars[it.name]} = _read_struct({self.const(it.cls, 'cls')}, r, {self.chain()}, "
                           f"{path})")
            self.emit(ind, "pos = r.pos")
            return
        self.push(st, path, it.cls)
        self.body(ind, st.items)
        self.emit(ind, f"{f.vars[it.name]} = {self.record(it.cls)}")
        self.frames.pop()

    # -- structure ------------------------------------------------------------------------------------
    def push(self, st, path: str, cls) -> _Frame:
        fr = _Frame(list(st.fields), st.declared, f"v{self.nframe}", path, cls)
        self.nframe += 1
        self.frames.append(fr)
        return fr

    def body(self, ind: int, items: list, preset=()) -> None:
        fr = self.frames[-1]
        unset = [v for n, v in fr.vars.items() if n not in preset]
        if unset:
            self.emit(ind, " = ".join(unset) + " = None")
        self.items(ind, items)

    def record(self, cls) -> str:
        fr = self.frames[-1]
        c = self.const(cls, "cls")
        vals = ", ".join(f"{n!r}: {v}" for n, v in fr.vars.items())
        if _fast_new(cls):
            # what cls(**values) makes, without the keyword-argument __init__
            return f"_mk({c}, {{{vals}}})"
        return f"{c}(**{{{vals}}})"

    def finish(self, preset=()) -> str:
        fr = self.frames[0]
        args = "".join(f", {fr.vars[n]}" for n in preset)
        head = [f"def {self.name}(r, parent, path{args}):",
                "    buf = r.buf", "    end = r.end", "    pos = r.pos",
                "    pvals = parent.values if type(parent) is _Scope else _NOVALS"]
        tail = ["    r.pos = pos", f"    return {self.record(fr.cls)}"]
        return "\n".join(head + self.lines + tail) + "\n"


def _mk(cls, values: dict):
    obj = object.__new__(cls)
    obj.__dict__ = values
    return obj


def _fixed(it) -> bool:
    return type(it) is Field and it.when is None and type(it.desc) in (U, I) and it.desc.n > 0


def _build(cls, items, preset, name):
    st = cls.SYNTAX
    g = _Gen(name)
    g.ns["_mk"] = _mk
    g.push(st, "path", cls)
    g.body(1, items, preset)
    src = g.finish(preset)
    code = compile(src, f"<nnc compiled reader {st.name}>", "exec")
    exec(code, g.ns)  # noqa: S102 - source generated above from nnc's own declarations
    fn = g.ns[name]
    _SOURCES[fn] = src
    return fn


def compile_struct(cls):
    """The compiled reader ``fn(r, parent, path) -> record`` of the structure ``cls`` (see
    :func:`nnc.bitstream.syntax.read_struct`)."""
    return _build(cls, cls.SYNTAX.items, (), "read_" + cls.__name__)


def compile_items(cls, items: list, preset: tuple):
    """A reader ``fn(r, parent, path, *preset_values) -> record`` of ``cls`` that reads only ``items`` (a tail
    of its declaration) and takes the elements named in ``preset`` (read before, by the caller) as arguments."""
    return _build(cls, items, tuple(preset), "read_" + cls.__name__ + "_tail")


def source_of(fn) -> str:
    """The generated Python source of a compiled reader (for debugging and documentation)."""
    return _SOURCES[fn]


S._COMPILER = compile_struct      # read_struct uses the compiled readers from now on
