"""Streaming, threads, bfloat16 and entry points (issue 16)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import nnc
import nnc.converters as C
from nnc import bitstream as bs
from nnc import deepcabac

ROOT = Path(nnc.__file__).resolve().parents[1]
BF16 = ml_dtypes.bfloat16


def _weights(seed=0, scale=0.02):
    rng = np.random.default_rng(seed)
    return {"emb": (rng.standard_normal((300, 40)) * scale).astype(np.float32),
            "l0.w": (rng.standard_normal((96, 40)) * scale).astype(np.float32),
            "l0.b": np.zeros(96, np.float32),
            "steps": np.arange(7, dtype=np.int64),
            "l1.w": (rng.standard_normal((40, 96)) * scale).astype(np.float32)}


def _write_bf16_safetensors(path, tensors):
    """A safetensors file written by hand (bfloat16 bit patterns), without torch."""
    header, off, blobs = {}, 0, []
    for k, v in tensors.items():
        st = {"bfloat16": "BF16", "float32": "F32", "int64": "I64"}[str(v.dtype)]
        data = np.ascontiguousarray(v).view(np.uint8).tobytes()
        header[k] = {"dtype": st, "shape": list(v.shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb + b"".join(blobs))


def test_threads_default_to_every_cpu_and_do_not_change_the_bytes(tmp_path):
    assert nnc.EncoderConfig().threads is None and nnc.DecoderConfig().threads is None
    w = _weights()
    one = nnc.encode(w, nnc.EncoderConfig(threads=1))
    assert nnc.encode(w) == one
    assert nnc.encode(w, nnc.EncoderConfig(threads=3)) == one
    # written unit by unit to a file: the same bytes
    summary = nnc.Encoder(nnc.EncoderConfig(threads=2)).encode_to(tmp_path / "w.nnc", w)
    assert (tmp_path / "w.nnc").read_bytes() == one
    assert summary.bitstream_bytes == len(one) and summary.tensors == 5
    assert summary.parameters == sum(a.size for a in w.values())
    with pytest.raises(nnc.ConfigError):
        nnc.EncoderConfig(threads=0)


def test_decoder_stream_from_a_path_matches_decode_and_lists_entries_first(tmp_path):
    w = _weights()
    data = nnc.encode(w)
    (tmp_path / "w.nnc").write_bytes(data)
    stream = nnc.Decoder(nnc.DecoderConfig(threads=2)).stream(tmp_path / "w.nnc", levels=False)
    assert [e[0] for e in stream.entries] == list(w)
    assert [e[1] for e in stream.entries] == [a.shape for a in w.values()]
    ref = nnc.decode(data)
    got = {t.name: t.array for t in stream}
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k


def test_encode_reads_a_lazy_mapping_one_tensor_at_a_time():
    """No tensor is read before a worker codes it, and each is read once (threads=1: strictly in order)."""
    w = _weights()
    log = []

    class Lazy(dict):
        def __getitem__(self, k):
            log.append(k)
            return dict.__getitem__(self, k)

        def items(self):
            raise AssertionError("the encoder must not iterate the values")

        def values(self):
            raise AssertionError("the encoder must not iterate the values")

        def dtype_names(self):
            return {k: str(v.dtype) for k, v in dict.items(self)}

    units = nnc.Encoder(nnc.EncoderConfig(threads=1)).iter_units(Lazy(w))
    assert log == []
    first = [next(units) for _ in range(4)]           # STR, MPS, TPL, first NDU
    assert log == ["emb"] and first[-1][2:3] != b""
    rest = list(units)
    assert log == list(w)
    assert b"".join(first + rest) == nnc.encode(w)


def test_bfloat16_arrays_are_coded_from_their_bits_and_come_back_as_bfloat16():
    w = _weights()
    wb = {k: (v.astype(BF16) if v.dtype == np.float32 else v) for k, v in w.items()}
    data = nnc.encode(wb)
    widened = nnc.encode({k: (v.astype(np.float32) if v.dtype == BF16 else v) for k, v in wb.items()})
    # the NDUs are those of the same values in float32; only the TPL unit names the bfloat16 tensors
    ndus = [bs.write_unit(u) for u in bs.parse(data) if u.nnr_unit_type == bs.UnitType.NNR_NDU]
    ndus_f32 = [bs.write_unit(u) for u in bs.parse(widened) if u.nnr_unit_type == bs.UnitType.NNR_NDU]
    assert ndus == ndus_f32
    rec = json.loads(bytes(bs.parse(data).topology.data))
    assert rec["dtypes"] == {"emb": "bfloat16", "l0.w": "bfloat16", "l0.b": "bfloat16", "l1.w": "bfloat16"}
    out = nnc.decode(data)
    assert out["emb"].dtype == BF16 and out["steps"].dtype == np.int64
    f32 = nnc.decode(widened)
    assert np.array_equal(out["emb"], f32["emb"].astype(BF16))
    assert nnc.check(data).ok


def test_open_model_is_lazy_and_codes_the_same_bytes_as_load_model(tmp_path):
    w = _weights()
    wb = {k: (v.astype(BF16) if v.dtype == np.float32 else v) for k, v in w.items()}
    folder = tmp_path / "m"
    folder.mkdir()
    names = list(wb)
    _write_bf16_safetensors(folder / "model-00001-of-00002.safetensors", {k: wb[k] for k in names[:2]})
    _write_bf16_safetensors(folder / "model-00002-of-00002.safetensors", {k: wb[k] for k in names[2:]})
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors"
                                            for i, k in enumerate(names)}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    lazy = C.open_model(folder)
    assert isinstance(lazy.tensors, C.LazyTensors)
    assert lazy.tensors["emb"].dtype == BF16             # not widened
    eager = C.load_model(folder)
    assert lazy.topology == eager.topology
    assert (nnc.Encoder().encode_to(tmp_path / "a.nnc", lazy.tensors, topology=lazy.topology).bitstream_bytes
            == len(nnc.encode(eager.tensors, topology=eager.topology)))
    assert (tmp_path / "a.nnc").read_bytes() == nnc.encode(eager.tensors, topology=eager.topology)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "nnc.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_cli_decodes_to_a_sharded_hugging_face_folder(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy")
    w = _weights()
    wb = {k: (v.astype(BF16) if v.dtype == np.float32 else v) for k, v in w.items()}
    _write_bf16_safetensors(tmp_path / "in.safetensors", wb)
    r = _cli("encode", str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "m.nnc"), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["input_bytes"] == sum(a.nbytes for a in wb.values())   # bfloat16 counted at 2 bytes
    r = _cli("decode", str(tmp_path / "m.nnc"), "-o", str(tmp_path / "out") + "/", "--shard-size", "20KB")
    assert r.returncode == 0, r.stderr
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and sorted(index["weight_map"]) == sorted(w)
    assert shards == sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    ref = nnc.decode((tmp_path / "m.nnc").read_bytes())
    for name, shard in index["weight_map"].items():
        with open(tmp_path / "out" / shard, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        assert header[name]["dtype"] == ("BF16" if name != "steps" else "I64")
        got = C.load_model(tmp_path / "out" / shard).tensors[name]
        assert got.dtype == ref[name].dtype and np.array_equal(got, ref[name]), name
    # the folder is a checkpoint nnc (and Hugging Face) reads as it is
    again = C.load_model(tmp_path / "out")
    assert list(again.tensors) == list(w)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in wb.values())
    # one file: the same tensors
    r = _cli("decode", str(tmp_path / "m.nnc"), "-o", str(tmp_path / "one.safetensors"))
    assert r.returncode == 0, r.stderr
    one = C.load_model(tmp_path / "one.safetensors").tensors
    assert all(np.array_equal(one[k], ref[k]) for k in ref)
    del safetensors


def test_streaming_decode_leaves_nothing_on_error(tmp_path):
    w = _weights()
    data = bytearray(nnc.encode(w))
    data[-3] ^= 0xFF                                     # corrupt the last NDU's payload
    (tmp_path / "bad.nnc").write_bytes(bytes(data))
    r = _cli("decode", str(tmp_path / "bad.nnc"), "-o", str(tmp_path / "out") + "/", "--shard-size", "10KB")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def _entry_point_model(seed=1):
    rng = np.random.default_rng(seed)
    return {"big": (rng.standard_normal((200, 48)) * 0.05).astype(np.float32),
            "tall": (rng.standard_normal((130, 3, 3)) * 0.05).astype(np.float32),
            "bias": rng.standard_normal(200).astype(np.float32) * 0.01}


@pytest.mark.parametrize("cfg", [dict(scan_order=2, dq=True, row_skipping=False),
                                 dict(scan_order=1, dq=False, row_skipping=True),
                                 dict(scan_order=3, dq=True, row_skipping=False, param_opt=False)])
def test_entry_points_are_written_and_decoded_in_parallel(cfg, monkeypatch):
    w = _entry_point_model()
    data = nnc.encode(w, nnc.EncoderConfig(qp=-36, **cfg))
    heads = {u.body.topology_elem_id: u.body for u in bs.parse(data) if u.nnr_unit_type == bs.UnitType.NNR_NDU}
    b = 4 << cfg["scan_order"]
    assert len(heads["big"].cabac_entry_point_list) == math.ceil(200 / b) - 1
    seen = []
    real = deepcabac._decode      # under decode_payload and decode_levels (what nnc.decode calls)

    def spy(*a, **k):
        outs, info, consumed = real(*a, **k)
        seen.append([t.parallel for t in info])
        return outs, info, consumed

    monkeypatch.setattr(deepcabac, "_decode", spy)
    par = nnc.decode(data, nnc.DecoderConfig(threads=4))
    assert [True] in seen                                # "big" decoded block row by block row in parallel
    seq = nnc.decode(data, nnc.DecoderConfig(threads=1))
    for k in w:
        assert np.array_equal(par[k], seq[k]), k


@pytest.mark.reference
def test_reference_decodes_entry_point_streams_to_the_same_arrays(reference):
    w = _entry_point_model(2)
    streams = [nnc.encode(w, nnc.EncoderConfig(qp=-36, scan_order=s, dq=dq, row_skipping=rs))
               for s, dq, rs in ((1, False, True), (2, True, False), (4, True, False))]
    outs = reference.decode_many(streams)
    for data, ref in zip(streams, outs):
        mine = nnc.decode(data, nnc.DecoderConfig(threads=3))
        assert list(ref) == list(mine)
        for k in mine:
            assert np.array_equal(np.asarray(ref[k], np.float32), mine[k].astype(np.float32)), k


def _peak_mb(args) -> float:
    """VmHWM (MB) of a process running ``nnc`` with ``args`` (none: imports only), read by itself at exit (wait4's
    ru_maxrss would include the high-water mark of this test process, inherited through fork)."""
    code = ("import atexit, sys\n"
            "def hwm():\n"
            "    kb = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
            "    sys.stdout.write(f'\\nHWM {kb}\\n')\n"
            "atexit.register(hwm)\n"
            "import nnc.cli, nnc.converters, nnc.codec\n"
            "if len(sys.argv) > 1: sys.exit(nnc.cli.main(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.strip().splitlines()[-1].split()[1]) / 1024


def test_peak_memory_does_not_grow_with_the_model(tmp_path):
    """Encode and decode of a 32-tensor bfloat16 file (128 MB as float32, 64 MB as stored) in subprocesses: the
    peak RSS above an idle interpreter with nnc imported stays below 3x the largest tensor's float32 size + 40 MB
    (2 threads: up to 3 tensors' levels and outputs in flight), well under the model's size (the whole-model
    path held every input, plan and output)."""
    rng = np.random.default_rng(0)
    tensors = {f"layer{i}.w": (rng.standard_normal((1024, 1024), dtype=np.float32) * 0.02).astype(BF16)
               for i in range(32)}
    _write_bf16_safetensors(tmp_path / "m.safetensors", tensors)
    del tensors
    peak = _peak_mb
    idle = peak([])
    fast = ["--no-dq", "--no-param-opt", "--qp", "-30", "--threads", "2", "--no-verify", "--quiet"]
    enc = peak(["encode", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "m.nnc"), *fast])
    dec = peak(["decode", str(tmp_path / "m.nnc"), "-o", str(tmp_path / "d.safetensors"), "--threads", "2"])
    largest_f32 = 4 * 1024 * 1024 / 2**20
    bound = 3 * largest_f32 + 40
    print(f"idle {idle:.0f} MB, encode {enc:.0f} MB, decode {dec:.0f} MB, bound +{bound:.0f} MB")
    assert enc - idle < bound, (idle, enc)
    assert dec - idle < bound, (idle, dec)


def test_cli_encode_does_not_read_the_whole_model_to_check_its_flags(tmp_path):
    """--qp / --nonweight-qp are checked against the tensors' dtypes and ranks from the headers: 128 tensors
    (64 MB of bfloat16) are never all in memory (they were, held in a list, before encoding started)."""
    rng = np.random.default_rng(1)
    one = (rng.standard_normal((512, 512), dtype=np.float32) * 0.02).astype(BF16)
    _write_bf16_safetensors(tmp_path / "m.safetensors", {f"l{i}.w": one for i in range(128)})
    idle = _peak_mb([])
    enc = _peak_mb(["encode", tmp_path / "m.safetensors", "-o", tmp_path / "m.nnc", "--qp", "-30",
                    "--nonweight-qp", "-40", "--no-dq", "--no-param-opt", "--threads", "1", "--no-verify",
                    "--quiet"])
    assert enc - idle < 32, (idle, enc)      # the model is 64 MB; one tensor is 0.5 MB (1 MB as float32)


def test_streaming_safetensors_output_restores_tied_and_0d_tensors(tmp_path):
    rng = np.random.default_rng(3)
    shared = rng.standard_normal((20, 8)).astype(np.float32)
    lm = C.load_model({"emb": shared, "step": np.array(5, np.int64), "head": shared,
                       "w": rng.standard_normal((4, 8)).astype(BF16)})
    assert "head" not in lm.tensors                       # tied: coded once
    (tmp_path / "m.nnc").write_bytes(nnc.encode(lm.tensors, topology=lm.topology))
    stream = nnc.Decoder().stream(tmp_path / "m.nnc", levels=False)
    C.save_model_streaming(tmp_path / "out.safetensors", stream)
    eager = C.restore_tensors(nnc.decode((tmp_path / "m.nnc").read_bytes()), lm.topology)
    got = C.load_model(tmp_path / "out.safetensors").tensors
    rec = json.loads(bytes(C.load_model(tmp_path / "out.safetensors").topology.data) or b"{}")
    assert list(got) == list(eager) == ["emb", "step", "head", "w"]
    # the same file save_model writes from the whole decoded model
    C.save_model(tmp_path / "eager.safetensors", nnc.decode((tmp_path / "m.nnc").read_bytes()), lm.topology)
    assert (tmp_path / "out.safetensors").read_bytes() == (tmp_path / "eager.safetensors").read_bytes()
    assert np.array_equal(got["head"], eager["head"]) and np.array_equal(got["emb"], eager["emb"])
    assert rec.get("shapes", {}).get("step") == [] and got["step"].reshape(()) == 5
    assert str(got["w"].dtype) == "bfloat16" and np.array_equal(got["w"], eager["w"])


def _late_giant():
    """Four small tensors and a large one last: coded in input order, the large one would run alone at the end."""
    rng = np.random.default_rng(3)
    w = {f"small{i}": (rng.standard_normal((64, 32)) * 0.02).astype(np.float32) for i in range(4)}
    w["giant"] = (rng.standard_normal((512, 64)) * 0.02).astype(np.float32)
    return w


def test_a_large_tensor_late_in_the_model_is_coded_first_and_the_bytes_do_not_change():
    w = _late_giant()
    log = []

    class Lazy(dict):          # nnc.converters.open_model's shape: shapes() without reading a tensor
        def __getitem__(self, k):
            log.append(k)
            return dict.__getitem__(self, k)

        def shapes(self):
            return {k: list(v.shape) for k, v in dict.items(self)}

        def dtype_names(self):
            return {k: str(v.dtype) for k, v in dict.items(self)}

    data = b"".join(nnc.Encoder(nnc.EncoderConfig(threads=2)).iter_units(Lazy(w)))
    assert "giant" in log[:2], log
    assert sorted(log) == sorted(w)
    assert data == nnc.encode(w, nnc.EncoderConfig(threads=1))


def test_a_large_tensor_late_in_the_bitstream_is_decoded_first_and_yielded_in_order(monkeypatch):
    w = _late_giant()
    data = nnc.encode(w, nnc.EncoderConfig(threads=1))
    ref = nnc.decode(data, nnc.DecoderConfig(threads=1))
    sizes = []
    real = deepcabac.decode_levels

    def spy(payload, tensors, **kw):
        sizes.append(tensors[0].size)
        return real(payload, tensors, **kw)

    monkeypatch.setattr(deepcabac, "decode_levels", spy)
    got = [(t.name, t.array) for t in nnc.Decoder(nnc.DecoderConfig(threads=2)).stream(data, levels=False)]
    assert w["giant"].size in sizes[:2], sizes
    assert [k for k, _ in got] == list(w)
    for k, a in got:
        assert np.array_equal(a, ref[k]), k


def test_largest_first_schedule_stays_within_its_memory_cap():
    """Items started and not yet yielded never hold more than the cap plus one item (the next to yield may
    always start); the largest item that fits starts first; results come in input order."""
    import threading
    import time

    from nnc.codec import _ordered_map

    costs = [(10, 2), (10, 2), (50, 5), (10, 2), (40, 4), (10, 2), (10, 2), (60, 6)]
    cap = 70
    lock = threading.Lock()
    state = {"held": 0, "peak": 0}
    started = []

    def fn(i):
        with lock:
            started.append(i)
            state["held"] += costs[i][0]
            state["peak"] = max(state["peak"], state["held"])
        time.sleep(0.002 * costs[i][0] / 10)
        with lock:
            state["held"] += costs[i][1] - costs[i][0]
        return i

    order = []
    for i in _ordered_map(fn, list(range(len(costs))), 3, costs=costs, cap=cap):
        order.append(i)
        with lock:
            state["held"] -= costs[i][1]
    assert order == list(range(len(costs)))
    assert sorted(started) == order
    assert 7 in started[:2], started
    assert state["peak"] <= cap + max(c[0] for c in costs), state


def test_import_nnc_does_not_import_ml_dtypes_until_bfloat16_is_needed():
    """ml_dtypes takes ~1.5 s to import with numpy 2.4 (its ufunc loops): nnc loads it only for bfloat16."""
    code = ("import sys, numpy as np, nnc, nnc.converters, nnc.cli\n"
            "assert 'ml_dtypes' not in sys.modules\n"
            "w = {'a': np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)}\n"
            "out = nnc.decode(nnc.encode(w))\n"
            "assert 'ml_dtypes' not in sys.modules, 'float32 coding imported ml_dtypes'\n"
            "import ml_dtypes\n"
            "b = {'a': w['a'].astype(ml_dtypes.bfloat16)}\n"
            "assert nnc.decode(nnc.encode(b))['a'].dtype == ml_dtypes.bfloat16\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
