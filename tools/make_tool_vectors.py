#!/usr/bin/env python3
"""Generate conformance vectors for the encoder coding tools (issue 6) in conformance/tools/vectors/ (a folder below
conformance/tools so that the top-level suite groups stay vectors/generated/negative; run it with
``nnc conform conformance/tools``).

Every case is encoded AND decoded by NNCodec 2.1.3 (through tests/support/reference.py); the manifest's hashes
are those of the reference's decoded arrays, and ``nnc_identical`` records whether nnc's encoder, given the same
input and settings (tests.support.refsettings.config_from_settings), writes the same bytes. Inputs come from fixed
seeds (tests.support.refsettings.random_tensors) and are stored next to the bitstreams (in_<id>.npz).

Usage: python tools/make_tool_vectors.py [--out conformance/tools/vectors]   (needs tools/setup_reference.sh)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nnc  # noqa: E402
from tests.support.refsettings import config_from_settings, random_tensors  # noqa: E402

CASES = [
    # id, input seed, settings (reference_driver keys)
    ("tool_codebook_auto_dq", 11, {"qp": -30, "dq": True, "codebook_mode": 2}),
    ("tool_codebook_auto_nodq_norowskip", 12, {"qp": -34, "dq": False, "codebook_mode": 2, "row_skipping": False}),
    ("tool_codebook_force_dq", 13, {"qp": -28, "dq": True, "codebook_mode": 1}),
    ("tool_codebook_force_noopt", 14, {"qp": -36, "dq": False, "codebook_mode": 1, "param_opt": False}),
    ("tool_bitdepth2_nodq", 15, {"qp": -32, "dq": False, "bitdepth": 2}),
    ("tool_bitdepth4_dq", 16, {"qp": -32, "dq": True, "bitdepth": 4}),
    ("tool_bitdepth8_dq", 17, {"qp": -32, "dq": True, "bitdepth": 8}),
    ("tool_bitdepth16_nodq", 18, {"qp": -32, "dq": False, "bitdepth": 16}),
    ("tool_bitdepth3_codebook", 19, {"qp": -32, "dq": False, "bitdepth": 3, "codebook_mode": 2}),
    ("tool_optqp_dq", 20, {"qp": -36, "dq": True, "opt_qp": True}),
    ("tool_optqp_pertensor_nodq", 21, {"qp": -30, "dq": False, "opt_qp": True,
                                       "qp_per_tensor": {"conv.weight": -40}}),
    ("tool_sparsity_qp_only", 22, {"qp": -30, "dq": True, "sparsity": 0.0}),
    ("tool_sparsity_0.7", 23, {"qp": -34, "dq": True, "sparsity": 0.7}),
    ("tool_sparsity_0.5_struct", 24, {"qp": -34, "dq": False, "sparsity": 0.5, "struct_spars_factor": 0.9}),
]


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "conformance" / "tools" / "vectors"))
    a = ap.parse_args(argv)
    from tests.support import reference
    if not reference.available():
        print("reference venv not found (tools/setup_reference.sh)", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = {cid: random_tensors(np.random.default_rng(seed)) for cid, seed, _ in CASES}
    streams = reference.encode_many([(inputs[cid], s) for cid, _, s in CASES])
    decoded = reference.decode_many(streams)
    cases = []
    same = 0
    for (cid, _, s), bs, dec in zip(CASES, streams, decoded):
        np.savez(out / f"in_{cid}.npz", **inputs[cid])
        (out / f"{cid}.nnc").write_bytes(bs)
        ours = nnc.encode(inputs[cid], config_from_settings(s))
        same += ours == bs
        cases.append({"id": cid, "producer": "reference", "input": f"in_{cid}.npz", "bitstream": f"{cid}.nnc",
                      "bitstream_bytes": len(bs), "bitstream_sha256": hashlib.sha256(bs).hexdigest(),
                      "settings": s, "nnc_identical": ours == bs,
                      "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": sha256(v)}
                                 for k, v in dec.items()}})
        print(f"{cid}: {len(bs)} bytes, nnc identical: {ours == bs}")
    manifest = {"generator": "tools/make_tool_vectors.py", "nnc": nnc.__version__,
                "sha256_of_array": "sha256 over np.ascontiguousarray(a).tobytes() (little-endian, C order)",
                "producers": {"reference": "encoded and decoded by NNCodec 2.1.3 (settings: reference_driver keys)"},
                "cases": cases}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(cases)} cases, {same} byte-identical in nnc, manifest in {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
