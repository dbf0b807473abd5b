"""TorchScript archives (torch.jit.save) are read as their state_dict without running or compiling them."""
import importlib.util
import io
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import nnc
import nnc.converters as C
from nnc.converters import _torchscript
from nnc.errors import ModelFormatError

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)  # a None parameter (bias) in the archive
        self.bn = nn.BatchNorm2d(4)  # int64 buffer num_batches_tracked
        self.register_buffer("scale", torch.tensor(2.0))  # 0-d buffer
        self.register_buffer("tmp", torch.zeros(3), persistent=False)  # TorchScript keeps no persistence flag
        self.state = torch.zeros(2)  # a tensor attribute that is neither parameter nor buffer

    def forward(self, x):
        return self.bn(self.conv(x)) * self.scale


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.head = nn.Linear(8, 8)
        self.head.weight = self.blocks[0].weight  # tied
        self.emb = nn.Embedding(10, 8).to(torch.bfloat16)
        self.p = nn.Parameter(torch.randn(5, dtype=torch.float64))
        self.seq = nn.Sequential(nn.Linear(8, 2), nn.ReLU(), nn.Sequential(nn.Linear(2, 2)))

    def forward(self, x, y):
        z = self.inner(x).mean()
        for b in self.blocks:
            y = b(y)
        return self.seq(self.head(y)) + z + self.p.sum().float()


def _example():
    torch.manual_seed(0)
    return Outer().eval(), (torch.randn(1, 3, 6, 6), torch.randn(2, 8))


@pytest.fixture(params=["script", "trace"])
def archive(request, tmp_path):
    model, args = _example()
    sm = torch.jit.script(model) if request.param == "script" else torch.jit.trace(model, args)
    path = tmp_path / f"{request.param}.pt"
    sm.save(str(path))
    return path, args


def test_reads_the_state_dict_torch_jit_load_gives(archive, monkeypatch):
    path, _ = archive
    expected = torch.jit.load(str(path)).state_dict()
    # nothing of the archive is run or compiled: torch.jit.load / torch.load are not called
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load called"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    sd = _torchscript.read_state_dict(str(path))
    assert list(sd) == list(expected)
    assert "inner.state" not in sd and "inner.conv.bias" not in sd
    for k, v in expected.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    assert sd["head.weight"].untyped_storage().data_ptr() == sd["blocks.0.weight"].untyped_storage().data_ptr()

    lm = C.load_model(path)
    assert lm.source_format == "pytorch"
    assert "head.weight" not in lm.tensors  # tied: coded once
    assert str(lm.tensors["emb.weight"].dtype) == "bfloat16"  # kept at its width (ml_dtypes), not widened


