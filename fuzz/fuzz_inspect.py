"""Fuzz ``nnc.inspect`` (unit-by-unit summary, used by ``nnc info``).

``nnc.inspect`` is being written concurrently; until ``nnc/inspect.py`` exists this harness fuzzes the layer
it is built on: ``nnc.bitstream.parse`` in lenient mode (errors collected per unit, as ``info`` reports
them) and in strict mode, plus re-serialisation of every unit that parsed cleanly. The banner printed at
start-up says which target ran.
"""
import sys

from _common import main

_target = None


def _pick():
    try:
        from nnc.inspect import inspect as insp
    except ImportError:
        insp = None
    if insp is not None:
        def run(data):
            info = insp(data)
            for meth in ("to_dict", "to_text"):
                if hasattr(info, meth):
                    getattr(info, meth)()
        return "nnc.inspect", run

    from nnc import bitstream as bs

    def run(data):
        parsed = bs.parse(data, strict=False, max_units=4096)
        for u in parsed:
            repr(u)
            if u.ok and u.body is not None:
                u.to_bytes()
        _ = parsed.topology if parsed.topology_unit is not None and parsed.topology_unit.topology_data is not None \
            else None
        bs.parse(data, strict=True, max_units=4096)
    return "nnc.bitstream.parse (nnc.inspect not present yet)", run


def TestOneInput(data: bytes) -> None:  # noqa: N802
    global _target
    import nnc
    if _target is None:
        name, _target = _pick()
        print(f"[fuzz_inspect] target: {name}", file=sys.stderr)
    try:
        _target(data)
    except nnc.NNCError:
        return


if __name__ == "__main__":
    main(TestOneInput)
