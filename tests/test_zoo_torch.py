"""A real PyTorch model as users have it: the MTCNN face detector's three networks (PNet, RNet, ONet; PReLU,
conv, linear; state_dicts saved with ``torch.save``) shipped in the ``facenet-pytorch`` package, through the CLI:
``nnc encode net.pt`` then ``nnc decode -o net.pt``. The decoded file loads with ``weights_only=True`` into
the same keys, dtypes and shapes, and ONet computed from it agrees with the original (issue 20: real models,
checkpoints kept whole). The package is located with ``find_spec`` and never imported (it needs torchvision)."""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from nnc.cli import main as cli  # noqa: E402
from support.realmodels import package_dir  # noqa: E402

DATA = package_dir("facenet_pytorch")
pytestmark = pytest.mark.skipif(DATA is None, reason="facenet-pytorch is not installed")


def _weights(name: str) -> dict:
    return torch.load(os.path.join(DATA, "data", f"{name}.pt"), weights_only=True)


def _onet(sd, x):
    """facenet_pytorch.models.mtcnn.ONet.forward, written with torch.nn.functional over a state_dict."""
    for i, pool in ((1, (3, 2)), (2, (3, 2)), (3, (2, 2)), (4, None)):
        x = F.prelu(F.conv2d(x, sd[f"conv{i}.weight"], sd[f"conv{i}.bias"]), sd[f"prelu{i}.weight"])
        if pool:
            x = F.max_pool2d(x, *pool, ceil_mode=True)
    x = x.permute(0, 3, 2, 1).contiguous().view(x.shape[0], -1)
    x = F.prelu(F.linear(x, sd["dense5.weight"], sd["dense5.bias"]), sd["prelu5.weight"])
    face = F.softmax(F.linear(x, sd["dense6_1.weight"], sd["dense6_1.bias"]), 1)
    return face, F.linear(x, sd["dense6_2.weight"], sd["dense6_2.bias"]), F.linear(x, sd["dense6_3.weight"],
                                                                                   sd["dense6_3.bias"])


def _roundtrip(obj, tmp_path, qp: int):
    src, nnc_file, out = tmp_path / "in.pt", tmp_path / f"m{qp}.nnc", tmp_path / f"out{qp}.pt"
    torch.save(obj, src)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli(["encode", str(src), "-o", str(nnc_file), "--qp", str(qp), "--quiet"]) == 0
        assert cli(["decode", str(nnc_file), "-o", str(out), "--quiet"]) == 0
    return torch.load(out, weights_only=True), nnc_file.stat().st_size, src.stat().st_size


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
def test_mtcnn_state_dicts_come_back_whole(name, tmp_path):
    sd = _weights(name)
    back, coded, raw = _roundtrip(sd, tmp_path, -38)
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    assert coded < raw / 3            # 0.8-1.3 bits/param at qp -38 (PNet, 6.6K params: its record weighs)


@pytest.mark.parametrize("qp,face_tol,box_tol", [(-32, 0.05, 0.1), (-44, 0.005, 0.01)])
def test_onet_from_the_decoded_file_agrees_with_the_original(qp, face_tol, box_tol, tmp_path):
    sd = _weights("onet")
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (16, 3, 48, 48)).astype(np.float32))
    ref = _onet(sd, x)
    back, _, _ = _roundtrip(sd, tmp_path, qp)
    out = _onet(back, x)
    assert float((out[0] - ref[0]).abs().max()) < face_tol
    assert float((out[1] - ref[1]).abs().max()) < box_tol
    assert torch.equal(out[0].argmax(1), ref[0].argmax(1))


def test_a_training_checkpoint_of_onet_keeps_its_structure(tmp_path):
    sd = _weights("onet")
    ckpt = {"model_state": sd, "epoch": 7, "best": 0.91, "history": [0.5, 0.8, 0.91],
            "optimizer_state": {"state": {0: {"momentum_buffer": torch.zeros_like(sd["conv1.weight"])}},
                                "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0]}]}}
    back, _, _ = _roundtrip(ckpt, tmp_path, -38)
    assert set(back) == set(ckpt)
    assert back["epoch"] == 7 and back["best"] == 0.91 and back["history"] == [0.5, 0.8, 0.91]
    assert back["optimizer_state"]["param_groups"] == ckpt["optimizer_state"]["param_groups"]
    assert list(back["model_state"]) == list(sd)
    mom = back["optimizer_state"]["state"][0]["momentum_buffer"]
    assert mom.shape == sd["conv1.weight"].shape and not mom.any()
