#!/usr/bin/env python3
"""Generate the extra positive conformance vectors in conformance/generated/.

Two producers:
* ``reference`` cases are encoded AND decoded by NNCodec 2.1.3 (through ``tests/support/reference.py``); the
  manifest's hashes are those of the reference's decoded arrays. Needs the reference venv (tools/setup_reference.sh).
* ``nnc`` cases exercise syntax the reference's API never writes (block scans with entry points, profile 0,
  nnr_decompressed_data_format, short unary codes); they are encoded and decoded by nnc. Whether the reference
  decodes them identically is shown by tools/interop_matrix.py.

Inputs are generated from fixed seeds and stored next to the bitstreams (in_<id>.npz), so the suite can re-encode
them. Usage: python tools/make_vectors.py [--out conformance/generated] [--only nnc|reference]
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


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _rng(seed):
    return np.random.default_rng(seed)


def inputs() -> dict[str, dict[str, np.ndarray]]:
    r = _rng(20240611)
    conv = (r.normal(size=(16, 8, 3, 3)) * 0.1).astype(np.float32)
    sparse = (r.normal(size=(48, 40)) * 0.05).astype(np.float32)
    sparse[r.random(48) < 0.5] = 0.0
    wide = (r.standard_t(1.5, size=(24, 32)) * 0.02).astype(np.float32)
    return {
        "conv": {"c.weight": conv, "c.bias": (r.normal(size=16) * 0.01).astype(np.float32)},
        "ints": {"emb.idx": r.integers(-300, 300, size=(12, 10)).astype(np.int16),
                 "mask": r.integers(0, 2, size=64).astype(np.int8),
                 "fc.weight": (r.normal(size=(10, 12)) * 0.2).astype(np.float32)},
        "sparse": {"s.weight": sparse, "zero.weight": np.zeros((8, 8), np.float32),
                   "s.bias": np.zeros(48, np.float32)},
        "wide": {"w.weight": wide},
        "small": {"scalar": np.float32(0.75), "one": np.array([-1.5], np.float32),
                  "row.weight": (r.normal(size=(1, 33)) * 0.1).astype(np.float32),
                  "col.weight": (r.normal(size=(33, 1)) * 0.1).astype(np.float32)},
        "fewlevels": {"q.weight": (r.integers(-3, 4, size=(32, 24)) * 0.0625).astype(np.float32)},
        "block": {"b.weight": (r.normal(size=(200, 70)) * 0.05).astype(np.float32),
                  "b.bias": (r.normal(size=200) * 0.01).astype(np.float32)},
        "mixed_dtypes": {"h.weight": (r.normal(size=(20, 16)) * 0.1).astype(np.float16),
                         "d.weight": (r.normal(size=(9, 11)) * 0.1).astype(np.float64),
                         "i.table": r.integers(-5000, 5000, size=(7, 5)).astype(np.int16)},
    }


REFERENCE_CASES = [
    # id, input, settings (reference_driver keys)
    ("ref_conv_qd0_nodq", "conv", {"qp": -8, "qp_density": 0, "nonweight_qp": -18, "dq": False}),
    ("ref_conv_qd4_dq", "conv", {"qp": -150, "qp_density": 4, "nonweight_qp": -300, "dq": True}),
    ("ref_ints_dq", "ints", {"qp": -36, "qp_density": 2, "nonweight_qp": -75, "dq": True}),
    ("ref_sparse_rowskip_nodq", "sparse", {"qp": -30, "dq": False, "row_skipping": True}),
    ("ref_sparse_noopt_norowskip", "sparse", {"qp": -30, "dq": True, "row_skipping": False, "param_opt": False}),
    ("ref_wide_dq", "wide", {"qp": -44, "dq": True}),
    ("ref_small_dq", "small", {"qp": -32, "dq": True}),
    ("ref_fewlevels_codebook_forced_nodq", "fewlevels", {"qp": -32, "dq": False, "codebook_mode": 1}),
]

NNC_CASES = [
    # id, input, EncoderConfig keywords
    ("nnc_block_scan1_nodq", "block", {"qp": -36, "dq": False, "scan_order": 1}),
    ("nnc_block_scan2_dq_norowskip", "block", {"qp": -36, "dq": True, "row_skipping": False, "scan_order": 2}),
    ("nnc_block_scan4_nodq_noopt", "block", {"qp": -34, "dq": False, "param_opt": False, "scan_order": 4}),
    ("nnc_conv_profile0", "conv", {"qp": -38, "profile": 0, "row_skipping": False}),
    ("nnc_mixed_dtypes", "mixed_dtypes", {"qp": -40, "dq": True}),
    ("nnc_wide_unary1", "wide", {"qp": -44, "dq": False, "unary_length_minus1": 0}),
]


def _without_data_format(bs: bytes) -> bytes:
    import dataclasses

    import nnc.bitstream as B
    out = []
    for u in B.parse(bs):
        if u.nnr_unit_type == B.NNRUnitType.NNR_NDU and u.body.nnr_decompressed_data_format_present_flag:
            body = dataclasses.replace(u.body, nnr_decompressed_data_format_present_flag=0,
                                       nnr_decompressed_data_format=None)
            out.append(B.write_unit(body, context=u.context, payload=bytes(u.payload)))
        else:
            out.append(bytes(u.data))
    return b"".join(out)


def _arrays(decoded: dict) -> dict:
    return {k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": sha256(v)} for k, v in decoded.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "conformance" / "generated"))
    ap.add_argument("--only", choices=["nnc", "reference"])
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ins = inputs()
    mpath = out / "manifest.json"
    old = json.loads(mpath.read_text()) if mpath.exists() else {"cases": []}
    cases = {c["id"]: c for c in old.get("cases", [])}
    used = set()

    def save_input(key):
        p = out / f"in_{key}.npz"
        np.savez(p, **{k: np.asarray(v) for k, v in ins[key].items()})
        used.add(key)
        return p.name

    if a.only in (None, "reference"):
        from tests.support import reference
        if not reference.available():
            print("reference venv not found: reference cases not regenerated", file=sys.stderr)
        else:
            jobs = [(ins[key], s) for _, key, s in REFERENCE_CASES]
            streams = reference.encode_many(jobs)
            decoded = reference.decode_many(streams)
            for (cid, key, s), bs, dec in zip(REFERENCE_CASES, streams, decoded):
                (out / f"{cid}.nnc").write_bytes(bs)
                cases[cid] = {"id": cid, "producer": "reference", "input": save_input(key),
                              "bitstream": f"{cid}.nnc", "bitstream_bytes": len(bs),
                              "bitstream_sha256": hashlib.sha256(bs).hexdigest(), "settings": s,
                              "arrays": _arrays(dec)}
                print(f"{cid}: {len(bs)} bytes (reference)")
    if a.only in (None, "nnc"):
        for cid, key, kw in NNC_CASES:
            bs = nnc.encode(ins[key], nnc.EncoderConfig(**kw))
            dec = nnc.decode(bs)
            (out / f"{cid}.nnc").write_bytes(bs)
            cases[cid] = {"id": cid, "producer": "nnc", "input": save_input(key), "bitstream": f"{cid}.nnc",
                          "bitstream_bytes": len(bs), "bitstream_sha256": hashlib.sha256(bs).hexdigest(),
                          "settings": kw, "arrays": _arrays(dec)}
            stripped = _without_data_format(bs)
            if stripped != bs:
                # NNCodec ignores nnr_decompressed_data_format (spec §5.3): it returns the float32/int32
                # reconstruction, i.e. what nnc decodes once the field is removed
                cases[cid]["reference_arrays"] = _arrays(nnc.decode(stripped))
                cases[cid]["reference_note"] = "NNCodec ignores nnr_decompressed_data_format (spec §5.3)"
            print(f"{cid}: {len(bs)} bytes (nnc)")
    manifest = {
        "generator": "tools/make_vectors.py",
        "nnc": nnc.__version__,
        "sha256_of_array": "sha256 over np.ascontiguousarray(a).tobytes() (little-endian, C order)",
        "producers": {"reference": "encoded and decoded by NNCodec 2.1.3 (settings: reference_driver keys)",
                      "nnc": "encoded and decoded by nnc (settings: EncoderConfig keywords)"},
        "cases": [cases[k] for k in sorted(cases)],
    }
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(cases)} cases in {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
