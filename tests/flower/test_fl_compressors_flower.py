"""A compressor on Flower (run_simulation, Message API) through the transport's Mod and Strategy: the same
bytes and accuracy as the in-process loop, and the compressor state (EF residual, PowerSGD's Q) persists in
context.state."""
import os

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("sklearn")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from nnc.fl import DownlinkConfig, UplinkConfig  # noqa: E402
from nnc.fl.compressors import PowerSGD  # noqa: E402
from _parity import flower_and_inprocess  # noqa: E402

SEED, N, ROUNDS = 0, 4, 4


def test_flower_run_simulation_with_a_compressor():
    # PowerSGD: error feedback + warm start, so stale client state in Flower would change the bytes
    u, d = UplinkConfig(compressor=PowerSGD(rank=2)), DownlinkConfig(mode="nnc", qp=-40, sparsity=0.05)
    out, ref = flower_and_inprocess(u, d, num_clients=N, rounds=ROUNDS, seed=SEED)
    assert all(not v for v in out["dropped"].values())
    assert out["up"] == ref.up_bytes and out["down"] == ref.down_bytes
    assert np.allclose(out["acc"], ref.accuracy)
    assert out["acc"][-1] > out["acc"][0] + 0.1
