"""Scale benchmark: synthetic LLM-shaped sharded bfloat16 checkpoints, encoded and decoded by the nnc CLI in
subprocesses (peak RSS from wait4, wall time), at 1 and 2 threads; zipnn (lossless) and NNCodec 2.1.3 on the
same files where they run.

Models (generated here, one tensor at a time, never stored in the repo; weights N(0, 0.02) in bfloat16,
norm vectors 1.0): a 32000x4096 embedding when it fits, then Llama-7B-shaped layers (q/k/v/o 4096x4096,
gate/up/down 11008x4096 and 4096x11008, two 4096 norms) until the parameter target is reached, in safetensors
shards of at most 1 GB with a model.safetensors.index.json; plus "huge1": the embedding alone (one tensor
dominates), coded with scan_order 0 and with scan_order 2 (entry points: the block rows decode in parallel).

    nice -n 5 python benchmarks/bench_scale.py --sizes 0.1,0.5,1.0 --threads 1,2
    # writes benchmarks/results/bench_scale.json and docs/bench_scale.png

Each measurement is one run (no repeats). On a shared machine run it in a session of its own at the highest
priority, so that the wall times (and the 2-thread speed-ups) are not the other users' load:

    setsid bash -c 'echo -20 > /proc/self/autogroup; exec python benchmarks/bench_scale.py'   # root: autogroup nice

(the load average before each run is recorded with it; ``NNC_BENCH_NOTE`` is stored as the run's note).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "bench_scale.json")
PNG = os.path.join(ROOT, "docs", "bench_scale.png")
REF_PY = "/tmp/nncref/bin/python"
ORACLE = "/work/shared/reference/nncodec_oracle.py"

EMB = ("model.embed_tokens.weight", (32000, 4096))
LAYER = [("self_attn.q_proj.weight", (4096, 4096)), ("self_attn.k_proj.weight", (4096, 4096)),
         ("self_attn.v_proj.weight", (4096, 4096)), ("self_attn.o_proj.weight", (4096, 4096)),
         ("mlp.gate_proj.weight", (11008, 4096)), ("mlp.up_proj.weight", (11008, 4096)),
         ("mlp.down_proj.weight", (4096, 11008)), ("input_layernorm.weight", (4096,)),
         ("post_attention_layernorm.weight", (4096,))]


def llm_layout(target: float) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of about ``target`` parameters (in units of 1e9)."""
    goal = int(target * 1e9)
    out, total = [], 0
    if math.prod(EMB[1]) <= goal:
        out.append(EMB)
        total += math.prod(EMB[1])
    layer = 0
    while True:
        for name, shape in LAYER:
            n = math.prod(shape)
            if len(shape) > 1 and total + n - goal > goal - total:   # adding it would overshoot more
                return out + [("model.norm.weight", (4096,))]
            out.append((f"model.layers.{layer}.{name}", shape))
            total += n
        layer += 1


def write_checkpoint(folder: str, layout, shard_bytes: int = 1 << 30, seed: int = 0) -> dict:
    """Write ``layout`` as bfloat16 safetensors shards + index, one tensor in memory at a time."""
    import ml_dtypes
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups, acc = [[]], 0
    for name, shape in layout:
        nb = 2 * math.prod(shape)
        if groups[-1] and acc + nb > shard_bytes:
            groups.append([])
            acc = 0
        groups[-1].append((name, shape))
        acc += nb
    n = len(groups)
    weight_map = {}
    for k, g in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        header, off = {}, 0
        for name, shape in g:
            nb = 2 * math.prod(shape)
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nb]}
            off += nb
            weight_map[name] = fname
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        with open(os.path.join(folder, fname), "wb") as f:
            f.write(len(hb).to_bytes(8, "little"))
            f.write(hb)
            for name, shape in g:
                if len(shape) == 1:
                    a = np.ones(shape, ml_dtypes.bfloat16)
                else:
                    a = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(ml_dtypes.bfloat16)
                f.write(a.view(np.uint16).tobytes())
                del a
    total = sum(2 * math.prod(s) for _, s in layout)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return {"parameters": sum(math.prod(s) for _, s in layout), "bytes": total, "shards": n,
            "tensors": len(layout), "largest": max(math.prod(s) for _, s in layout)}


