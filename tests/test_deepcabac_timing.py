"""Throughput printout of nnc.deepcabac vs the NNCodec 2.1.3 extension (informative, never fails on time).

Run with ``pytest -s tests/test_deepcabac_timing.py`` to see the numbers (CPU seconds of the calling process,
which stays meaningful on a loaded machine). Size via NNC_DEEPCABAC_TIMING_N.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest

from nnc.coding.quant import step_size
from nnc.deepcabac import EncodeOptions, TensorCoding, decode_payload, encode_payload, quantize

from test_deepcabac_reference import REF_PYTHON

N = int(os.environ.get("NNC_DEEPCABAC_TIMING_N", str(5_000_000)))
QP = -32

REF_TIMER = r'''
import json, sys, time
import numpy as np
from nncodec.extensions import deepCABAC as dc
x = np.load(sys.argv[1])
res = {}
for dq in (0, 1):
    t0 = time.process_time()
    q = np.zeros(x.shape, dtype=np.int32)
    enc = dc.Encoder()
    enc.quantLayer(x, q, dq, 2, int(sys.argv[2]), 0.0, 10, 0, 1)
    t1 = time.process_time()
    enc.iae_v(8, int(sys.argv[2]))
    enc.initCtxModels(11, 1)
    skip = np.zeros(x.shape[0], dtype=np.int32)
    hist = np.zeros(x.size, dtype=np.int8)
    enc.encodeLayer(q, dq, 0, 1, 0, 0, skip, dc.HdspMode.TensorOff, hist, 0, 0)
    data = np.asarray(enc.finish(), dtype=np.uint8)
    t2 = time.process_time()
    dec = dc.Decoder()
    dec.setStream(np.concatenate([data, np.zeros(16, np.uint8)]))
    dec.iae_v(8)
    dec.initCtxModels(11)
    out = np.zeros(x.shape, dtype=np.int32)
    dec.decodeLayer(out, dq, 0, 1, 0, dc.HdspMode.TensorOff, hist, 0, 0)
    dec.finish()
    t3 = time.process_time()
    res[str(dq)] = {"quant": t1 - t0, "encode": t2 - t1, "decode": t3 - t2, "bytes": int(data.size)}
print(json.dumps(res))
'''


def test_throughput_printout(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((N // 1000, 1000)) * 0.02).astype(np.float32)
    step = step_size(QP, 2)
    coding_opts = EncodeOptions()
    lines = [f"\nDeepCABAC throughput on {x.size / 1e6:.1f} M gaussian weights, qp {QP}, profile 1, param opt on:"]
    mine = {}
    for dq in (False, True):
        t0 = time.process_time()
        q = quantize(x, step, dq=dq)
        t1 = time.process_time()
        c = TensorCoding(shape=x.shape, dq=dq)
        data, _ = encode_payload([(q, c, QP, coding_opts)])
        t2 = time.process_time()
        dec = decode_payload(data, [c])
        t3 = time.process_time()
        np.testing.assert_array_equal(dec.levels[0], q)
        mine[dq] = dict(quant=t1 - t0, encode=t2 - t1, decode=t3 - t2, bytes=len(data))
    ref = None
    if REF_PYTHON.exists():
        np.save(tmp_path / "x.npy", x)
        tim = tmp_path / "timer.py"
        tim.write_text(REF_TIMER)
        proc = subprocess.run([str(REF_PYTHON), str(tim), str(tmp_path / "x.npy"), str(QP)], capture_output=True,
                              text=True, timeout=1800)
        if proc.returncode == 0:
            ref = json.loads(proc.stdout.strip().splitlines()[-1])
    for dq in (False, True):
        m = mine[dq]
        lines.append(f"  nnc  dq={int(dq)}: quantize {m['quant']:.3f} s, encode {m['encode']:.3f} s "
                     f"({x.size / m['encode'] / 1e6:.1f} M/s), decode {m['decode']:.3f} s "
                     f"({x.size / m['decode'] / 1e6:.1f} M/s), {m['bytes']} bytes")
        if ref:
            r = ref[str(int(dq))]
            lines.append(f"  ref  dq={int(dq)}: quantize {r['quant']:.3f} s, encode {r['encode']:.3f} s, "
                         f"decode {r['decode']:.3f} s, {r['bytes']} bytes  -> speed-up quant+encode "
                         f"{(r['quant'] + r['encode']) / (m['quant'] + m['encode']):.1f}x, "
                         f"decode {r['decode'] / m['decode']:.1f}x")
            assert r["bytes"] == m["bytes"]
    if ref is None:
        lines.append(f"  (reference not measured: {REF_PYTHON} missing)")
    # Entry-point parallel decoding (scan order 4: blocks of 64 rows), wall clock.
    q = quantize(x, step, dq=True, scan_order=4)
    c = TensorCoding(shape=x.shape, dq=True, scan_order=4)
    data, eps = encode_payload([(q, c, QP, coding_opts)])
    w0 = time.perf_counter()
    seq = decode_payload(data, [c], threads=1)
    w1 = time.perf_counter()
    par = decode_payload(data, [c], entry_points=eps, threads=os.cpu_count())
    w2 = time.perf_counter()
    assert par.parallel == [True]
    np.testing.assert_array_equal(seq.levels[0], par.levels[0])
    lines.append(f"  nnc  dq=1 scan 4: sequential decode {w1 - w0:.3f} s wall, parallel from {len(eps[0])} entry "
                 f"points on {os.cpu_count()} threads {w2 - w1:.3f} s wall")
    print("\n".join(lines))
