"""Issue 15 items 5-6: model files from strangers. Every failure is a ModelFormatError (or LimitExceededError
for the decoder budget) naming the file; work and memory stay bounded; nothing outside the model folder is read."""
import contextlib
import io
import os
import zipfile

import numpy as np
import pytest

from _bombs_path import MB
import bombs
import nnc
from nnc import converters
from nnc.cli import main as cli


def _npy(shape, dtype="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _limits(nbytes):
    from nnc.config import decoder_limits
    return decoder_limits(nnc.DecoderConfig(max_total_bytes=nbytes))


# -- garbage model files -------------------------------------------------------------------------------------
def test_npz_header_claiming_a_huge_array_is_a_model_format_error(tmp_path):
    p = tmp_path / "hdr.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("w.npy", _npy((10**12,)) + b"\0" * 16)      # 3.6 TiB claimed, 16 bytes present
    with pytest.raises(nnc.ModelFormatError, match="w.npy"):
        converters.load_model(str(p))


def test_garbage_model_files_are_model_format_errors(tmp_path):
    cases = {
        "garbage.pt": b"PK\x03\x04" + bytes(range(256)) * 2,
        "garbage.onnx": bytes(range(256)) * 3,
        "garbage.safetensors": (2**40).to_bytes(8, "little") + b"{}",
        "garbage.npz": b"PK\x03\x04\x14\x00" + bytes(range(200)),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "shape.npz", "w") as z:
        z.writestr("w.npy", _npy((3, 4)).replace(b"(3, 4)", b"(3, -4)") + b"\0" * 48)
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as z:       # header claims 2**40 elements
        z.writestr("w.npy", _npy((1 << 40,), "<f8") + b"\0" * 64)
    for p in sorted(tmp_path.iterdir()):
        with pytest.raises(nnc.ModelFormatError, match=p.name):
            converters.load_model(str(p))


def _safetensors(header: dict, body: bytes = b"") -> bytes:
    import json
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + body


@pytest.mark.parametrize("case", ["overlap", "shape_wraps", "float_shape", "bool_shape", "string_offsets"])
def test_hostile_safetensors_headers_are_model_format_errors(tmp_path, case):
    # the header is JSON a stranger writes: tensors overlapping one region (64 copies of 1 MB from a 1 MB file:
    # the reader loaded them all), a shape whose int64 product wraps to 0 (raw ValueError, exit 70), non-integer
    # shapes (2.5 read as 2, true as 1) and offsets ("8": raw TypeError, exit 70)
    f32 = lambda shape, offsets: {"dtype": "F32", "shape": shape, "data_offsets": offsets}  # noqa: E731
    data = {
        "overlap": _safetensors({f"t{i}": f32([1 << 18], [0, MB]) for i in range(64)}, b"\0" * MB),
        "shape_wraps": _safetensors({"a": f32([1 << 32, 1 << 32], [0, 0])}),
        "float_shape": _safetensors({"a": f32([2.5], [0, 8])}, b"\0" * 8),
        "bool_shape": _safetensors({"a": f32([True, 2], [0, 8])}, b"\0" * 8),
        "string_offsets": _safetensors({"a": f32([2], ["0", "8"])}, b"\0" * 8),
    }[case]
    p = tmp_path / f"{case}.safetensors"
    p.write_bytes(data)
    with pytest.raises(nnc.ModelFormatError, match=p.name):
        converters.load_model(str(p))
    err = io.StringIO()                               # the CLI reads tensor by tensor: the same error, exit 2
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert cli(["encode", str(p), "-o", str(tmp_path / "o.nnc"), "--quiet"]) == 2, err.getvalue()
    assert p.name in err.getvalue() and not (tmp_path / "o.nnc").exists()
    ok = tmp_path / "adjacent.safetensors"            # the same tensors side by side are a valid file
    ok.write_bytes(_safetensors({"a": f32([2], [0, 8]), "b": f32([2], [8, 16])}, np.arange(4, dtype="<f4").tobytes()))
    assert converters.load_model(str(ok)).tensors["b"].tolist() == [2.0, 3.0]


# -- deflated entries: declared size checked against the budget before inflating ----------------------------
def test_deflated_npz_entry_is_checked_before_inflating(tmp_path):
    p = tmp_path / "defl.npz"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("w.npy", "w", force_zip64=True) as f:
            f.write(_npy((16 << 20,)))
            for _ in range(64):
                f.write(b"\0" * MB)                              # 64 MiB of zeros, ~64 KB on disk
    assert p.stat().st_size < 200_000
    with _limits(16 * MB):
        with pytest.raises(nnc.LimitExceededError, match="max_total_bytes"):
            converters.load_model(str(p))
    with _limits(128 * MB):                                      # within the budget it loads
        assert converters.load_model(str(p)).tensors["w"].shape == (16 << 20,)


def test_deflated_pt_storage_is_checked_before_inflating(tmp_path):
    torch = pytest.importorskip("torch")
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(16 << 20)}, plain)
    p = tmp_path / "defl.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(p, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    assert p.stat().st_size < 1 * MB
    with _limits(16 * MB):
        with pytest.raises(nnc.LimitExceededError, match="max_total_bytes"):
            converters.load_model(str(p))


