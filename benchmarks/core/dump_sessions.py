"""Record the CABAC sessions that ``nnc.encode`` codes for a model, for the C++-only timing harness.

    python benchmarks/core/dump_sessions.py MODEL OUT.raw [--qp -32] [--no-dq]

MODEL: a model file nnc can read (safetensors, ONNX, .pt, .npz) or one of the names of
``tests.support.realmodels.model_paths()`` (minilm, ocr_rec, ...). The file holds, per session (NDU), the
fields of every tensor's ``_core.TensorSpec`` and ``_core.EncodeSettings`` (as int64 rows) and its stored
integers, exactly as passed to the core's encoder (format: see bench_core.cpp). The harness then times the core alone, without Python.
"""
from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests/support

import nnc  # noqa: E402
import nnc.deepcabac as dc  # noqa: E402
from nnc.converters import load_model  # noqa: E402
from tests.support.realmodels import model_paths  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--qp", type=int, default=-32)
    ap.add_argument("--no-dq", action="store_true")
    a = ap.parse_args()
    path = model_paths().get(a.model, a.model)
    tensors = {k: np.asarray(v) for k, v in load_model(path).tensors.items()}

    sessions = []
    real_encode = dc._core.encode
    spec_fields = ("height", "width", "profile", "unary_length", "qp_bits", "scan_order", "dq", "parent_present",
                   "codebook_size", "codebook_zero")
    setting_fields = ("param_opt", "row_skipping", "hdsp", "qp_offset", "allow_dq_mismatch")

    def recording_encode(levels, specs, settings, *rest):
        if any(s.tca_base is not None or s.hdsp_history is not None for s in specs):
            raise SystemExit("TCA/HDSP sessions are not supported by the harness")
        table = np.array([[int(getattr(s, f)) for f in spec_fields] for s in specs], dtype=np.int64)
        sett = np.array([[int(getattr(s, f)) for f in setting_fields] for s in settings], dtype=np.int64)
        sessions.append(([np.array(lv, dtype=np.int32) for lv in levels], table, sett))
        return real_encode(levels, specs, settings, *rest)

    dc._core.encode = recording_encode
    try:
        # one thread: the sessions are recorded in coding order (tensors on several threads would interleave)
        data = nnc.encode(tensors, nnc.EncoderConfig(qp=a.qp, dq=not a.no_dq, threads=1))
    finally:
        dc._core.encode = real_encode
    with open(a.out, "wb") as f:
        f.write(struct.pack("<q", len(sessions)))
        for levels, table, settings in sessions:
            f.write(struct.pack("<q", len(levels)))
            for i, lv in enumerate(levels):
                f.write(table[i].astype("<i8").tobytes())
                f.write(settings[i].astype("<i8").tobytes())
                f.write(struct.pack("<q", lv.size))
                f.write(lv.astype("<i4").tobytes())
    print(f"{len(sessions)} sessions, {sum(lv.size for s in sessions for lv in s[0]):,} elements, "
          f"nnc.encode gave {len(data):,} bytes -> {a.out}")


if __name__ == "__main__":
    main()
