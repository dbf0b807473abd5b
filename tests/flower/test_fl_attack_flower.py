"""issue 15 "Show" on Flower: NNCFedAvg + nnc_mod under run_simulation with 1 malicious node in 5 (huge
values, max-float, replay, NaN, cycling; the node's ClientApp replaces its reply outside nnc_mod). The honest
accuracy stays within 1 point of the in-process run without that client (the two engines give the same
numbers for the same run; benchmarks/fl_attack.py shows both)."""
import importlib.util
import os
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("sklearn")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

spec = importlib.util.spec_from_file_location("fl_attack",
                                              Path(__file__).parent.parent.parent / "benchmarks" / "fl_attack.py")
fl_attack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fl_attack)

ROUNDS = 8


def test_one_malicious_node_in_five_on_flower():
    hit = fl_attack.run_flower(malicious=True, rounds=ROUNDS, seed=0)
    clean = fl_attack.run_inprocess(malicious=False, rounds=ROUNDS, seed=0)
    assert hit["finite"]
    cats = {int(k.split(":")[0]): v for k, v in hit["refused"].items() if k.endswith(":4")}
    assert sorted(cats) == list(range(1, ROUNDS + 1))
    assert set(cats.values()) == {"norm-bound", "replay", "invalid"}
    assert not any(not k.endswith(":4") for k in hit["refused"])        # no honest node refused
    assert abs(hit["accuracy"][-1] - clean["accuracy"][-1]) <= 0.01, (hit["accuracy"], clean["accuracy"])
    print("flower attacked", hit["accuracy"], "in-process clean", clean["accuracy"])
