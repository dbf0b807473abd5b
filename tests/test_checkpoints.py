"""PyTorch training checkpoints kept whole through encode/decode (issue 20, item 3): model and optimizer state,
EMA copies, scalars and lists keep their structure; the model's own loader works on the decoded file."""
from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nnc  # noqa: E402
import nnc.converters as C  # noqa: E402
from nnc.errors import ModelFormatError  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _checkpoint():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    for _ in range(3):
        loss = model(torch.randn(4, 3, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    ema = OrderedDict((k, v.detach().clone() * 0.99) for k, v in model.state_dict().items())
    return model, {"model_state": model.state_dict(), "optimizer_state": opt.state_dict(), "ema": ema,
                   "scheduler": sched.state_dict(), "step": 3, "epoch": 1.5, "best": float("inf"),
                   "history": [0.5, 0.25, {"val": 0.1}], "config": {"name": "net", "betas": (0.9, 0.999),
                                                                     "tags": None, 7: "int key"}}


def _same_structure(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        return
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _same_structure(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same_structure(x, y, f"{path}/{i}")
    else:
        assert a == b, path


def test_checkpoint_structure_survives_encode_decode(tmp_path):
    model, ck = _checkpoint()
    src = tmp_path / "train.pt"
    torch.save(ck, src)
    lm = C.load_model(src)
    assert "conv.weight" in lm.tensors                                 # model state: its own names
    assert "ema/conv.weight" in lm.tensors and "optimizer_state/state/0/exp_avg_sq" in lm.tensors
    bs = nnc.encode(lm.tensors, nnc.EncoderConfig(qp=-38), topology=lm.topology)
    dm = nnc.decode_model(bs)
    out = tmp_path / "decoded.pt"
    C.save_model(out, dm.tensors, dm.topology)
    back = torch.load(out, weights_only=True)
    _same_structure(ck, back)
    # optimizer moments and steps are carried exactly; model and EMA tensors are coded (close, not equal)
    for i, st in ck["optimizer_state"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, back["optimizer_state"]["state"][i][k]), (i, k)
    w, w2 = ck["model_state"]["conv.weight"], back["model_state"]["conv.weight"]
    assert 0 < float((w - w2).abs().max()) < 0.01
    assert float((ck["ema"]["fc.weight"] - back["ema"]["fc.weight"]).abs().max()) < 0.01
    assert torch.equal(back["model_state"]["bn.num_batches_tracked"], ck["model_state"]["bn.num_batches_tracked"])
    # the model's own loader
    net = Net()
    net.load_state_dict(back["model_state"])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt.load_state_dict(back["optimizer_state"])
    assert back["step"] == 3 and back["epoch"] == 1.5 and back["best"] == float("inf")
    assert back["config"][7] == "int key" and back["config"]["betas"] == (0.9, 0.999)
    # the reference decoder reads the stream too (the record is a plain JSON string in the TPL unit)
    assert set(nnc.decode(bs)) == set(lm.tensors)


def test_in_memory_checkpoint_through_from_torch_and_to_checkpoint():
    _, ck = _checkpoint()
    lm = C.from_torch(ck)
    dm = nnc.decode_model(nnc.encode(lm.tensors, nnc.EncoderConfig(qp=-40), topology=lm.topology))
    back = C.to_checkpoint(dm.tensors, dm.topology)
    _same_structure(ck, back)


def test_model_state_only_codes_the_state_dict_and_names_what_was_left_out(tmp_path, capsys):
    _, ck = _checkpoint()
    src = tmp_path / "train.pt"
    torch.save(ck, src)
    lm = C.load_model(src, model_state_only=True)
    assert set(lm.tensors) == set(ck["model_state"])
    assert len(lm.notes) == 1 and "'optimizer_state'" in lm.notes[0] and "'ema'" in lm.notes[0]
    from nnc.cli import main
    assert main(["encode", str(src), "-o", str(tmp_path / "m.nnc"), "--model-state-only", "--json"]) == 0
    r = capsys.readouterr()
    assert "left out" in r.err and "'optimizer_state'" in r.err
    assert json.loads(r.out.strip().splitlines()[-1])["tensors"] == len(ck["model_state"])


def test_unsupported_leaf_is_named():
    with pytest.raises(ModelFormatError, match="opt/fn"):
        C.from_torch({"model": {"w": torch.ones(2, 2)}, "opt": {"fn": object()}})


def test_corrupt_exact_view_record_is_a_model_format_error():
    _, ck = _checkpoint()
    lm = C.from_torch(ck)
    rec = C._common.TensorRecord.from_topology(lm.topology)
    name = next(iter(rec.extra["exact_views"]))
    rec.extra["exact_views"][name] = ["float32", [9999]]
    dm = nnc.decode_model(nnc.encode(lm.tensors, topology=rec.to_topology()))
    with pytest.raises(ModelFormatError, match=name.replace("/", ".")):
        C.to_checkpoint(dm.tensors, dm.topology)
