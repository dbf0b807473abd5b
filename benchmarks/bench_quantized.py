"""Integer weights of quantised ONNX models: NNC (zero points removed, NNR_PT_INT) vs zlib deflate vs zeroth-order
entropy, per model (issue 20, item 2).

The int8/uint8 models are made from the packaged float models with onnxruntime.quantization (dynamic, static QDQ
and static QOperator; see tests/_zoo_models.py). For each model: the integer weights nnc codes (its converter's
choice: inputs of DequantizeLinear, QLinearConv, MatMulInteger, ConvInteger, DynamicQuantizeLSTM...), their raw
size, zlib level 9 of their raw bytes as the ONNX file stores them, the zeroth-order entropy of the values with the
zero point removed (per tensor, summed), and NNC's bytes (the NDUs of those tensors, default settings). The whole
stream is also split into coded bytes (NDUs) and carried bytes (the topology unit: graph, small and exact tensors).

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


def measure(path: str) -> dict:
    import onnx
    from onnx import numpy_helper
    import nnc
    import nnc.bitstream as bs
    import nnc.converters as C
    from nnc.converters import _onnx
    model = onnx.load(path)
    lm = C.load_model(path)
    ints = {k: v for k, v in lm.tensors.items() if v.dtype.kind in "iu"}
    topo = _onnx.parse_topology(lm.topology)
    names = {}
    for t, _, _ in _onnx._tensor_slots(topo):
        if _onnx._is_placeholder(t) and t.data_type in _onnx._int_types():
            names[_onnx._placeholder_name(t)] = t.name
    orig = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    raw = b"".join(np.ascontiguousarray(orig[names[k]]).tobytes() for k in ints)
    t0 = time.perf_counter()
    stream = nnc.encode(lm.tensors, nnc.EncoderConfig(), topology=lm.topology)
    enc_s = time.perf_counter() - t0
    units = bs.parse(stream)
    ndu = {u.body.topology_elem_id: u.size for u in units if u.nnr_unit_type == bs.UnitType.NNR_NDU}
    tpl = sum(u.size for u in units if u.nnr_unit_type == bs.UnitType.NNR_TPL)
    # the reference point: the same integer arrays, zero point kept, coded by NNC
    with_zp = nnc.encode({k: orig[names[k]].astype(np.int32) for k in ints}, nnc.EncoderConfig())
    return {
        "model": os.path.basename(path)[:-5], "int_params": int(sum(v.size for v in ints.values())),
        "int_tensors": len(ints), "raw_bytes": len(raw), "deflate_bytes": len(zlib.compress(raw, 9)),
        "entropy_bytes": sum(entropy_bytes(v) for v in ints.values()),
        "nnc_int_bytes": int(sum(ndu[k] for k in ints)), "nnc_int_bytes_zero_point_kept": len(with_zp),
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
    hdr = ("model", "int params", "deflate B", "entropy B", "NNC B", "NNC/deflate", "NNC zp kept B", "stream B",
           "coded B", "carried B", "file deflate B")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print(f"| {r['model']} | {r['int_params']:,} | {r['deflate_bytes']:,} | {r['entropy_bytes']:,.0f} | "
              f"{r['nnc_int_bytes']:,} | {r['nnc_int_bytes'] / r['deflate_bytes']:.3f} | "
              f"{r['nnc_int_bytes_zero_point_kept']:,} | {r['stream_bytes']:,} | {r['coded_bytes']:,} | "
              f"{r['carried_bytes']:,} | {r['file_deflate_bytes']:,} |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"conditions": "nnc default EncoderConfig (qp -38, DQ; integer tensors lossless), zlib level 9",
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