def test_round_trip_into_the_scripted_model(archive):
    path, args = archive
    lm = C.load_model(path)
    dm = nnc.decode_model(nnc.encode(lm.tensors, nnc.EncoderConfig(qp=-40), topology=lm.topology))
    restored = C.to_state_dict(dm.tensors, dm.topology)
    original = torch.jit.load(str(path))
    target = torch.jit.load(str(path))
    target.load_state_dict(restored)
    sd = target.state_dict()
    assert sd["emb.weight"].dtype == torch.bfloat16 and sd["inner.bn.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(sd["inner.bn.num_batches_tracked"], original.state_dict()["inner.bn.num_batches_tracked"])
    with torch.no_grad():
        a, b = original(*args), target(*args)
    assert torch.allclose(a, b, atol=0.05), (a - b).abs().max()


def test_cli_encodes_a_jit_file_and_writes_one_from_a_template(archive, tmp_path, capsys):
    from nnc.cli import main

    path, _ = archive
    jit = tmp_path / "model.jit"
    jit.write_bytes(path.read_bytes())
    assert main(["encode", str(jit), "-o", str(tmp_path / "m.nnc"), "--qp", "-36"]) == 0
    assert main(["decode", str(tmp_path / "m.nnc"), "-o", str(tmp_path / "m.pt")]) == 0
    assert list(torch.load(tmp_path / "m.pt", weights_only=True)) == list(torch.jit.load(str(path)).state_dict())
    capsys.readouterr()
    assert main(["decode", str(tmp_path / "m.nnc"), "-o", str(tmp_path / "out.jit")]) == 2
    assert "--template" in capsys.readouterr().err  # the program is not in the bitstream
    assert not (tmp_path / "out.jit").exists()
    assert main(["decode", str(tmp_path / "m.nnc"), "-o", str(tmp_path / "out.jit"), "--template", str(jit)]) == 0
    rebuilt = torch.jit.load(str(tmp_path / "out.jit")).state_dict()
    assert list(rebuilt) == list(torch.jit.load(str(path)).state_dict())


def test_silero_vad_jit_codes_like_its_state_dict():
    spec = importlib.util.find_spec("silero_vad")
    if spec is None:
        pytest.skip("silero-vad is not installed")
    path = Path(spec.origin).parent / "data" / "silero_vad.jit"
    expected = torch.jit.load(str(path)).state_dict()
    lm = C.load_model(path)
    assert list(lm.tensors) == list(expected)
    cfg = nnc.EncoderConfig(qp=-32)
    via_torch = C.from_torch(expected)
    assert nnc.encode(lm.tensors, cfg, topology=lm.topology) == nnc.encode(via_torch.tensors, cfg,
                                                                           topology=via_torch.topology)


# -- hostile archives ----------------------------------------------------------------------------------------
def _craft(tmp_path, *, size=(2, 2), stride=(2, 1), offset=0, numel=4, data_len=None, extra=None, graph=None,
           code="class Mod(Module):\n  __parameters__ = [\"w\", ]\n  __buffers__ = []\n  training : bool\n"):
    """An archive as torch.jit.save lays it out, with one module holding one parameter 'w' whose tensor record
    and storage can be made inconsistent; ``extra`` adds an attribute pickled as-is; ``graph(Mod)`` returns
    another root built from modules ``Mod(links)`` whose ``links`` become submodule attributes."""
    mod = types.ModuleType("__torch__.crafted")

    class Mod:
        def __init__(self, links=None):
            self.links = links if links is not None else {}

        def __reduce__(self):
            state = {"training": False, "w": Rebuild()}
            if extra is not None:
                state["extra"] = extra
            state.update(self.links)
            return (Mod, (), state)

    class Rebuild:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (StorageRef(), offset, size, stride, False, OrderedDict()))

    class StorageRef:
        pass

    Mod.__module__, Mod.__qualname__ = "__torch__.crafted", "Mod"
    mod.Mod = Mod

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, StorageRef) else None

    buf = io.BytesIO()
    fake = {"__torch__": types.ModuleType("__torch__"), mod.__name__: mod}
    saved = {k: sys.modules.get(k) for k in fake}
    sys.modules.update(fake)
    try:
        P(buf, protocol=2).dump(Mod() if graph is None else graph(Mod))
    finally:
        for k, v in saved.items():
            if v is None:
                del sys.modules[k]
            else:
                sys.modules[k] = v
    path = tmp_path / "crafted.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/code/__torch__/crafted.py", code)
        z.writestr("archive/data/0", np.arange(numel if data_len is None else data_len, dtype=np.float32).tobytes())
        z.writestr("archive/constants.pkl", pickle.dumps(()))
    return path


def test_crafted_archive_reads(tmp_path):
    sd = _torchscript.read_state_dict(str(_craft(tmp_path)))
    assert list(sd) == ["w"] and sd["w"].tolist() == [[0, 1], [2, 3]]