# Peak RSS is the child's own VmHWM, written at exit. (wait4's ru_maxrss is not used: a child started by
# fork/vfork inherits the high-water mark of the parent's address space, which here holds the generator's
# arrays, and Linux keeps that mark across exec.)
HWM = r"""
import atexit, os, runpy, sys
def _hwm():
    with open("/proc/self/status") as f:
        kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    with open(os.environ["NNC_HWM_FILE"], "w") as f:
        f.write(str(kb))
atexit.register(_hwm)
kind, target = sys.argv[1], sys.argv[2]
sys.argv = [target] + sys.argv[3:]
if kind == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
elif kind == "-c":
    sys.argv[0] = "-c"
    exec(compile(target, "<bench>", "exec"), {"__name__": "__main__"})
else:
    runpy.run_path(target, run_name="__main__")
"""


def measure(cmd: list[str], env=None) -> dict:
    """Run ``cmd`` (``python -m MOD ...``, ``python -c CODE ...`` or ``python SCRIPT ...``): wall time, CPU time
    and the peak RSS (VmHWM) of that process."""
    import tempfile
    load = os.getloadavg()[0]
    fd, hwm_file = tempfile.mkstemp(prefix="hwm_")
    os.close(fd)
    env = dict(env if env is not None else os.environ, NNC_HWM_FILE=hwm_file)
    py, rest = cmd[0], cmd[1:]
    if rest[0] not in ("-m", "-c"):
        rest = ["-s", *rest]
    cmd = [py, "-c", HWM, *rest]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    with open(hwm_file) as f:
        text = f.read()
    os.remove(hwm_file)
    if p.returncode != 0 or not text:
        raise RuntimeError(f"{' '.join(rest)[:300]} failed ({p.returncode}): {err.decode()[-2000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "peak_rss_mb": round(int(text) / 1024, 1), "load_before": round(load, 2),
            "stdout": out.decode()[-2000:]}


def nnc_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "nnc.cli", *args]


def dir_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


ZIPNN_SCRIPT = r"""
import os, sys, json, time, zipnn
src, dst, threads, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
z = zipnn.ZipNN(bytearray_dtype="bfloat16", threads=threads)
os.makedirs(dst, exist_ok=True)
total_in = total_out = 0
for f in sorted(os.listdir(src)):
    if not f.endswith(".safetensors" if mode == "c" else ".znn"):
        continue
    data = open(os.path.join(src, f), "rb").read()
    out = z.compress(data) if mode == "c" else z.decompress(data)
    total_in += len(data); total_out += len(out)
    open(os.path.join(dst, f + ".znn" if mode == "c" else f[:-4]), "wb").write(out)
    del data, out
print(json.dumps({"in": total_in, "out": total_out}))
"""


def run_zipnn(model_dir: str, work: str, threads: int) -> dict:
    zdir, ddir = os.path.join(work, "zipnn"), os.path.join(work, "zipnn_dec")
    shutil.rmtree(zdir, ignore_errors=True)
    shutil.rmtree(ddir, ignore_errors=True)
    c = measure([sys.executable, "-c", ZIPNN_SCRIPT, model_dir, zdir, str(threads), "c"])
    d = measure([sys.executable, "-c", ZIPNN_SCRIPT, zdir, ddir, str(threads), "d"])
    info = json.loads(c["stdout"].strip().splitlines()[-1])
    ok = all(open(os.path.join(model_dir, f), "rb").read() == open(os.path.join(ddir, f), "rb").read()
             for f in os.listdir(ddir))
    shutil.rmtree(ddir, ignore_errors=True)
    shutil.rmtree(zdir, ignore_errors=True)
    return {"encode": c, "decode": d, "compressed_bytes": info["out"], "input_bytes": info["in"], "lossless_ok": ok}


def run_nncodec(model_dir: str, work: str) -> dict:
    """NNCodec 2.1.3 (its own venv) on the same model as a float32 npz (it takes float32/int32 only)."""
    import nnc.converters as C
    npz = os.path.join(work, "ref_in.npz")
    lm = C.open_model(model_dir)
    np.savez(npz, **{k: np.asarray(lm.tensors[k]).astype(np.float32) for k in lm.tensors})
    out = os.path.join(work, "ref.nnc")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e = measure([REF_PY, ORACLE, "encode", npz, out, "--qp", "-38"], env=env)
    dec = os.path.join(work, "ref_dec.npz")
    d = measure([REF_PY, ORACLE, "decode", out, dec], env=env)
    res = {"encode": e, "decode": d, "bitstream_bytes": os.path.getsize(out)}
    for p in (npz, dec):
        os.remove(p)
    res["_bitstream"] = out
    return res


