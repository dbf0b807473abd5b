"""Drive NNCodec 2.1.3 (the reference) for nnc's differential tests. Runs INSIDE the reference venv.

    $NNCREF/bin/python nnc/conformance/reference_driver.py < jobs.json > results.json

stdin holds a JSON list of jobs; stdout gets a JSON list of results, one per job, in order. Running many jobs
in one process avoids paying the reference's (torch) import time per case. A job that fails yields
``{"error": "..."}`` instead of stopping the batch.

Encode and decode results include "seconds": the wall time of the reference API call alone (no file I/O).

Jobs:
  {"op": "encode", "input": "in.npz", "output": "out.nnc", "settings": {...}}
  {"op": "decode", "input": "in.nnc", "output": "out.npz"}
  {"op": "encode_seq", "inputs": ["u0.npz", ...], "outputs": ["u0.nnc", ...], "settings": {...}, "tca": true}
  {"op": "decode_seq", "inputs": ["u0.nnc", ...], "outputs": ["u0.npz", ...]}
Settings (all optional): qp, qp_density, nonweight_qp, dq, row_skipping, param_opt, codebook_mode (0/1/2),
bitdepth, qp_per_tensor, opt_qp, lambda_scale, sparsity (unstructured target, applied with the reference's
apply_unstruct_spars_v2 before compress when not None), struct_spars_factor (apply_struct_spars_v2 gain when
not None).
"""
import contextlib
import json
import sys
import time
import traceback

import numpy as np


def _load(path):
    with np.load(path, allow_pickle=False) as z:
        out = {}
        for k in z.files:
            a = z[k]
            if a.dtype.kind == "f":
                a = a.astype(np.float32)
            elif a.dtype.kind in "iub":
                a = a.astype(np.int32)
            out[k] = np.ascontiguousarray(a)
        return out


def _sparsify(params, s):
    if s.get("sparsity") is None and s.get("struct_spars_factor") is None:
        return params
    from nncodec.framework.applications.utils.sparsification import apply_struct_spars_v2, apply_unstruct_spars_v2
    floats = {k: v for k, v in params.items() if v.dtype == np.float32}
    if s.get("sparsity") is not None:
        floats = apply_unstruct_spars_v2(s.get("qp", -38), floats, target_sparsity=s["sparsity"],
                                         qp_density=np.int32(s.get("qp_density", 2)))
    if s.get("struct_spars_factor") is not None:
        floats = apply_struct_spars_v2(floats, gain=s["struct_spars_factor"])
    return {k: np.ascontiguousarray(floats[k], dtype=np.float32) if k in floats else v for k, v in params.items()}


def _compress(params, s, **extra):
    from nncodec import nnc
    params = _sparsify(params, s)
    if s.get("lambda_scale"):
        extra.setdefault("lambda_scale", s["lambda_scale"])
    bitdepth = s.get("bitdepth")
    return bytes(nnc.compress(
        params, bitstream_path=None, return_bitstream=True, verbose=False, device_id=0,
        qp=s.get("qp", -38), qp_density=s.get("qp_density", 2), nonweight_qp=s.get("nonweight_qp", -75),
        qp_per_tensor=s.get("qp_per_tensor"), use_dq=s.get("dq", True), codebook_mode=s.get("codebook_mode", 0),
        param_opt=s.get("param_opt", True), opt_qp=s.get("opt_qp", False),
        row_skipping=s.get("row_skipping", True), int_quant_bw=bitdepth if bitdepth else False, **extra))


def _fresh_base():
    return {"parameters": {}, "put_node_depth": {}, "device_id": 0, "parameter_id": {}}


def run(job):
    from nncodec import nnc
    op = job["op"]
    if op == "encode":
        params = _load(job["input"])
        t0 = time.perf_counter()
        bs = _compress(params, job.get("settings", {}))
        seconds = time.perf_counter() - t0
        with open(job["output"], "wb") as f:
            f.write(bs)
        return {"bytes": len(bs), "seconds": seconds}
    if op == "decode":
        with open(job["input"], "rb") as f:
            data = bytearray(f.read())
        t0 = time.perf_counter()
        rec = nnc.decompress(data)
        seconds = time.perf_counter() - t0
        rec = {k: np.asarray(v) for k, v in rec.items()}
        np.savez(job["output"], **rec)
        return {"names": list(rec), "seconds": seconds}
    if op == "encode_seq":
        base = _fresh_base()
        sizes = []
        for src, dst in zip(job["inputs"], job["outputs"]):
            bs = _compress(_load(src), job.get("settings", {}), tca=bool(job.get("tca")),
                           compress_differences=True, approx_param_base=base, update_base_param=True)
            with open(dst, "wb") as f:
                f.write(bs)
            sizes.append(len(bs))
        return {"bytes": sizes}
    if op == "decode_seq":
        base = _fresh_base()
        for src, dst in zip(job["inputs"], job["outputs"]):
            with open(src, "rb") as f:
                rec = nnc.decompress(bytearray(f.read()), approx_param_base=base, update_base_param=True)
            np.savez(dst, **{k: np.asarray(v) for k, v in rec.items()})
        return {"steps": len(job["inputs"])}
    raise ValueError(f"unknown op {op!r}")


def main():
    jobs = json.load(sys.stdin)
    results = []
    for job in jobs:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # NNCodec prints progress to stdout
                results.append(run(job))
        except BaseException as e:  # the reference raises SystemExit and AssertionError on bad input
            results.append({"error": f"{type(e).__name__}: {e}",
                            "trace": traceback.format_exc(limit=3)})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
