"""issue 15 "Show": 1 of 5 clients is malicious every round (huge values, max-float, replay, NaN, cycling); the
server's defaults keep the honest accuracy within 1 point of the run without that client. In-process here;
on Flower in tests/flower/test_fl_attack_flower.py. The benchmark is benchmarks/fl_attack.py."""
import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

spec = importlib.util.spec_from_file_location("fl_attack", Path(__file__).parent.parent / "benchmarks" / "fl_attack.py")
fl_attack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fl_attack)

ROUNDS = 12


def test_one_malicious_client_in_five_costs_less_than_one_point_in_process():
    clean = fl_attack.run_inprocess(malicious=False, rounds=ROUNDS, seed=0)
    hit = fl_attack.run_inprocess(malicious=True, rounds=ROUNDS, seed=0)
    assert hit["finite"] and all(math.isfinite(a) for a in hit["accuracy"])
    # every attack round was refused, and each kind for its own reason
    cats = {int(k.split(":")[0]): v for k, v in hit["refused"].items() if k.endswith(":4")}
    assert sorted(cats) == list(range(1, ROUNDS + 1))
    kinds = {fl_attack.ATTACKS[(r - 1) % 4]: c for r, c in cats.items()}
    assert kinds == {"huge": "norm-bound", "maxfloat": "norm-bound", "replay": "replay", "nan": "invalid"}
    assert not any(k.endswith(":0") or k.endswith(":1") for k in hit["refused"])     # no honest client hit
    assert abs(hit["accuracy"][-1] - clean["accuracy"][-1]) <= 0.01
    assert clean["accuracy"][-1] > clean["accuracy"][0] + 0.3                      # it did learn


def test_clipping_instead_of_leaving_out_is_measurably_worse():
    # the contrast that motivates over_bound="drop" as the default (not an assertion of a fixed number)
    from nnc.fl import RoundPolicy
    clean = fl_attack.run_inprocess(malicious=False, rounds=ROUNDS, seed=0)
    clip = fl_attack.run_inprocess(malicious=True, rounds=ROUNDS, seed=0, policy=RoundPolicy(over_bound="clip"))
    assert clip["finite"]
    assert clip["accuracy"][-1] < clean["accuracy"][-1]