def best_of(n: int, run) -> dict:
    """The measurement with the lowest wall time of ``n`` runs (all wall times kept in ``walls``)."""
    got = [run() for _ in range(max(1, n))]
    best = min(got, key=lambda m: m["wall_s"])
    best["walls"] = [m["wall_s"] for m in got]
    return best


def bench_model(label: str, folder: str, work: str, threads: list[int], extra_enc=(), zipnn_on=True,
                repeats: int = 1) -> dict:
    res: dict = {"label": label, "runs": [], "repeats": repeats}
    out = os.path.join(work, f"{label}.nnc")
    dec_dir = os.path.join(work, f"{label}_dec")
    digests = set()

    def decode(t):
        shutil.rmtree(dec_dir, ignore_errors=True)
        return measure(nnc_cmd("decode", out, "-o", dec_dir + "/", "--threads", str(t)))

    for t in threads:
        e = best_of(repeats, lambda: measure(nnc_cmd("encode", folder, "-o", out, "--threads", str(t),
                                                     "--no-verify", "--json", *extra_enc)))
        info = json.loads(e["stdout"].strip().splitlines()[-1])
        digests.add(subprocess.run(["sha256sum", out], capture_output=True, text=True).stdout.split()[0])
        d = best_of(repeats, lambda: decode(t))
        dec_bytes = dir_bytes(dec_dir)
        shutil.rmtree(dec_dir, ignore_errors=True)
        res["runs"].append({"threads": t, "encode": e, "decode": d, "bitstream_bytes": info["bitstream_bytes"],
                            "input_bytes": info["input_bytes"], "decoded_bytes": dec_bytes})
        print(f"  {label} t={t}: enc {e['wall_s']} s {e['peak_rss_mb']} MB | dec {d['wall_s']} s "
              f"{d['peak_rss_mb']} MB | {info['bitstream_bytes']:,} B", flush=True)
    res["identical_across_threads"] = len(digests) == 1
    if zipnn_on:
        res["zipnn"] = {t: run_zipnn(folder, work, t) for t in threads}
        for t, z in res["zipnn"].items():
            print(f"  zipnn t={t}: comp {z['encode']['wall_s']} s {z['encode']['peak_rss_mb']} MB | decomp "
                  f"{z['decode']['wall_s']} s {z['decode']['peak_rss_mb']} MB | {z['compressed_bytes']:,} B",
                  flush=True)
    os.remove(out)
    return res


LOSSLESS = r"""
import sys, json, numpy as np, nnc, nnc.converters as C
import collections.abc as abc
src = C.open_model(sys.argv[1]).tensors
variant = sys.argv[4]

def parts(k):
    bits = np.asarray(src[k]).view(np.uint16)
    if variant == "int16":                      # the raw bit patterns as signed 16-bit integers
        return {k: bits.view(np.int16)}
    # "split": exponent minus its most frequent value, and (mantissa + 1) carrying the sign
    e = ((bits >> 7) & 0xFF).astype(np.int32)
    e0 = int(np.bincount(e.reshape(-1), minlength=256).argmax())
    sm = ((bits & 0x7F).astype(np.int32) + 1) * np.where(bits >> 15, -1, 1).astype(np.int32)
    return {k + ".exp": (e - e0).astype(np.int16), k + ".sm": sm.astype(np.int16),
            k + ".e0": np.array([e0], np.int16)}

names = [n for k in src for n in (parts(k) if np.asarray(src[k]).size < 2 else
                                  ([k] if variant == "int16" else [k + ".exp", k + ".sm", k + ".e0"]))]
owner = {n: k for k in src for n in names if n == k or n.rsplit(".", 1)[0] == k}

class Lazy(abc.Mapping):
    def __getitem__(self, n): return parts(owner[n])[n]
    def __iter__(self): return iter(names)
    def __len__(self): return len(names)
    def dtype_names(self): return {n: "int16" for n in names}

import time, pathlib
t0 = time.perf_counter()
s = nnc.Encoder(nnc.EncoderConfig(threads=int(sys.argv[3]))).encode_to(sys.argv[2], Lazy())
t_enc = time.perf_counter() - t0
raw = sum(np.asarray(src[k]).nbytes for k in src)
# decode and put the bit patterns back together: exact?
t0 = time.perf_counter()
got, exact = {}, True
for t in nnc.Decoder(nnc.DecoderConfig(threads=int(sys.argv[3]))).stream(pathlib.Path(sys.argv[2]), levels=False):
    got[t.name] = t.array
    k = owner[t.name]
    if variant == "int16":
        bits = got.pop(k).view(np.uint16)
    elif all(k + x in got for x in (".exp", ".sm", ".e0")):
        e = got.pop(k + ".exp").astype(np.int32) + int(got.pop(k + ".e0")[0])
        sm = got.pop(k + ".sm").astype(np.int32)
        bits = (((sm < 0).astype(np.int32) << 15) | (e << 7) | (np.abs(sm) - 1)).astype(np.uint16)
    else:
        continue
    exact &= bool(np.array_equal(bits, np.asarray(src[k]).view(np.uint16)))
t_dec = time.perf_counter() - t0
print(json.dumps({"bitstream_bytes": s.bitstream_bytes, "input_bytes": raw, "exact": exact,
                  "encode_s": round(t_enc, 2), "decode_s": round(t_dec, 2)}))
"""


