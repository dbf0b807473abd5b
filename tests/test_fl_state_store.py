"""The client codec state lives in a file per (run, node) on the SuperNode's disk, with only a small handle and
its SHA-256 in ``context.state`` (nnc.fl.flower.state_store): the Context protobuf stays small whatever the
model, and a lost, corrupt, truncated or stale state file is never trained on: the client asks for a resync and
catches up."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("sklearn")

from flwr.app import Context, RecordDict  # noqa: E402
from flwr.common.serde import context_to_proto  # noqa: E402

from nnc.errors import UpdateStateError  # noqa: E402
from nnc.fl import ClientCodec, DownlinkConfig, ServerCodec, UplinkConfig  # noqa: E402
from nnc.fl.flower.fedavg import _load_codec, _save_codec  # noqa: E402
from nnc.fl.flower.state_store import read_state, write_state  # noqa: E402

from test_fl_deploy_state import run, setup  # noqa: E402


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NNC_FL_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _files(root: Path):
    return sorted(root.glob("run-*/node-*.nncstate"))


def test_context_state_holds_a_small_handle_not_the_arrays(_state_dir):
    n = 1 << 20
    base = {"w": (np.random.default_rng(0).standard_normal(n) * 0.02).astype(np.float32)}
    up = UplinkConfig(qp_mode="ternary", sparsity=0.01, sparsity_scope="global")
    down = DownlinkConfig(mode="nnc", qp=-44, sparsity=0.01)
    server, client = ServerCodec(base, up, down), ClientCodec(base, up, down)
    for _ in range(2):
        m = client.receive(server.downlink_for(0))
        server.step({0: client.encode({k: v + 1e-3 for k, v in m.items()}, 10)})
    ctx = Context(run_id=7, node_id=9, node_config={}, state=RecordDict(), run_config={})
    _save_codec(ctx, client)
    assert not list(ctx.state.array_records.keys())
    assert len(context_to_proto(ctx).SerializeToString()) < 1024      # the Context: a handle, whatever the model
    (f,) = _files(_state_dir)
    assert f.name == "node-9.nncstate" and f.parent.name == "run-7" and f.stat().st_size > n
    assert not list(f.parent.glob("*.tmp"))
    again = _load_codec(ctx, lambda: base, up, down)                  # the next round's ClientApp process
    msg = server.downlink_for(0)
    m1, m2 = client.receive(msg), again.receive(msg)
    assert all(np.array_equal(m1[k], m2[k]) for k in m1)
    t = {k: v - 2e-3 for k, v in m1.items()}
    assert client.encode(t, 3).payload == again.encode(t, 3).payload


def _damage(path: Path, how: str, saved: Path):
    if how == "missing":
        path.unlink()
    elif how == "flipped":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 5])
    elif how == "stale":             # an older state file put back (e.g. a restored backup)
        shutil.copyfile(saved, path)


@pytest.mark.parametrize("how", ["missing", "flipped", "truncated", "stale"])
def test_bad_state_file_falls_back_to_a_resync_and_the_client_catches_up(how, _state_dir, tmp_path):
    st, grid, nodes = setup()
    saved = tmp_path / "round1.nncstate"

    def hook(r):
        if r not in (2, 3):
            return
        (f,) = [p for p in _files(_state_dir) if p.name == f"node-{nodes[0].id}.nncstate"]
        if r == 2:
            shutil.copyfile(f, saved)
        if r == 3:
            _damage(f, how, saved)

    run(st, grid, 7, hook)
    assert set(st.dropped[3]) == {0}, st.dropped
    reason = st.dropped[3][0]
    assert reason.startswith("client resync") and "UpdateStateError" in reason, reason
    assert f"node-{nodes[0].id}.nncstate" in reason                 # names the file that went wrong
    assert all(not st.dropped[r] for r in (1, 2, 4, 5, 6, 7)), st.dropped
    assert st.server.ledger[3].down_kind[0] in ("catchup", "full")    # round 4: caught up from the initial model
    assert all(0 in st.server.ledger[r - 1].up for r in (4, 5, 6, 7))


def test_state_file_round_trip_checks_and_atomic_write(tmp_path):
    arrays = {"a": np.arange(-5, 5, dtype=np.int8), "b": np.linspace(0, 1, 7, dtype=np.float32).reshape(7, 1),
              "c": np.zeros((0, 3), np.int32), "d": np.array(3.5, np.float64), "e": np.packbits([1, 0, 1])}
    path = tmp_path / "run-1" / "node-2.nncstate"
    handle = write_state(path, arrays, {"synced_round": 4})
    got, scalars = read_state(path, handle)
    assert scalars == {"synced_round": 4} and list(got) == list(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v)
    size = path.stat().st_size
    for pos in range(0, size, 7):                 # any damaged byte is caught, header or data
        data = bytearray(path.read_bytes())
        data[pos] ^= 0x01
        bad = tmp_path / "bad.nncstate"
        bad.write_bytes(bytes(data))
        with pytest.raises(UpdateStateError, match="bad.nncstate"):
            read_state(bad, handle)
    with pytest.raises(UpdateStateError, match="handle is incomplete"):
        read_state(path, {"nnc.state.nbytes": size})
    # a write that fails leaves the old file whole and no temporary behind
    with pytest.raises(UpdateStateError):
        write_state(path, {"ok": np.ones(3, np.float32), "bad": np.array(["x"], object)}, {})
    assert read_state(path, handle)[1] == {"synced_round": 4}
    assert sorted(os.listdir(path.parent)) == ["node-2.nncstate"]
