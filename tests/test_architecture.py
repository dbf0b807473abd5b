"""The layer rules of docs/architecture.md, enforced on the source: which package may import which.

Every ``import`` / ``from ... import`` in nnc/ is read from the syntax tree (function-local ones included, so a
cycle cannot hide inside a function) and checked against the table below.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "nnc"


def _modules():
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        yield name, package, p


def _imports(package: str, path: Path):
    """(imported module, imported names, line, inside a function) for every import of ``path``."""
    tree = ast.parse(path.read_text())
    local = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno, id(node) in local
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            yield target, names, node.lineno, id(node) in local
            for n in names:  # "from . import codec" imports the module nnc.codec
                yield f"{target}.{n}", [], node.lineno, id(node) in local


MODULES = list(_modules())
EDGES = [(name, target, names, line, local, path)
         for name, package, path in MODULES for target, names, line, local in _imports(package, path)]


def _within(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


# (importer prefix, forbidden import prefixes): the lower layers know nothing of the ones above them
FORBIDDEN = [
    ("nnc.errors", ["nnc"]),
    ("nnc.deepcabac", ["nnc.bitstream", "nnc.coding", "nnc.codec", "nnc.config", "nnc.converters", "nnc.fl",
                       "nnc.conformance", "nnc.describe", "nnc.cli", "nnc.incremental"]),
    ("nnc.bitstream", ["nnc.deepcabac", "nnc.coding", "nnc.codec", "nnc.converters", "nnc.fl",
                       "nnc.conformance", "nnc.describe", "nnc.cli", "nnc.incremental"]),
    ("nnc.coding", ["nnc.codec", "nnc.converters", "nnc.fl", "nnc.conformance", "nnc.describe", "nnc.cli",
                    "nnc.incremental", "nnc.blocks"]),
    ("nnc.codec", ["nnc.converters", "nnc.fl", "nnc.conformance", "nnc.describe", "nnc.cli", "nnc.incremental",
                   "nnc.blocks"]),
    ("nnc.incremental", ["nnc.converters", "nnc.fl", "nnc.conformance", "nnc.describe", "nnc.cli"]),
    ("nnc.conformance", ["nnc.converters", "nnc.fl", "nnc.cli"]),
    ("nnc.describe", ["nnc.converters", "nnc.fl", "nnc.cli", "nnc.conformance"]),
    ("nnc.converters", ["nnc.fl", "nnc.cli", "nnc.conformance"]),
    # federated learning in three layers: the engine-agnostic core, the Flower adapters, the simulation harness
    ("nnc.fl", ["nnc.cli", "nnc.converters"]),
]
# The one upward edge: the checker and the describer read which tensors a topology lists (nnc's JSON record or an
# ONNX graph) through the converters' public manifest module, loaded on first use (onnx is optional).
ALLOWED = {("nnc.conformance", "nnc.converters.manifest"), ("nnc.describe", "nnc.converters.manifest")}
FL_CORE_FORBIDDEN = ["flwr", "nnc.fl.flower", "nnc.fl.sim"]
NO_TEST_SUPPORT = ["tests", "support", "nnc.converters._realmodels", "nnc.conformance.reference"]


def _is_fl_core(mod: str) -> bool:
    return _within(mod, "nnc.fl") and not _within(mod, "nnc.fl.flower") and not _within(mod, "nnc.fl.sim")


def test_the_table_covers_real_modules():
    names = {m for m, _, _ in MODULES}
    for prefix, _ in FORBIDDEN:
        assert any(_within(n, prefix) for n in names), prefix
    assert len(EDGES) > 100


@pytest.mark.parametrize("prefix,forbidden", FORBIDDEN, ids=[p for p, _ in FORBIDDEN])
def test_layers_import_only_downwards(prefix, forbidden):
    bad = [f"{p.relative_to(ROOT)}:{line} imports {target}"
           for name, target, _, line, _, p in EDGES
           if _within(name, prefix) and any(_within(target, f) for f in forbidden)
           and not any(_within(name, a) and _within(target, b) for a, b in ALLOWED)]
    assert not bad, "\n".join(bad)


def test_fl_core_knows_no_flower_and_no_simulation_harness():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {target}" for name, target, _, line, _, p in EDGES
           if _is_fl_core(name) and any(_within(target, f) for f in FL_CORE_FORBIDDEN)]
    bad += [f"{p.relative_to(ROOT)}:{line} imports {target}" for name, target, _, line, _, p in EDGES
            if _within(name, "nnc.fl.flower") and _within(target, "nnc.fl.sim")]
    assert not bad, "\n".join(bad)


def test_the_package_ships_no_test_support():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {target}" for name, target, _, line, _, p in EDGES
           if any(_within(target, t) for t in NO_TEST_SUPPORT)]
    assert not bad, "\n".join(bad)
    assert not (PKG / "converters" / "_realmodels.py").exists()
    assert not (PKG / "conformance" / "reference_driver.py").exists()


def test_no_private_name_is_imported_from_another_package():
    bad = []
    for name, target, names, line, _, p in EDGES:
        if not target.startswith("nnc"):
            continue
        importer_pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        target_pkg = target.rsplit(".", 1)[0] if (PKG.parent / (target.replace(".", "/") + ".py")).exists() \
            else target
        for n in names:
            if n.startswith("_") and not n.startswith("__") and n != "_core" and target_pkg != importer_pkg \
                    and not _within(target, importer_pkg):
                bad.append(f"{p.relative_to(ROOT)}:{line} imports {n} from {target}")
        if target_pkg == importer_pkg and target != name and any(
                n.startswith("_") and not n.startswith("__") for n in names) and importer_pkg == "nnc":
            bad.append(f"{p.relative_to(ROOT)}:{line} imports private {names} from {target}")
    assert not bad, "\n".join(bad)


# The command line defers each subcommand's imports (fast --help). Everywhere else an nnc module is imported at the
# top of the module; optional third-party packages (torch, onnx, protobuf, flwr, ml_dtypes) may be imported inside
# the function that needs them (docs/architecture.md, "Imports").
LAZY_IMPORTERS = ("nnc.cli",)


def test_no_function_local_import_of_nnc_outside_the_cli():
    """A function-local import of an nnc module only hides a cycle (``import nnc`` already loads the package
    face)."""
    bad = [f"{p.relative_to(ROOT)}:{line} imports {target}" for name, target, _, line, local, p in EDGES
           if local and target.startswith("nnc") and not any(_within(name, x) for x in LAZY_IMPORTERS)
           and not any(_within(name, a) and _within(target, b) for a, b in ALLOWED)]
    assert not bad, "\n".join(bad)


def _module_graph() -> dict[str, set[str]]:
    """module -> the nnc modules it imports (function-local imports included). ``from pkg import sub`` counts as
    an import of the submodule only (running the package's ``__init__`` first is Python's doing, not a design
    edge); ``from pkg import name`` of anything else counts as an import of the package."""
    modules = {m for m, _, _ in MODULES}
    packages = {m for m, _, p in MODULES if p.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, target, names, _, _, _ in EDGES:
        if target not in modules or target == name:
            continue
        if target in packages and names and all(f"{target}.{n}" in modules for n in names):
            continue
        graph.setdefault(name, set()).add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, path = [], {}, []

    def visit(u: str) -> None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v)
        path.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def test_no_import_cycles():
    """No module reaches itself through imports (e.g. the converters' ``_torch`` <-> ``_torchscript`` and
    ``_common`` -> ``_torch`` -> ``_common`` of old: what both sides need lives in a module below them)."""
    cycles = _cycles(_module_graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)

