"""Hostile inputs ("bombs") by attack class, for benchmarks/bench_bombs.py and tests/security/.

Every builder returns bytes (a bitstream or a model file's content) that a stranger could send. They are
built from nnc's own writer plus a few byte patches; nothing here is imported by nnc itself.

Each entry of :data:`BITSTREAM_BOMBS` is ``name -> (builder, description)``; :func:`run_child` runs one entry
point on one input in a fresh interpreter and reports the outcome, peak RSS and CPU time.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

import nnc  # noqa: E402  (the nnc on PYTHONPATH: bench_bombs.py --root compares checkouts)
from nnc import bitstream as bs  # noqa: E402
from nnc.bitstream import bits as _bits  # noqa: E402

# bench_bombs.py --root also runs these against older checkouts, whose parsed units re-serialise themselves
_write_units = getattr(bs, "write_bitstream", None) or (lambda units: b"".join(u.to_bytes() for u in units))

MB = 1 << 20


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fast_writer():
    """BitWriter keeps its bits in one Python int (fine for real headers, quadratic for a 1 MB header):
    collect the pieces in a list while building bombs."""
    cls = _bits.BitWriter
    saved = cls.__init__, cls._put, cls.getvalue

    def __init__(self):
        self.acc = []
        self.nbits = 0

    def _put(self, n, v):
        self.acc.append(format(v, f"0{n}b") if n else "")
        self.nbits += n

    def getvalue(self):
        if self.nbits & 7:
            raise nnc.ConfigError("syntax structure does not end on a byte boundary")
        s = "".join(self.acc)
        return int(s, 2).to_bytes(len(s) // 8, "big") if s else b""

    cls.__init__, cls._put, cls.getvalue = __init__, _put, getvalue
    try:
        yield
    finally:
        cls.__init__, cls._put, cls.getvalue = saved


def _head(profile=1, parent=False, topology=None):
    return (bs.start_unit(profile) + bs.mps_unit(profile=profile, qp_density=2, parent_signalling=parent)
            + bs.tpl_unit(topology if topology is not None else nnc.Topology()))


def _ndu(shape, name="w", payload=b"\x00" * 4, ptype=bs.PayloadType.NNR_PT_FLOAT, scan_order=None, **kw):
    h = bs.NduHeaderSpec(payload_type=ptype, name=name, shape=tuple(shape), dq_flag=kw.pop("dq_flag", False),
                         unary_length_minus1=10,
                         scan_order=scan_order if scan_order is not None else (0 if len(shape) > 1 else None),
                         **kw)
    return bs.ndu_unit(h, payload, profile=1)


def patch_last_ndu(data: bytes, **fields) -> bytes:
    p = bs.parse(data)
    u = p.units[-1]
    raw = bs.write_unit(replace(u.body, **fields), context=u.context, payload=bytes(u.payload))
    return _write_units(p.units[:-1]) + raw


def _zeros_stream(rows, cols, dtype=np.float32, name="w"):
    """A valid all-zero tensor of rows x cols: encoded at 4 x 8, then the header patched (every row is
    skipped, so the payload does not depend on the width)."""
    small = nnc.encode({name: np.zeros((rows if rows <= 64 else 4, 8), dtype)})
    return patch_last_ndu(small, tensor_dimensions=[rows, cols])


# ------------------------------------------------------------------------------------------------------
# bitstream bombs
# ------------------------------------------------------------------------------------------------------
def amplify_float64(limit=1 << 30):
    """~45 bytes claiming an all-zero float64 tensor of half the limit (decodes: output + levels fit)."""
    cols = (limit // 16) // 4
    return _zeros_stream(4, cols, np.float64)


def amplify_over_limit(limit=1 << 30):
    """An all-zero float32 tensor whose output alone is 2x the limit."""
    return _zeros_stream(4, (2 * limit // 4) // 4)


def many_tensors(limit=1 << 30):
    """Many small NDUs, each an all-zero tensor of limit/16 bytes: together 4x the limit."""
    one = _zeros_stream(4, (limit // 16) // 16)
    head_len = len(_head())
    ndu = one[head_len:]
    p = bs.parse(one)
    u = p.units[-1]
    out = [one[:head_len]]
    for i in range(64):
        out.append(bs.write_unit(replace(u.body, topology_elem_id=f"w{i}"), context=u.context,
                                 payload=bytes(u.payload)))
    del ndu
    return b"".join(out)


def dense_codebook(size_bytes=MB, codebook_size=1 << 16):
    """NDUs carrying a codebook of ``codebook_size`` entries whose deltas cost one bit each."""
    cb = bs.Codebook(codebook_egk=0, codebook_size=codebook_size, codebook_center_offset=0, codebook_zero_value=0,
                     codebook_delta_left=[0] * (codebook_size >> 1),
                     codebook_delta_right=[0] * (codebook_size - 1 - (codebook_size >> 1)))
    with fast_writer():
        one = _ndu((16, 16), codebook=cb)
    return _head() + one * max(1, size_bytes // len(one))


def codebook_overflow(size_bytes=330 * 1024):
    """A codebook whose values pass 2**63 (the deltas are large exp-Golomb codes)."""
    right = max(2, size_bytes * 8 // 80)            # each delta is an 80-bit ue(15) code of about 2**48
    n = right + 1                                   # CbZeroOffset 0: every entry right of the zero value
    big = (1 << 48) - (1 << 16)
    cb = bs.Codebook(codebook_egk=15, codebook_size=n, codebook_center_offset=-(n >> 1), codebook_zero_value=0,
                     codebook_delta_left=[], codebook_delta_right=[big] * (n - 1))
    with fast_writer():
        return _head() + _ndu((4, 4), codebook=cb)


def entry_points(size_bytes=MB):
    """One NDU whose header is a ~1 MB cabac_entry_point_list (a tall 2-wide tensor at scan order 1)."""
    n = size_bytes * 8 // 16
    rows = 8 * (n + 1)
    eps = [(0, 0, 0)] * n
    with fast_writer():
        return _head() + _ndu((rows, 2), scan_order=1, entry_points=eps)


def many_units(size_bytes=MB, model=None, config=None):
    """As many minimal NDUs as fit (one element each, or ``model``'s last NDU coded with ``config``)."""
    one = nnc.encode(model or {"a": np.zeros(1, np.float32)}, config)
    ndu = one[len(_head()):]
    n = size_bytes // len(ndu)
    p = bs.parse(one)
    u = p.units[-1]
    units = [bs.write_unit(replace(u.body, topology_elem_id=f"{i:x}"), context=u.context, payload=bytes(u.payload))
             for i in range(min(n, 1 << 20))]
    return one[:len(_head())] + b"".join(units)


def codebook_units(size_bytes=MB):
    """As many minimal codebook NDUs (16 elements, 2 codebook entries) as fit: each is dearer to plan, decode
    and describe than a plain one-element NDU."""
    return many_units(size_bytes, {"a": np.array([0.5, 1.0] * 8, np.float32)}, nnc.EncoderConfig(codebook="force"))


def damaged_units(size_bytes=MB // 4):
    """Many short NDUs whose headers fail to parse (each a located error in inspect/check, which go on)."""
    one = nnc.encode({"a": np.zeros(1, np.float32)})
    ndu = one[len(_head()):]
    bad = bytes([0, 6]) + ndu[2:3] + b"\xff\xff\xff"
    return _head() + bad * min(size_bytes // len(bad), 1 << 16)


def duplicate_mps(size_bytes=MB // 4):
    """The stream's NNR_MPS repeated: each copy an ordering violation."""
    head = _head()
    mps = head[len(bs.start_unit(1)):len(head) - len(bs.tpl_unit(nnc.Topology()))]
    return head + mps * min(size_bytes // len(mps), 1 << 16)


def performance_maps(size_bytes=MB):
    """An MPS whose decomposition performance map holds ~1 MB of float32 class accuracies."""
    per = 65535
    entries = max(1, min(254, size_bytes // (per * 4)))
    dpm = {"dpm_count_thresholds": entries + 1,
           "entries": [dict(mse_threshold=0.0, dpm_nn_accuracy=0.0, nn_reduction_ratio=0.0, dpm_count_classes=per,
                            dpm_nn_class_accuracy=[0.0] * per) for _ in range(entries)]}
    with fast_writer():
        mps = bs.mps_unit(profile=1, qp_density=2, parent_signalling=False, mps_decomposition_performance_map_flag=1,
                          decomposition_performance_map=dpm)
    return bs.start_unit(1) + mps + bs.tpl_unit(nnc.Topology())


def element_names(size_bytes=MB):
    """A REFLIST topology unit listing ~500K one-character names."""
    n = size_bytes // 2
    names = [chr(97 + i % 26) for i in range(n)]
    body = bs.TopologyUnit(topology_storage_format=int(bs.TopologyStorageFormat.NNR_TPL_REFLIST),
                           topology_compression_format=0, count_topology_elements_minus2=n - 2,
                           topology_elem_id_list=names)
    ctx = bs.parse(bs.start_unit(1) + bs.mps_unit(profile=1, qp_density=2, parent_signalling=False)).context
    with fast_writer():
        tpl = bs.write_unit(body, context=ctx)
    return bs.start_unit(1) + bs.mps_unit(profile=1, qp_density=2, parent_signalling=False) + tpl


def deflate_topology(expanded=1 << 30):
    """A deflate-compressed NNR_TPL that inflates to ``expanded`` bytes of '{' (about 1 MB on the wire)."""
    co = zlib.compressobj(9)
    chunk = b" " * MB
    parts = [co.compress(chunk) for _ in range(expanded // MB)]
    parts.append(co.flush())
    topo = nnc.Topology(int(bs.TopologyStorageFormat.NNR_TPL_PYT), int(bs.TopologyCompressionFormat.NNR_DFL),
                        b"".join(parts))
    return _head(topology=topo) + nnc.encode({"w": np.ones(4, np.float32)})[len(_head()):]


def hostile_topology_json():
    """A converters topology record with wrong types everywhere (dtypes a list, shapes of strings...)."""
    rec = b'{"nnc_converters":1,"source_format":"pytorch","dtypes":[1,2],"shapes":{"w":"abc"},"tied":7}'
    topo = nnc.Topology(int(bs.TopologyStorageFormat.NNR_TPL_PYT), 0, rec)
    return _head(topology=topo) + nnc.encode({"w": np.ones(4, np.float32)})[len(_head()):]


def deep_topology_json(depth=200_000):
    rec = b'{"nnc_converters":1,"source_format":"pytorch","extra":' + b"[" * depth + b"]" * depth + b"}"
    topo = nnc.Topology(int(bs.TopologyStorageFormat.NNR_TPL_PYT), 0, rec)
    return _head(topology=topo) + nnc.encode({"w": np.ones(4, np.float32)})[len(_head()):]


def int_as_float16():
    """An integer tensor (lossless) with nnr_decompressed_data_format = float16 and values beyond 65504."""
    data = nnc.encode({"w": np.array([[70000, -1], [3, 100000]], np.int32)})
    return patch_last_ndu(data, nnr_decompressed_data_format_present_flag=1, nnr_decompressed_data_format=8)


def inspect_amplify(limit=1 << 30):
    """Tiny stream whose NDUs claim 4x the limit in int32 levels (inspect/check decode every payload)."""
    return many_tensors(limit)


BITSTREAM_BOMBS = {
    "amplify_float64": (amplify_float64, "42-byte all-zero float64 tensor of limit/2"),
    "amplify_over_limit": (amplify_over_limit, "42-byte tensor claiming 2x the limit"),
    "many_tensors": (many_tensors, "64 zero tensors of limit/16 each (4x the limit)"),
    "dense_codebook": (dense_codebook, "1 MB of 65536-entry codebooks, 1 bit per delta"),
    "codebook_overflow": (codebook_overflow, "330 KB codebook with values beyond 2^63"),
    "entry_points": (entry_points, "1 MB cabac_entry_point_list"),
    "many_units": (many_units, "1 MB of one-element NDUs"),
    "codebook_units": (codebook_units, "1 MB of minimal codebook NDUs (43K)"),
    "damaged_units": (damaged_units, "256 KB of NDUs whose headers do not parse (43K units)"),
    "duplicate_mps": (duplicate_mps, "256 KB of repeated NNR_MPS units (33K)"),
    "performance_maps": (performance_maps, "1 MB MPS decomposition performance map"),
    "element_names": (element_names, "1 MB REFLIST of 500K names"),
    "deflate_topology": (deflate_topology, "1 MB NNR_TPL deflating to 1 GiB"),
    "hostile_topology_json": (hostile_topology_json, "topology record with wrong JSON types"),
    "deep_topology_json": (deep_topology_json, "topology record nested 200,000 deep"),
    "int_as_float16": (int_as_float16, "int tensor signalled as float16, values > 65504"),
}


# ------------------------------------------------------------------------------------------------------
# running one entry point on one input in a fresh interpreter
# ------------------------------------------------------------------------------------------------------
_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import nnc
path, entry, limit, strict = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"

def peak():
    # this process image's own high-water mark: ru_maxrss survives exec, so it would report the parent's
    # peak (a pytest process that loaded torch) when that is larger
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

cfg = nnc.DecoderConfig.strict(max_total_bytes=limit) if strict else nnc.DecoderConfig(max_total_bytes=limit)
def calibrate():
    # a fixed pure-Python workload: its CPU time tells how contended this core is while the child runs
    t = cpu()
    x = 0
    for i in range(1_000_000):
        x += i
    return cpu() - t

calib = calibrate()
base_rss, base_cpu = peak(), cpu()
out = {"baseline_rss": base_rss, "calib_s": calib}
try:
    if entry == "decode":
        data = open(path, "rb").read()
        r = nnc.decode(data, cfg)
        out["result"] = f"{len(r)} tensors, {sum(a.nbytes for a in r.values())} bytes"
    elif entry == "inspect":
        data = open(path, "rb").read()
        info = nnc.inspect(data, config=cfg)
        out["result"] = f"{len(info.units)} units, {sum(len(u.errors) for u in info.units)} errors"
    elif entry == "check":
        data = open(path, "rb").read()
        rep = nnc.check(data, config=cfg)
        out["result"] = f"ok={rep.ok}, {len(rep.violations)} violations"
    elif entry.startswith("cli-"):
        from nnc.cli import main
        cmd = entry[4:]
        argv = [cmd, path, "--max-memory", str(limit)] + (["--strict"] if strict else [])
        if cmd == "decode":
            argv += ["-o", path + ".out.npz"]
        import contextlib, io
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
        out["result"] = out["outcome"] = f"exit {rc}"
    elif entry == "load":
        from nnc import converters
        m = converters.load_model(path)
        out["result"] = f"{len(m.tensors)} tensors"
    else:
        raise SystemExit(f"unknown entry {entry}")
    out.setdefault("outcome", "ok")
except nnc.NNCError as e:
    out["outcome"] = type(e).__name__
    out["message"] = str(e)[:300]
except BaseException as e:
    out["outcome"] = "CRASH " + type(e).__name__
    out["message"] = str(e)[:300]
out["peak_rss"] = peak()
out["cpu_s"] = cpu() - base_cpu
print(json.dumps(out))
"""


def run_child(path, entry="decode", limit=1 << 30, strict=True, timeout=300, root=None) -> dict:
    """Run ``entry`` on the file ``path`` in a fresh interpreter; peak RSS from the child's own getrusage.
    ``root``: the checkout whose nnc runs (default: the one imported here)."""
    root = root or Path(nnc.__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(path), entry, str(limit),
                            "1" if strict else "0"], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"outcome": f"TIMEOUT after {timeout} s", "peak_rss": None, "cpu_s": timeout}
    lines = [x for x in r.stdout.strip().splitlines() if x.startswith("{")]
    if not lines:
        return {"outcome": f"DIED rc={r.returncode}", "message": r.stderr[-300:], "peak_rss": None, "cpu_s": None}
    return json.loads(lines[-1])
