"""Integer weights of quantised ONNX models: NNC (zero points removed, NNR_PT_INT) vs zlib deflate vs zeroth-order
entropy, per model (issue 20, item 2).

The int8/uint8 models are made from the packaged float models with onnxruntime.quantization (dynamic, static QDQ
and static QOperator; see tests/_zoo_models.py). For each model: the integer weights nnc codes (its converter's
choice: inputs of DequantizeLinear, QLinearConv, MatMulInteger, ConvInteger, DynamicQuantizeLSTM...), their raw
size, zlib level 9 of their raw bytes as the ONNX file stores them, the zeroth-order entropy of the values with the
zero point removed (per tensor, summed), and NNC's bytes (the NDUs of those tensors, default settings). The whole
stream is also split into coded bytes (NDUs) and carried bytes (the topology unit: graph, small and exact tensors).

Small integer weights are coded together (concatenated into group tensors, one NDU per group); the table also
gives each ONNX tensor coded as an NDU of its own (the coding before grouping) for comparison.

    python benchmarks/bench_quantized.py [--json benchmarks/results/bench_quantized.json] [--folder /tmp/zoo]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def entropy_bytes(a: np.ndarray) -> float:
    _, counts = np.unique(a, return_counts=True)
    p = counts / a.size
    return float(-(counts * np.log2(p)).sum() / 8)


def _ndu_bytes(stream: bytes) -> dict:
    import nnc.bitstream as bs
    return {u.body.topology_elem_id: u.size for u in bs.parse(stream) if u.nnr_unit_type == bs.UnitType.NNR_NDU}


def measure(path: str) -> dict:
    import onnx
    from onnx import numpy_helper
    import nnc
    import nnc.bitstream as bs
    import nnc.converters as C
    from nnc.converters import _onnx
    model = onnx.load(path)
    lm = C.load_model(path)
    topo = _onnx.parse_topology(lm.topology)
    slots = [t for t, _, _ in _onnx._tensor_slots(topo) if _onnx._is_placeholder(t) and t.data_type in _onnx._int_types()]
    holders = {n for t in slots for n in _onnx._bitstream_names(t)}
    levels = _onnx.coded_levels(lm.tensors, lm.topology)          # per ONNX tensor, zero point removed
    orig = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    raw = b"".join(np.ascontiguousarray(orig[t.name]).tobytes() for t in slots)
    t0 = time.perf_counter()
    stream = nnc.encode(lm.tensors, nnc.EncoderConfig(), topology=lm.topology)
    enc_s = time.perf_counter() - t0
    units = bs.parse(stream)
    ndu = _ndu_bytes(stream)
    tpl = sum(u.size for u in units if u.nnr_unit_type == bs.UnitType.NNR_TPL)
    # reference points: every ONNX tensor as an NDU of its own, zero point removed (the coding before grouping)
    # and zero point kept
    own = _ndu_bytes(nnc.encode(levels, nnc.EncoderConfig()))
    with_zp = _ndu_bytes(nnc.encode({t.name: orig[t.name].astype(np.int32) for t in slots}, nnc.EncoderConfig()))
    return {
        "model": os.path.basename(path)[:-5], "int_params": int(sum(v.size for v in levels.values())),
        "int_tensors": len(slots), "int_ndus": len(holders), "raw_bytes": len(raw),
        "deflate_bytes": len(zlib.compress(raw, 9)),
        "entropy_bytes": sum(entropy_bytes(v) for v in levels.values()),
        "nnc_int_bytes": int(sum(ndu[k] for k in holders)), "nnc_int_bytes_one_ndu_per_tensor": int(sum(own.values())),
        "nnc_int_bytes_zero_point_kept": int(sum(with_zp.values())),
        "stream_bytes": len(stream), "coded_bytes": int(sum(ndu.values())), "carried_bytes": int(tpl),
        "file_bytes": os.path.getsize(path), "file_deflate_bytes": len(zlib.compress(open(path, "rb").read(), 9)),
        "encode_s": enc_s,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="/tmp/nnc_zoo_int8")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import _zoo_models as Z
    models = Z.quantized_models(Z.float_models(), a.folder)
    rows = [measure(path) for _, path in sorted(models.items())]
    hdr = ("model", "int params", "tensors / NDUs", "deflate B", "entropy B", "NNC B", "NNC/deflate",
           "NNC/deflate, NDU per tensor", "NNC zp kept B", "stream B", "coded B", "carried B", "file deflate B")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print(f"| {r['model']} | {r['int_params']:,} | {r['int_tensors']} / {r['int_ndus']} | {r['deflate_bytes']:,} | "
              f"{r['entropy_bytes']:,.0f} | {r['nnc_int_bytes']:,} | {r['nnc_int_bytes'] / r['deflate_bytes']:.3f} | "
              f"{r['nnc_int_bytes_one_ndu_per_tensor'] / r['deflate_bytes']:.3f} | "
              f"{r['nnc_int_bytes_zero_point_kept']:,} | {r['stream_bytes']:,} | {r['coded_bytes']:,} | "
              f"{r['carried_bytes']:,} | {r['file_deflate_bytes']:,} |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"conditions": "nnc default EncoderConfig (qp -38, DQ; integer tensors lossless), zlib level 9; "
                                     "integer weights below nnc.converters._onnx.INTEGER_GROUP_BELOW elements coded "
                                     "together in group tensors (nnc_int_bytes); nnc_int_bytes_one_ndu_per_tensor: "
                                     "each ONNX tensor as an NDU of its own, zero point removed",
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
