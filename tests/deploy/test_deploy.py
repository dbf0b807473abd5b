"""nnc on a real Flower 1.42 deployment: a SuperLink and three SuperNodes on 127.0.0.1 (``--insecure``, runtime
dependency installation disabled), the app in examples/fl_deploy (nnc_mod around a PyTorch ``train``,
NNCFedAvg) submitted with ``flwr run``. Every process is stopped by its pid (local_deployment.stop)."""
import shutil
import signal
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "examples" / "fl_deploy"
sys.path.insert(0, str(APP))      # local_deployment, nnc_digits (the app) for the in-process reference
_MISSING = [b for b in ("flower-superlink", "flower-supernode", "flwr") if shutil.which(b) is None]
if _MISSING:
    pytest.skip(f"Flower executables not on PATH: {_MISSING}", allow_module_level=True)

pytest.importorskip("flwr")
pytest.importorskip("torch")
pytest.importorskip("sklearn")

from local_deployment import LocalDeployment  # noqa: E402
from nnc_digits.task import run_inprocess  # noqa: E402

pytestmark = pytest.mark.slow
NODES = 3


def _table(rounds):
    return [(r["round"], r["acc"], r["up"], r["down"]) for r in rounds]


def test_deployment_matches_the_in_process_loop():
    # 2 of 3 partitions per round: partitions skip rounds, so catch-ups travel too
    cfg = {"num-server-rounds": 4, "fraction-train": 0.67, "lr": 0.1, "seed": 0}
    with LocalDeployment(NODES) as d:
        got = d.run(**cfg)
    ref = run_inprocess(4, NODES, 0.67, lr=0.1, seed=0)
    assert all(not r["dropped"] for r in got), got
    assert _table(got) == [(r["round"], r["acc"], r["up"], r["down"]) for r in ref]
    assert got[-1]["acc"] > got[0]["acc"] + 0.1
    assert len({n for r in got for n in r["nodes"].values()}) == NODES


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_supernode_restart_rejoins_and_catches_up(sig):
    rounds = 6
    with LocalDeployment(NODES) as d:
        proc = d.submit(**{"num-server-rounds": rounds, "fraction-train": 1.0, "lr": 0.1, "seed": 0})
        before = d.wait_rounds(2, proc)
        old = before[-1]["nodes"]["2"]
        d.restart_node(2, sig)
        got = d.wait_rounds(rounds, proc)
    assert [r["round"] for r in got] == list(range(1, rounds + 1))
    # a failure is charged to the partition whose node went away, never to a healthy one
    for r in got:
        assert set(r["dropped"]) <= {"2"}, r
    # the new node took partition 2 over, and after one lost round at most it trains every round again
    assert got[-1]["nodes"]["2"] != old
    lost = [r["round"] for r in got if r["dropped"]]
    assert len(lost) <= 1 and all(lr <= 4 for lr in lost), lost
    back = [r for r in got[2:] if "2" in r["down_kind"] and not r["dropped"]]
    assert back and back[0]["down_kind"]["2"] in ("catchup", "full"), got    # caught up from its empty state
    assert all(not r["dropped"] for r in got[4:]), got
    assert got[-1]["acc"] > got[1]["acc"]
