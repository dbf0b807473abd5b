"""issue 18 item 4: the FL code in three layers, checked on the source (ASTs), not by convention.

* ``nnc/fl/*.py`` (the engine-agnostic core) imports neither ``flwr`` nor ``nnc.fl.sim`` nor ``nnc.fl.flower``;
* ``nnc/fl/flower/`` (the Flower adapters) never imports ``nnc.fl.sim``;
* the core's public names do not depend on whether Flower imports (no try/except ImportError around imports);
* message codecs follow one protocol and ``encode`` always returns bytes.
"""
import ast
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FL = ROOT / "nnc" / "fl"


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (relative imports resolved against its package)."""
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        pkg = pkg.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)   # "from . import sim" imports nnc.fl.sim
    return out


def _hits(paths, forbidden):
    bad = {}
    for p in paths:
        got = sorted(m for m in _imports(p) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if got:
            bad[str(p.relative_to(ROOT))] = got
    return bad


CORE = sorted(FL.glob("*.py"))
FLOWER = sorted((FL / "flower").glob("*.py"))


def test_layout_exists():
    assert len(CORE) >= 8 and len(FLOWER) >= 4 and (FL / "sim" / "__init__.py").exists()
    assert not (FL / "flower.py").exists() and not (FL / "simulate.py").exists()


def test_core_never_imports_flower_or_sim():
    assert _hits(CORE, ("flwr", "ray", "nnc.fl.sim", "nnc.fl.flower")) == {}


def test_flower_adapters_never_import_sim():
    assert _hits(FLOWER, ("nnc.fl.sim",)) == {}


def test_import_checker_sees_a_violation(tmp_path):
    # the checker itself must be able to fail: a relative import of the sim package is caught
    bad = FL / "_probe_layers.py"
    try:
        bad.write_text("from .sim import simulate\nfrom . import sim\n")
        assert _hits([bad], ("nnc.fl.sim",)) == {"nnc/fl/_probe_layers.py": ["nnc.fl.sim", "nnc.fl.sim.simulate"]}
    finally:
        bad.unlink()


def test_core_names_do_not_depend_on_optional_imports():
    for p in CORE:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Try):
                caught = [ast.unparse(h.type) for h in node.handlers if h.type is not None]
                assert not any("ImportError" in c for c in caught), f"{p.name}: optional import"


def test_one_codec_protocol_and_bytes_whatever_the_setting():
    from nnc.fl import MessageCodec, MessageDecoder, MessageEncoder, UpdateCodec
    from nnc.fl.distill import LabelCodecConfig, SoftLabelDecoder, SoftLabelEncoder
    d = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "b": np.zeros((), np.float32)}
    for qp in (-40, None):
        c = UpdateCodec(qp, template=d)
        assert isinstance(c, MessageCodec)
        data = c.encode(d)
        assert type(data) is bytes
        back = c.decode(data)
        assert set(back) == set(d) and back["b"].shape == ()
    for cfg in (LabelCodecConfig(bits=2), LabelCodecConfig(bits=32, delta=False, coding="raw")):
        enc, dec = SoftLabelEncoder(cfg), SoftLabelDecoder(cfg, (5, 3))
        assert isinstance(enc, MessageEncoder) and isinstance(dec, MessageDecoder)
        p = np.full((5, 3), 1 / 3, np.float32)
        data = enc.encode(p)
        assert type(data) is bytes
        assert dec.decode(data).shape == (5, 3)


def test_flower_package_keeps_user_import_paths():
    pytest.importorskip("flwr")
    from nnc.fl.flower import CFDFedAvg, ClusteredFedAvg, NNCFedAvg, cfd_mod, cfl_mod, nnc_mod  # noqa: F401
    import inspect
    sig = inspect.signature(CFDFedAvg)
    assert {"model", "distill", "evaluate", "select"} <= set(sig.parameters)
    assert "select" in inspect.signature(ClusteredFedAvg).parameters
    assert "select" in inspect.signature(NNCFedAvg).parameters