@pytest.mark.parametrize("kwargs, message", [
    ({"size": (3, 2)}, "reaches element"),
    ({"offset": 1}, "reaches element"),
    ({"stride": (3, 1)}, "reaches element"),
    ({"numel": 5, "data_len": 4}, "holds 16 bytes"),
    ({"numel": 10**12, "data_len": 4}, "holds 16 bytes"),
    ({"data_len": 3}, "holds 12 bytes"),
    ({"numel": 2, "data_len": 4}, "more than"),
    ({"size": (2, -2)}, "malformed tensor"),
    ({"code": "class Mod(Module):\n  __parameters__ = [__import__('os').system('true')]\n"}, "unreadable"),
    ({"code": "class Other(Module):\n  __parameters__ = []\n"}, "not a plain module"),
])
def test_inconsistent_archives_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ModelFormatError, match=message):
        C.load_model(_craft(tmp_path, **kwargs))


def test_globals_outside_the_list_are_refused(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    with pytest.raises(ModelFormatError, match="os.system|posix.system"):
        C.load_model(_craft(tmp_path, extra=Evil()))
    assert not marker.exists()


def test_truncated_archives_are_refused(archive, tmp_path):
    path, _ = archive
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        p = tmp_path / f"cut{cut}.pt"
        p.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError):
            C.load_model(p)


def test_mutated_pickles_and_declarations_raise_model_format_error_only(tmp_path):
    # byte mutations of data.pkl and of the class declarations, re-zipped so that they get past the zip CRCs
    model, _ = _example()
    src = tmp_path / "src.pt"
    torch.jit.script(model).save(str(src))
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    targets = [n for n in entries if n.endswith("/data.pkl")] + [n for n in entries if "/code/" in n
                                                                  and n.endswith(".py")]
    rng = np.random.default_rng(7)
    outcomes = {"read": 0, "refused": 0}
    for i in range(400):
        name = targets[0] if i % 4 else targets[rng.integers(1, len(targets))]
        data = bytearray(entries[name])
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        p = tmp_path / "m.pt"
        with zipfile.ZipFile(p, "w") as z:
            for n, b in entries.items():
                z.writestr(n, bytes(data) if n == name else b)
        try:
            C.load_model(p)
            outcomes["read"] += 1
        except ModelFormatError:
            outcomes["refused"] += 1
    assert outcomes["read"] > 0 and outcomes["refused"] > 0, outcomes


@pytest.mark.parametrize("inserted, message", [
    (b"N" + b"r\xff\xff\xff\x7f" + b"0", "memo slot 2147483647"),  # the C unpickler would size its memo by it
    (b"h\x05" + b"0", "before it is stored"),
    (b"I12\n" + b"0", "opcode INT"),  # text opcodes are not what torch.jit.save writes
    (b"\x8a\x04\x00\x00\x00" + b"0", "malformed"),  # LONG1 whose length runs past the end of the data
])
def test_screened_opcodes(tmp_path, inserted, message):
    model, _ = _example()
    src = tmp_path / "src.pt"
    torch.jit.script(model).save(str(src))
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    assert entries[name][:2] == b"\x80\x02"
    entries[name] = entries[name][:2] + inserted + entries[name][2:] if message != "malformed" else \
        entries[name][:-1] + inserted[:3]
    p = tmp_path / "m.pt"
    with zipfile.ZipFile(p, "w") as z:
        for n, b in entries.items():
            z.writestr(n, b)
    with pytest.raises(ModelFormatError, match=message):
        C.load_model(p)


def _cycle(Mod):
    root = Mod()
    root.links["again"] = root
    return root


def _diamonds(Mod):
    node = Mod()
    for _ in range(40):  # 2**40 paths from the root to the leaf
        node = Mod({"a": node, "b": node})
    return node


@pytest.mark.parametrize("graph, message", [(_cycle, "nest more than"), (_diamonds, "module visits")])
def test_module_graphs_that_are_not_trees_end_quickly(tmp_path, graph, message):
    with pytest.raises(ModelFormatError, match=message):
        C.load_model(_craft(tmp_path, graph=graph))