def lossless_int(folder: str, work: str, threads: int = 2) -> dict:
    """Exact coding of bfloat16 through NNR_PT_INT (what the standard offers for exact data): the raw bit
    patterns as int16, and a split into exponent and signed mantissa tensors."""
    out = os.path.join(work, "lossless.nnc")
    res = {}
    for variant in ("int16", "split"):
        e = measure([sys.executable, "-c", LOSSLESS, folder, out, str(threads), variant])
        res[variant] = {"encode": e, **json.loads(e["stdout"].strip().splitlines()[-1])}
        os.remove(out)
    return res


def entry_point_cost(rows: int = 4096, cols: int = 4096) -> dict:
    """Bytes of one N(0, 0.02) bfloat16 matrix at qp -38 with scan_order 0 (default, and without row skipping,
    which scan_order > 0 with DQ needs) and scan_order 1..4 (entry points), and the decode time with 1 and 2
    threads (in this process; the block rows decode in parallel only with entry points)."""
    import ml_dtypes
    import nnc
    rng = np.random.default_rng(0)
    w = {"w": (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)).astype(ml_dtypes.bfloat16)}
    out = {"shape": [rows, cols], "cases": []}
    for scan, rs in ((0, True), (0, False), (1, False), (2, False), (3, False), (4, False)):
        t0 = time.perf_counter()
        data = nnc.encode(w, nnc.EncoderConfig(qp=-38, scan_order=scan, row_skipping=rs, threads=1))
        enc = time.perf_counter() - t0
        dec = {}
        for t in (1, 2):
            t0 = time.perf_counter()
            nnc.decode(data, nnc.DecoderConfig(threads=t))
            dec[t] = round(time.perf_counter() - t0, 3)
        case = {"scan_order": scan, "row_skipping": rs, "bytes": len(data), "encode_s": round(enc, 2),
                "decode_s": dec, "load": round(os.getloadavg()[0], 1)}
        out["cases"].append(case)
        print(f"  scan {scan} row_skipping {rs}: {len(data):,} B, enc {enc:.1f} s, dec 1t {dec[1]} s 2t {dec[2]} s",
              flush=True)
    return out


