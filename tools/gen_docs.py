#!/usr/bin/env python3
"""Regenerate the generated parts of docs/bitstream.md.

The document is hand-written except for blocks between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->``:

* ``syntax-tables``: ``nnc.bitstream.syntax_tables_markdown()`` (the syntax declarations of nnc.bitstream.units);
* ``violation-codes``: the codes of ``nnc.conformance.checker.CODES``;
* ``examples``: ``nnc check`` and ``nnc info`` on the MTCNN P-Net model of the conformance inputs, encoded by nnc.

Usage: python tools/gen_docs.py [--check]   (--check: exit 1 if the syntax tables or codes are stale)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "bitstream.md"
CHECKED = ("syntax-tables", "violation-codes")   # blocks the test suite keeps up to date


def syntax_tables() -> str:
    import nnc.bitstream as B
    md = B.syntax_tables_markdown()
    # the generated document starts with its own level-1 title; nest it under this document's section
    return re.sub(r"^# ", "### ", md, count=1, flags=re.M).replace("\n## ", "\n#### ")


def violation_codes() -> str:
    from nnc.conformance.checker import CODES
    lines = ["| Code | Meaning |", "|---|---|"]
    lines += [f"| `{k}` | {v.replace('|', '/')} |" for k, v in CODES.items()]
    return "\n".join(lines)


def examples() -> str:
    import numpy as np

    import nnc
    from nnc.cli import main
    with np.load(ROOT / "conformance" / "vectors" / "in_mtcnn_pnet.npz") as z:
        tensors = {k: z[k] for k in z.files}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mtcnn_pnet.nnc"
        path.write_bytes(nnc.encode(tensors, nnc.EncoderConfig(qp=-38)))
        for args in (["check", str(path)], ["info", str(path)]):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = main(args)
            out += [f"$ nnc {args[0]} mtcnn_pnet.nnc    # exit status {rc}", buf.getvalue().rstrip(), ""]
    return "```text\n" + "\n".join(out).rstrip() + "\n```"


GENERATORS = {"syntax-tables": syntax_tables, "violation-codes": violation_codes, "examples": examples}


def block_re(name: str):
    return re.compile(rf"(<!-- BEGIN GENERATED: {name} -->\n)(.*?)(<!-- END GENERATED: {name} -->)", re.S)


def render(text: str, names) -> str:
    for name in names:
        rx = block_re(name)
        if not rx.search(text):
            raise SystemExit(f"docs/bitstream.md has no generated block {name!r}")
        body = GENERATORS[name]()
        text = rx.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(3), text)
    return text


def stale_blocks(text: str) -> list[str]:
    return [n for n in CHECKED if render(text, [n]) != text]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    text = DOC.read_text()
    if a.check:
        stale = stale_blocks(text)
        if stale:
            print(f"docs/bitstream.md is stale ({', '.join(stale)}): run python tools/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(render(text, GENERATORS))
    print(f"regenerated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
