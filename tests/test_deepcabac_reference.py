"""Differential tests of nnc.deepcabac against NNCodec 2.1.3's compiled DeepCABAC extension.

The reference runs in its own interpreter (``/tmp/nncref/bin/python`` or ``$NNC_REFERENCE_PYTHON``), driven
through a script written to a temporary directory; data travels in .npz files plus a JSON manifest. The
tests skip with a visible reason when the reference interpreter is absent.

Checked: CABAC payload bytes (encoder), decoded levels / qp offsets / entry points (decoder, both ways),
and quantized levels of ``quantize`` vs ``Encoder.quantLayer`` (URQ and DQ, lambda 0).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nnc.coding.quant import step_size
from nnc.deepcabac import (
    EncodeOptions,
    QuantizationOverflowError,
    TensorCoding,
    block_row_count,
    decode_payload,
    encode_payload,
    quantize,
)

REF_PYTHON = Path(os.environ.get("NNC_REFERENCE_PYTHON", "/tmp/nncref/bin/python"))

N_SESSIONS = int(os.environ.get("NNC_DEEPCABAC_DIFF_CASES", "300"))
N_QUANT = int(os.environ.get("NNC_DEEPCABAC_QUANT_CASES", "200"))
SEED = int(os.environ.get("NNC_DEEPCABAC_SEED", "0"))

DRIVER = r'''
import json, sys
import numpy as np
from nncodec.extensions import deepCABAC as dc

def mode(flag):
    return dc.HdspMode.TensorOn if flag else dc.HdspMode.TensorOff

def main(workdir):
    with open(workdir + "/cases.json") as f:
        man = json.load(f)
    arrs = np.load(workdir + "/cases.npz")
    out = {}
    res = {"sessions": [], "quant": []}
    for si, sess in enumerate(man["sessions"]):
        # ---- encode
        enc = dc.Encoder()
        for ti, t in enumerate(sess):
            key = "s%d_t%d" % (si, ti)
            q = np.ascontiguousarray(arrs[key + "_q"].reshape(t["ref_shape"]))
            if t["qp_bits"]:
                enc.iae_v(t["qp_bits"], t["qp"])
            enc.initCtxModels(t["N"], int(t["param_opt"]))
            H = t["ref_shape"][0]
            W = int(np.prod(t["ref_shape"][1:])) if len(t["ref_shape"]) > 1 else 1
            skip = np.zeros(H, dtype=np.int32)
            if t["profile"] == 1 and len(t["ref_shape"]) >= 2:
                skip = np.ascontiguousarray((~q.reshape(H, W).any(axis=1)).astype(np.int32))
            hist = arrs[key + "_hist"].astype(np.int8) if t["has_hist"] else np.zeros(H * W, dtype=np.int8)
            S = t["S"] if t["profile"] == 1 else 0
            Z = t["Z"] if t["profile"] == 1 else 0
            if t["tca"]:
                base = np.ascontiguousarray(arrs[key + "_base"].reshape(t["ref_shape"]))
                enc.encodeLayer2(q, base, int(t["dq"]), t["scan"], t["profile"], int(t["parent"]),
                                 int(t["row_skip"]), skip, mode(t["hdsp"]), hist, S, Z)
            else:
                enc.encodeLayer(q, int(t["dq"]), t["scan"], t["profile"], int(t["parent"]), int(t["row_skip"]),
                                skip, mode(t["hdsp"]), hist, S, Z)
        payload = np.asarray(enc.finish(), dtype=np.uint8)
        out["s%d_payload" % si] = payload
        # ---- decode (the payload named by the manifest: the reference's own or nnc's)
        src = arrs["s%d_nnc_payload" % si] if ("s%d_nnc_payload" % si) in arrs.files else payload
        dec = dc.Decoder()
        buf = np.concatenate([src, np.zeros(16, dtype=np.uint8)])
        dec.setStream(buf)
        info = []
        for ti, t in enumerate(sess):
            key = "s%d_t%d" % (si, ti)
            qp = dec.iae_v(t["qp_bits"]) if t["qp_bits"] else None
            dec.initCtxModels(t["N"])
            w = np.zeros(t["ref_shape"], dtype=np.int32)
            H = t["ref_shape"][0]
            W = int(np.prod(t["ref_shape"][1:])) if len(t["ref_shape"]) > 1 else 1
            hist = arrs[key + "_hist"].astype(np.int8) if t["has_hist"] else np.zeros(H * W, dtype=np.int8)
            S = t["S"] if t["profile"] == 1 else 0
            Z = t["Z"] if t["profile"] == 1 else 0
            eps = []
            multi = t["block_rows"] > 1
            if t["tca"]:
                base = np.ascontiguousarray(arrs[key + "_base"].reshape(t["ref_shape"]))
                if multi:
                    eps = dec.decodeLayerAndCreateEPs2(w, base, int(t["dq"]), t["scan"], t["profile"], int(t["parent"]),
                                                       mode(True), hist, S, Z).tolist()
                else:
                    dec.decodeLayer2(w, base, int(t["dq"]), t["scan"], t["profile"], int(t["parent"]), mode(True), hist, S, Z)
            else:
                if multi:
                    eps = dec.decodeLayerAndCreateEPs(w, int(t["dq"]), t["scan"], t["profile"], int(t["parent"]),
                                                      mode(True), hist, S, Z).tolist()
                else:
                    dec.decodeLayer(w, int(t["dq"]), t["scan"], t["profile"], int(t["parent"]), mode(True), hist, S, Z)
            out["s%d_t%d_dec" % (si, ti)] = w.reshape(-1)
            info.append({"qp": qp, "eps": [int(e) for e in eps]})
        consumed = dec.finish()
        res["sessions"].append({"info": info, "consumed": int(consumed)})
    for qi, qc in enumerate(man["quant"]):
        x = np.ascontiguousarray(arrs["q%d_x" % qi])
        lv = np.zeros(x.shape, dtype=np.int32)
        enc = dc.Encoder()
        qp = enc.quantLayer(x, lv, int(qc["dq"]), qc["qpd"], qc["qp"], 0.0, 10, qc["scan"], 1)
        out["q%d_q" % qi] = lv
        res["quant"].append({"qp": int(qp)})
    np.savez(workdir + "/results.npz", **out)
    with open(workdir + "/results.json", "w") as f:
        json.dump(res, f)

main(sys.argv[1])
'''


def _need_reference():
    if not REF_PYTHON.exists():
        pytest.skip(f"NNCodec 2.1.3 reference interpreter not found at {REF_PYTHON} "
                    "(set NNC_REFERENCE_PYTHON or build /tmp/nncref)")


def run_reference(workdir: Path, sessions, quant, arrays):
    (workdir / "driver.py").write_text(DRIVER)
    (workdir / "cases.json").write_text(json.dumps({"sessions": sessions, "quant": quant}))
    np.savez(workdir / "cases.npz", **arrays)
    proc = subprocess.run([str(REF_PYTHON), str(workdir / "driver.py"), str(workdir)], capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"reference driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = json.loads((workdir / "results.json").read_text())
    with np.load(workdir / "results.npz") as z:
        out = {k: z[k] for k in z.files}
    return res, out


# ------------------------------------------------------------------------------------------------------
# Random case generation.
def _random_shape(rng):
    kind = rng.integers(0, 7)
    if kind == 0:
        return (int(rng.integers(1, 2000)),)
    if kind == 1:
        return (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    if kind == 2:
        return (int(rng.integers(1, 200)), int(rng.integers(1, 200)))
    if kind == 3:
        return (int(rng.integers(1, 40)), int(rng.integers(1, 8)), int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    if kind == 4:
        return (int(rng.integers(60, 300)), int(rng.integers(100, 400)))
    if kind == 5:
        return (int(rng.integers(1, 130)), 1)
    return (1, int(rng.integers(1, 3000)))


def _random_ints(rng, n, kind):
    if kind == "gauss":
        sigma = float(rng.choice([0.3, 1.0, 3.0, 20.0, 300.0]))
        return np.round(rng.standard_normal(n) * sigma).astype(np.int64)
    if kind == "sparse":
        v = np.round(rng.standard_normal(n) * float(rng.choice([2.0, 10.0])))
        v[rng.random(n) < 0.8] = 0
        return v.astype(np.int64)
    if kind == "huge":
        return rng.integers(-500_000_000, 500_000_001, n)
    if kind == "zero":
        return np.zeros(n, dtype=np.int64)
    if kind == "const":
        return np.full(n, int(rng.integers(-50, 51)), dtype=np.int64)
    if kind == "laplace":
        return np.round(rng.laplace(0, float(rng.choice([0.5, 4.0, 60.0])), n)).astype(np.int64)
    raise ValueError(kind)


def _zero_rows(rng, q, shape):
    h = shape[0]
    if len(shape) > 1 and h > 1 and rng.random() < 0.6:
        q = q.reshape(h, -1).copy()
        q[rng.random(h) < rng.choice([0.2, 0.5, 0.9])] = 0
        q = q.reshape(-1)
    return q


def make_tensor(rng, key, arrays, allow_tca=True):
    shape = _random_shape(rng)
    n = int(np.prod(shape))
    profile = int(rng.random() < 0.75)
    dq = bool(rng.random() < 0.4)
    scan = int(rng.integers(0, 5))
    if len(shape) == 1:
        scan = 0
    N = int(rng.choice([1, 2, 5, 10, 11, 11, 11, 16, 40, 256]))
    qp_bits = int(rng.choice([0, 8, 8, 9, 6]))
    qp = int(rng.integers(-(1 << (qp_bits - 1)), 1 << (qp_bits - 1))) if qp_bits else 0
    row_skip = bool(profile == 1 and rng.random() < 0.5)
    param_opt = bool(rng.random() < 0.7)
    parent = bool(profile == 1 and rng.random() < 0.4)
    S = Z = 0
    tca = hdsp = has_hist = False
    allow_mismatch = False
    kind = str(rng.choice(["gauss", "gauss", "sparse", "huge", "zero", "const", "laplace"]))
    if profile == 1 and not dq and rng.random() < 0.2:
        S = int(rng.choice([1, 2, 3, 5, 16, 40]))
        Z = int(rng.integers(0, S))
        q = rng.integers(-Z, S - Z, n)
        if rng.random() < 0.5:
            q[rng.random(n) < 0.6] = 0
    elif dq:
        # Valid DQ integers come from the trellis quantizer on floats.
        x = (rng.standard_normal(n) * float(rng.choice([0.01, 0.1, 1.0, 100.0]))).astype(np.float32)
        if kind == "sparse":
            x[rng.random(n) < 0.8] = 0
        x = _zero_rows(rng, x, shape)
        h = shape[0]
        w = n // h
        q = quantize(x.reshape(h, w), float(rng.choice([0.01, 0.05, 0.3])), dq=True,
                     scan_order=scan).reshape(-1)
        # Row skipping with block scans changes the DQ state sequence (§6 item 25): code those the way
        # NNCodec does.
        allow_mismatch = row_skip and scan > 0
    else:
        q = _random_ints(rng, n, kind)
        q = _zero_rows(rng, q, shape)
    if profile == 1 and parent:
        hdsp = bool(rng.random() < 0.5)
        if rng.random() < 0.7:
            has_hist = True
            arrays[key + "_hist"] = (rng.random(n) < rng.choice([0.1, 0.5, 0.9])).astype(np.uint8)
        if allow_tca and rng.random() < 0.5:
            tca = True
            base = np.round(rng.standard_normal(n) * rng.choice([1.0, 5.0])).astype(np.int32)
            base[rng.random(n) < 0.5] = 0
            arrays[key + "_base"] = base
    q = q.astype(np.int32)
    arrays[key + "_q"] = q
    t = dict(shape=list(shape), ref_shape=list(shape), profile=profile, dq=dq, scan=scan, N=N, qp_bits=qp_bits,
             qp=qp, row_skip=row_skip, param_opt=param_opt, parent=parent, S=S, Z=Z, tca=tca, hdsp=hdsp,
             has_hist=has_hist, allow_mismatch=allow_mismatch)
    t["block_rows"] = block_row_count(coding_of(t, arrays, key))
    return t


def coding_of(t, arrays, key):
    return TensorCoding(
        shape=tuple(t["shape"]), profile=t["profile"], unary_length=t["N"],
        qp_bits=t["qp_bits"] or None, scan_order=t["scan"], dq=t["dq"], parent_present=t["parent"],
        codebook_size=t["S"], codebook_zero=t["Z"],
        tca_base=arrays[key + "_base"] if t["tca"] else None,
        hdsp_history=arrays[key + "_hist"] if t["has_hist"] else None)


def options_of(t):
    return EncodeOptions(param_opt=t["param_opt"], row_skipping=t["row_skip"], hdsp=t["hdsp"],
                         allow_dq_mismatch=t["allow_mismatch"])


def make_sessions(seed, count):
    rng = np.random.default_rng(seed)
    sessions, arrays = [], {}
    for si in range(count):
        k = int(rng.choice([1, 1, 1, 2, 3]))
        sess = []
        for ti in range(k):
            sess.append(make_tensor(rng, f"s{si}_t{ti}", arrays))
        sessions.append(sess)
    return sessions, arrays


def encode_nnc(sess, arrays, si):
    items = []
    for ti, t in enumerate(sess):
        key = f"s{si}_t{ti}"
        items.append((arrays[key + "_q"], coding_of(t, arrays, key), t["qp"], options_of(t)))
    return encode_payload(items)


def _ep_int(e):
    return (e.bit_offset << 11) + (e.value << 3) + e.dq_state


# ------------------------------------------------------------------------------------------------------
@pytest.mark.reference
def test_random_sessions_match_reference(tmp_path):
    _need_reference()
    sessions, arrays = make_sessions(20240601 + SEED, N_SESSIONS)
    nnc_payloads = {}
    for si, sess in enumerate(sessions):
        payload, eps = encode_nnc(sess, arrays, si)
        nnc_payloads[si] = (payload, eps)
    # Pass 1: reference encodes + decodes its own payloads.
    res, out = run_reference(tmp_path, sessions, [], arrays)
    identical = 0
    mismatches = []
    n_tensors = 0
    for si, sess in enumerate(sessions):
        ref_payload = out[f"s{si}_payload"].tobytes()
        mine, my_eps = nnc_payloads[si]
        if ref_payload == mine:
            identical += 1
        else:
            mismatches.append((si, sess))
            continue
        # nnc decodes the reference payload
        codings = [coding_of(t, arrays, f"s{si}_t{ti}") for ti, t in enumerate(sess)]
        dec = decode_payload(ref_payload, codings)
        assert dec.consumed == len(ref_payload) == res["sessions"][si]["consumed"]
        for ti, t in enumerate(sess):
            n_tensors += 1
            key = f"s{si}_t{ti}"
            ref_dec = out[f"{key}_dec"]
            np.testing.assert_array_equal(dec.levels[ti].reshape(-1), ref_dec, err_msg=f"session {si} tensor {ti}")
            if not t["allow_mismatch"]:
                np.testing.assert_array_equal(ref_dec, arrays[key + "_q"])
            info = res["sessions"][si]["info"][ti]
            assert dec.qp_offsets[ti] == info["qp"]
            if t["block_rows"] > 1:
                assert [_ep_int(e) for e in dec.entry_points[ti]] == info["eps"], f"session {si} tensor {ti}"
                assert [_ep_int(e) for e in my_eps[ti]] == info["eps"], f"session {si} tensor {ti}"
    print(f"\ndifferential DeepCABAC: {identical}/{len(sessions)} sessions byte-identical "
          f"({n_tensors} tensors decoded identically)")
    assert not mismatches, f"{len(mismatches)} payload mismatches, first: {mismatches[0]}"


@pytest.mark.reference
def test_reference_decodes_nnc_payloads(tmp_path):
    """The reference decoder reads nnc's payloads (fed explicitly, not the reference's own)."""
    _need_reference()
    sessions, arrays = make_sessions(777 + SEED, max(40, N_SESSIONS // 5))
    for si, sess in enumerate(sessions):
        payload, _ = encode_nnc(sess, arrays, si)
        arrays[f"s{si}_nnc_payload"] = np.frombuffer(payload, dtype=np.uint8)
    res, out = run_reference(tmp_path, sessions, [], arrays)
    for si, sess in enumerate(sessions):
        assert res["sessions"][si]["consumed"] == len(arrays[f"s{si}_nnc_payload"])
        for ti, t in enumerate(sess):
            key = f"s{si}_t{ti}"
            if not t["allow_mismatch"]:
                np.testing.assert_array_equal(out[f"{key}_dec"], arrays[key + "_q"])
            assert res["sessions"][si]["info"][ti]["qp"] == (t["qp"] if t["qp_bits"] else None)


def make_quant_cases(seed, count):
    rng = np.random.default_rng(seed)
    cases, arrays = [], {}
    for qi in range(count):
        shape = _random_shape(rng)
        n = int(np.prod(shape))
        kind = int(rng.integers(0, 6))
        if kind == 0:
            x = rng.standard_normal(n) * float(rng.choice([1e-3, 0.05, 1.0]))
        elif kind == 1:  # huge dynamic range
            x = rng.standard_normal(n) * np.exp(rng.uniform(-30, 10, n))
        elif kind == 2:  # denormals and zeros
            x = rng.standard_normal(n) * 1e-40
            x[rng.random(n) < 0.3] = 0
        elif kind == 3:
            x = np.zeros(n)
        elif kind == 4:  # exact half steps (tie rounding)
            x = (rng.integers(-40, 40, n) + 0.5) * 2.0 ** -8
        else:
            x = rng.laplace(0, 0.02, n)
            x[rng.random(n) < 0.5] = 0
        x = x.astype(np.float32).reshape(shape)
        if rng.random() < 0.1:
            x[tuple(0 for _ in shape)] = np.float32(-0.0)
        qpd = int(rng.integers(0, 5))
        qp = int(rng.integers(-80, 0)) if kind != 4 else -8 << qpd
        dq = bool(rng.random() < 0.6)
        scan = int(rng.integers(0, 5))
        if rng.random() < 0.05:  # provoke the overflow guard
            qp = -(40 << qpd)
            x = (rng.standard_normal(n) * 10).astype(np.float32).reshape(shape)
        cases.append(dict(qpd=qpd, qp=qp, dq=dq, scan=scan))
        arrays[f"q{qi}_x"] = x
    return cases, arrays


@pytest.mark.reference
def test_quantize_matches_reference(tmp_path):
    _need_reference()
    cases, arrays = make_quant_cases(4242 + SEED, N_QUANT)
    res, out = run_reference(tmp_path, [], cases, arrays)
    checked = guarded = 0
    for qi, c in enumerate(cases):
        x = arrays[f"q{qi}_x"]
        ref_qp = res["quant"][qi]["qp"]
        if ref_qp != c["qp"]:
            guarded += 1
            with pytest.raises(QuantizationOverflowError):
                quantize(x, step_size(c["qp"], c["qpd"]), dq=c["dq"], scan_order=c["scan"])
        mine = quantize(x, step_size(ref_qp, c["qpd"]), dq=c["dq"], scan_order=c["scan"])
        np.testing.assert_array_equal(mine, out[f"q{qi}_q"], err_msg=f"case {qi}: {c} shape {x.shape}")
        checked += 1
    print(f"\nquantize: {checked} cases identical to quantLayer ({guarded} through the overflow guard)")
