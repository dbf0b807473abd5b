"""Shared set-up for the atheris harnesses in fuzz/.

* ``NNC_CORE_SO=/path/_core....so``: load that build of the C++ core (the ASan/UBSan one from
  ``fuzz/build_asan.sh``) as ``nnc.deepcabac._core`` *before* nnc is imported. The process must then run
  with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)`` (``fuzz/run.sh`` does both).
* :func:`expected` is the contract every harness checks: the entry point returns normally or raises an
  :class:`nnc.NNCError`. Any other exception propagates and atheris reports it as a crash; ASan/UBSan
  abort the process on memory errors or undefined behaviour; libFuzzer's ``-timeout`` catches hangs.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "conformance" / "vectors"


def load_core_override() -> str | None:
    so = os.environ.get("NNC_CORE_SO")
    if not so:
        return None
    spec = importlib.util.spec_from_file_location("nnc.deepcabac._core", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["nnc.deepcabac._core"] = mod
    return so


def check_core(so: str | None) -> None:
    import nnc.deepcabac._core as core
    if so is not None and Path(core.__file__).resolve() != Path(so).resolve():
        raise SystemExit(f"expected the core from {so}, got {core.__file__}")
    asan = False
    try:
        import ctypes
        asan = hasattr(ctypes.CDLL(None), "__asan_init")
    except OSError:
        pass
    if so is not None and not asan:
        raise SystemExit("NNC_CORE_SO is set but the ASan runtime is not loaded (LD_PRELOAD libasan.so)")
    print(f"[fuzz] nnc.deepcabac._core = {core.__file__} (ASan runtime loaded: {asan})", file=sys.stderr)


def fuzz_limits():
    """Decoder limits used while fuzzing: small enough that a hostile header cannot make one input take
    seconds, large enough for every conformance vector."""
    from nnc import DecoderConfig
    return DecoderConfig(max_tensor_elements=4 << 20, max_total_bytes=64 << 20, max_units=4096)


def _instrument_nnc(atheris) -> int:
    import types
    n = 0
    for name, mod in list(sys.modules.items()):
        if not (name == "nnc" or name.startswith("nnc.")) or mod is None:
            continue
        for obj in list(vars(mod).values()):
            targets = []
            if isinstance(obj, types.FunctionType) and obj.__module__ == name:
                targets.append(obj)
            elif isinstance(obj, type) and obj.__module__ == name:
                for v in vars(obj).values():
                    f = getattr(v, "__func__", v)
                    if isinstance(v, property):
                        f = v.fget
                    if isinstance(f, types.FunctionType):
                        targets.append(f)
            for f in targets:
                try:
                    atheris.instrument_func(f)
                    n += 1
                except Exception:  # noqa: BLE001 - builtins, already instrumented, etc.
                    pass
    return n


def report_harness(harness: str, entry: str):
    """TestOneInput for an entry point that returns a report-like object for bytes (``nnc.check``,
    ``nnc.inspect``): an :class:`nnc.NNCError` is tolerated, anything returned must render with
    ``to_dict()`` and ``to_text()``. The first call prints the banner naming the target (fuzz/summary.py
    collects it)."""
    started = False

    def test_one_input(data: bytes) -> None:
        nonlocal started
        import nnc
        if not started:
            print(f"[{harness}] target: nnc.{entry}", file=sys.stderr)
            started = True
        try:
            result = getattr(nnc, entry)(data)
        except nnc.NNCError:
            return
        result.to_dict()
        result.to_text()

    return test_one_input


def main(test_one_input, extra_imports=()):
    """Common main: load the optional core, instrument nnc, run libFuzzer with the command line."""
    import atheris
    so = load_core_override()
    import importlib
    for m in ("nnc", "nnc.bitstream", "nnc.codec", "nnc.incremental", "nnc.describe", "nnc.conformance.checker",
              *extra_imports):
        try:
            importlib.import_module(m)
        except ImportError:
            pass
    # nnc is an editable install whose custom loader atheris.instrument_imports() cannot hook (no Python
    # coverage then); instrument the loaded nnc functions in place instead.
    n = _instrument_nnc(atheris)
    print(f"[fuzz] instrumented {n} nnc code objects", file=sys.stderr)
    check_core(so)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