def test_zip_entry_declaring_more_than_deflate_can_expand_is_refused(tmp_path):
    p = tmp_path / "lie.npz"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("w.npy", _npy((4,)) + b"\0" * 16)
    raw = bytearray(p.read_bytes())
    # central directory: file size field of the one entry (offset 24 in the central header)
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = (1 << 31).to_bytes(4, "little")
    p.write_bytes(bytes(raw))
    with pytest.raises(nnc.NNCError):
        converters.load_model(str(p))


# -- ONNX external data through a symbolic link ------------------------------------------------------------
def test_onnx_external_data_symlink_outside_the_folder_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    secret = tmp_path / "outside" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(secret, folder / "w.bin")
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 2])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    onnx.save(helper.make_model(g), str(folder / "model.onnx"))
    with pytest.raises(nnc.ModelFormatError, match="symbolic link"):
        converters.load_model(str(folder / "model.onnx"))


def test_onnx_placeholder_of_a_hostile_type_is_a_model_format_error(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    lm = converters.load_model(helper.make_model(g))
    from nnc.converters import _onnx
    from nnc.converters._common import deflate
    model = _onnx.parse_topology(lm.topology)
    model.graph.initializer[0].data_type = 999                    # no such TensorProto type
    raw = model.SerializeToString()
    topo = nnc.Topology(lm.topology.storage_format, lm.topology.compression_format,
                        deflate(raw) if lm.topology.compression_format else raw)
    with pytest.raises(nnc.ModelFormatError):
        converters.save_model(str(tmp_path / "out.onnx"), lm.tensors, topo)
    assert not (tmp_path / "out.onnx").exists()


# -- TorchScript: bounded work for code / __parameters__ ----------------------------------------------------
def test_torchscript_parameter_list_bomb_is_refused_quickly(tmp_path):
    torch = pytest.importorskip("torch")
    src = tmp_path / "lin.jit"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(src))
    p = tmp_path / "bomb.jit"
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(p, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith("code/__torch__/torch/nn/modules/linear.py"):
                text = data.decode()
                huge = "[" + ", ".join(['"weight"'] * 3_000_000) + "]"
                text = text.replace('__parameters__ = ["weight", "bias", ]', f"__parameters__ = {huge}")
                data = text.encode()
            out.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
    assert p.stat().st_size < 1 * MB
    r = bombs.run_child(p, "load", 1 << 30, False, timeout=60)
    print(r)
    assert r["outcome"] == "ModelFormatError", r
    assert r["cpu_s"] < 5 and r["peak_rss"] < 600 * MB, r
