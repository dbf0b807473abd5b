"""nnc.fl.flower under Flower's simulation engine: same bytes and accuracy as the in-process loop."""
import os

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("sklearn")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from nnc.fl import presets  # noqa: E402
from _parity import flower_and_inprocess  # noqa: E402

SEED, N, ROUNDS = 0, 6, 4


def test_flower_run_simulation_matches_the_in_process_loop():
    u, d = presets(sparsity=0.05)["nnc_bidir_cache"]
    out, ref = flower_and_inprocess(u, d, num_clients=N, rounds=ROUNDS, seed=SEED)
    assert out["up"] == ref.up_bytes and out["down"] == ref.down_bytes
    assert np.allclose(out["acc"], ref.accuracy)
    assert all(not v for v in out["dropped"].values())
    assert sum(out["up"]) > 0