def test_a_shared_submodule_is_listed_under_both_names(tmp_path):
    def shared(Mod):
        child = Mod()
        return Mod({"x": child, "y": child})

    sd = _torchscript.read_state_dict(str(_craft(tmp_path, graph=shared)))
    assert list(sd) == ["w", "x.w", "y.w"]


def test_template_rebuilds_the_program_with_decoded_weights(archive, tmp_path, monkeypatch):
    path, args = archive
    lm = C.load_model(path)
    dm = nnc.decode_model(nnc.encode(lm.tensors, nnc.EncoderConfig(qp=-40), topology=lm.topology))
    expected = C.to_state_dict(dm.tensors, dm.topology)  # the decoded weights in their original dtypes
    out = tmp_path / "rebuilt.pt"
    with monkeypatch.context() as m:  # the template is rewritten without being loaded by torch
        m.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load called"))
        C.save_model(out, dm.tensors, dm.topology, template=path)
    original, rebuilt = torch.jit.load(str(path)), torch.jit.load(str(out))
    sd = rebuilt.state_dict()
    assert list(sd) == list(expected)
    for k, v in expected.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    assert sd["head.weight"].data_ptr() == sd["blocks.0.weight"].data_ptr()  # still tied
    if hasattr(original.inner, "state"):  # scripted (tracing drops it): attributes outside the state_dict kept
        assert torch.equal(rebuilt.inner.state, original.inner.state)
    with torch.no_grad():
        a, b = original(*args), rebuilt(*args)
    assert 0 < (a - b).abs().max() < 0.05


def test_template_that_does_not_fit_is_refused_without_output(archive, tmp_path):
    path, _ = archive
    other = tmp_path / "other.pt"
    torch.jit.script(nn.Linear(3, 2)).save(str(other))
    lm = C.load_model(path)
    dm = nnc.decode_model(nnc.encode(lm.tensors, nnc.EncoderConfig(qp=-40), topology=lm.topology))
    with pytest.raises(ModelFormatError, match="do not fit the TorchScript template"):
        C.save_model(tmp_path / "x.jit", dm.tensors, dm.topology, template=other)
    with pytest.raises(ModelFormatError, match="not a TorchScript archive"):
        C.save_model(tmp_path / "x.jit", dm.tensors, dm.topology, template=tmp_path / "missing.pt")
    with pytest.raises(ModelFormatError, match="names a safetensors file"):
        C.save_model(tmp_path / "x.safetensors", dm.tensors, dm.topology, template=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt", path.name]


def test_silero_vad_rebuilt_from_its_bitstream_runs():
    spec = importlib.util.find_spec("silero_vad")
    if spec is None:
        pytest.skip("silero-vad is not installed")
    path = Path(spec.origin).parent / "data" / "silero_vad.jit"
    lm = C.load_model(path)
    dm = nnc.decode_model(nnc.encode(lm.tensors, nnc.EncoderConfig(qp=-32), topology=lm.topology))
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "silero_vad.jit"
        C.save_model(out, dm.tensors, dm.topology, template=path)
        original, rebuilt = torch.jit.load(str(path)), torch.jit.load(str(out))
    # the trusted way to the same model: load the original program, then the decoded state_dict into it
    loaded = torch.jit.load(str(path))
    loaded.load_state_dict(C.to_state_dict(dm.tensors, dm.topology))
    t = torch.linspace(0, 2, 32000)
    audio = 0.3 * torch.sin(2 * np.pi * 220 * t) * (t > 1) + 0.01 * torch.randn(32000, generator=torch.Generator().manual_seed(0))

    def speech_probs(model):
        model.reset_states()
        with torch.no_grad():
            return torch.tensor([model(audio[i:i + 512][None], 16000).item() for i in range(0, 31488, 512)])

    p_rebuilt, p_loaded, p_original = speech_probs(rebuilt), speech_probs(loaded), speech_probs(original)
    assert torch.equal(p_rebuilt, p_loaded)
    assert not torch.equal(p_rebuilt, p_original)  # the weights are the decoded ones