def table(results: dict) -> str:
    """The markdown tables of docs/performance.md from the JSON."""
    rows = ["| model | params | largest tensor | threads | bitstream B | encode s (cpu s) | encode peak MB | "
            "decode s (cpu s) | decode peak MB | target MB | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in results["models"]:
        ck = m["checkpoint"]
        target = 3 * 4 * ck["largest"] / 2**20 + 256
        for r in m["runs"]:
            e, d = r["encode"], r["decode"]
            rows.append(f"| {m['label']} | {ck['parameters'] / 1e6:,.0f} M | {ck['largest'] / 1e6:.1f} M | "
                        f"{r['threads']} | {r['bitstream_bytes']:,} | {e['wall_s']} ({e['cpu_s']}) | "
                        f"{e['peak_rss_mb']:.0f} | {d['wall_s']} ({d['cpu_s']}) | {d['peak_rss_mb']:.0f} | "
                        f"{target:.0f} | {e['load_before']:.0f} / {d['load_before']:.0f} |")
        for t, z in (m.get("zipnn") or {}).items():
            rows.append(f"| {m['label']} zipnn | | | {t} | {z['compressed_bytes']:,} | {z['encode']['wall_s']} "
                        f"({z['encode']['cpu_s']}) | {z['encode']['peak_rss_mb']:.0f} | {z['decode']['wall_s']} "
                        f"({z['decode']['cpu_s']}) | {z['decode']['peak_rss_mb']:.0f} | | "
                        f"{z['encode']['load_before']:.0f} / {z['decode']['load_before']:.0f} |")
        r = m.get("nncodec")
        if r and "error" not in r:
            rows.append(f"| {m['label']} NNCodec | | | 1 | {r['bitstream_bytes']:,} | {r['encode']['wall_s']} "
                        f"({r['encode']['cpu_s']}) | {r['encode']['peak_rss_mb']:.0f} | {r['decode']['wall_s']} "
                        f"({r['decode']['cpu_s']}) | {r['decode']['peak_rss_mb']:.0f} | | "
                        f"{r['encode']['load_before']:.0f} / {r['decode']['load_before']:.0f} |")
    rows += ["", "| model | encode 1 thread s | encode 2 threads s | speed-up | decode 1 thread s | "
             "decode 2 threads s | speed-up | bytes identical |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for m in results["models"]:
        by = {r["threads"]: r for r in m["runs"]}
        if 1 in by and 2 in by:
            e1, e2, d1, d2 = (by[t][w]["wall_s"] for w in ("encode", "decode") for t in (1, 2))
            rows.append(f"| {m['label']} | {e1} | {e2} | **{e1 / e2:.2f}x** | {d1} | {d2} | **{d1 / d2:.2f}x** | "
                        f"{'yes' if m.get('identical_across_threads') else 'NO'} |")
    return "\n".join(rows)


def plot(results: dict) -> None:
    """CPU seconds (the machine was loaded: wall time would show the load) and peak RSS against size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = sorted((m for m in results["models"] if m["label"].startswith("llm") and " " not in m["label"]),
                 key=lambda m: m["checkpoint"]["parameters"])
    if not pts:
        return
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = [m["checkpoint"]["parameters"] / 1e9 for m in pts]
    for t in sorted({r["threads"] for m in pts for r in m["runs"]}):
        for what, style in (("encode", "-o"), ("decode", "--s")):
            ys = [next(r[what]["cpu_s"] for r in m["runs"] if r["threads"] == t) for m in pts]
            ms = [next(r[what]["peak_rss_mb"] for r in m["runs"] if r["threads"] == t) for m in pts]
            ax[0].plot(xs, ys, style, label=f"nnc {what}, {t} thread(s)")
            ax[1].plot(xs, ms, style, label=f"nnc {what}, {t} thread(s)")
    zs = [(m["checkpoint"]["parameters"] / 1e9, m["zipnn"]) for m in pts if "zipnn" in m]
    if zs:
        zs = [(x, {int(k): v for k, v in z.items()}) for x, z in zs]
        t = max(zs[0][1])
        ax[0].plot([x for x, _ in zs], [z[t]["encode"]["cpu_s"] for _, z in zs], ":^", label="zipnn compress")
        ax[1].plot([x for x, _ in zs], [z[t]["encode"]["peak_rss_mb"] for _, z in zs], ":^",
                   label="zipnn compress (whole shard)")
    ax[1].plot(xs, [3 * 4 * m["checkpoint"]["largest"] / 2**20 + 256 for m in pts], "x-", color="grey", lw=0.8,
               label="target: 3x largest tensor (float32) + 256 MB")
    for m in results["models"]:
        if m["label"] == "huge1_scan0":
            r = m["runs"][0]
            ax[1].plot([m["checkpoint"]["parameters"] / 1e9], [r["encode"]["peak_rss_mb"]], "*", ms=12, color="k",
                       label="embedding alone (131 M), encode")
    ax[0].set_xlabel("parameters (billions, bfloat16)")
    ax[0].set_ylabel("CPU seconds (user + sys)")
    ax[1].set_xlabel("parameters (billions, bfloat16)")
    ax[1].set_ylabel("peak RSS (MB, VmHWM)")
    for a_ in ax:
        a_.grid(alpha=0.3)
        a_.legend(fontsize=7)
    fig.suptitle("nnc on synthetic LLM-shaped bf16 checkpoints (2 cores): CPU seconds and peak RSS against size")
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0.1,0.5,1.0")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--work", default="/tmp/nnc_bench_scale")
    ap.add_argument("--no-huge", action="store_true")
    ap.add_argument("--no-zipnn", action="store_true")
    ap.add_argument("--nncodec-max", type=float, default=0.1, help="largest size NNCodec is run at (0: never)")
    ap.add_argument("--lossless", action="store_true", help="also code the 0.1 B model's bit patterns as int16")
    ap.add_argument("--table", action="store_true", help="only: print the markdown table of --out")
    ap.add_argument("--entry-cost", action="store_true", help="only: the byte cost of entry points")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--repeats", type=int, default=1, help="runs per nnc measurement; the fastest is kept")
    ap.add_argument("--huge-only", action="store_true", help="only the single-tensor models")
    a = ap.parse_args()
    if a.table:
        with open(a.out) as f:
            res = json.load(f)
        print(table(res))
        plot(res)
        return
    if a.entry_cost:
        res = entry_point_cost()
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        return
    threads = [int(t) for t in a.threads.split(",")]
    os.makedirs(a.work, exist_ok=True)
    results = {"machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))},
               "threads": threads, "models": []}
    if os.path.exists(a.out):
        with open(a.out) as f:
            old = json.load(f)
        results["models"] = [m for m in old.get("models", [])]
    env_note = os.environ.get("NNC_BENCH_NOTE")
    if env_note:
        results["note"] = env_note

    def keep(m):
        results["models"] = [x for x in results["models"] if x["label"] != m["label"]] + [m]
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)

    for size in ([] if a.huge_only else [float(s) for s in a.sizes.split(",") if s]):
        label = f"llm{size:g}B"
        folder = os.path.join(a.work, label)
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        ck = write_checkpoint(folder, llm_layout(size))
        print(f"{label}: {ck} written in {time.perf_counter() - t0:.0f} s", flush=True)
        m = bench_model(label, folder, a.work, threads, zipnn_on=not a.no_zipnn, repeats=a.repeats)
        m["checkpoint"] = ck
        if a.lossless and size <= 0.1:
            m["lossless_int16"] = lossless_int(folder, a.work)
            for v, r in m["lossless_int16"].items():
                print(f"  lossless {v}: {r['bitstream_bytes']:,} B of {r['input_bytes']:,} "
                      f"(x{r['input_bytes'] / r['bitstream_bytes']:.3f}), {r['encode']['wall_s']} s", flush=True)
        if size <= a.nncodec_max and os.path.exists(REF_PY):
            try:
                r = run_nncodec(folder, a.work)
                os.remove(r.pop("_bitstream"))
                m["nncodec"] = r
                print(f"  NNCodec: enc {r['encode']['wall_s']} s {r['encode']['peak_rss_mb']} MB | dec "
                      f"{r['decode']['wall_s']} s {r['decode']['peak_rss_mb']} MB | {r['bitstream_bytes']:,} B",
                      flush=True)
            except Exception as e:  # noqa: BLE001 - recorded: where NNCodec does not survive
                m["nncodec"] = {"error": str(e)[-500:]}
                print(f"  NNCodec failed: {str(e)[-300:]}", flush=True)
        keep(m)
        shutil.rmtree(folder, ignore_errors=True)
    if not a.no_huge:
        folder = os.path.join(a.work, "huge1")
        shutil.rmtree(folder, ignore_errors=True)
        ck = write_checkpoint(folder, [EMB, ("model.norm.weight", (4096,))])
        for label, extra in (("huge1_scan0", ()), ("huge1_scan2", ("--scan-order", "2", "--no-row-skipping"))):
            m = bench_model(label, folder, a.work, threads, extra_enc=extra, zipnn_on=False, repeats=a.repeats)
            m["checkpoint"] = ck
            keep(m)
        shutil.rmtree(folder, ignore_errors=True)
    plot(results)
    print(table(results))
    print(json.dumps({m["label"]: [(r["threads"], r["encode"]["wall_s"], r["decode"]["wall_s"]) for r in m["runs"]]
                      for m in results["models"]}))


if __name__ == "__main__":
    main()
