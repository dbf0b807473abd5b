import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "conformance" / "vectors"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def manifest():
    return json.loads((VECTORS / "manifest.json").read_text())


@pytest.fixture(scope="session")
def reference():
    """The NNCodec oracle module; skips the test with a visible reason when its venv is absent."""
    from support import reference as ref
    if not ref.available():
        pytest.skip(f"NNCodec reference venv not found at {ref.reference_python().parent.parent} "
                    "(run tools/setup_reference.sh)")
    return ref


# Flower's simulation engine (Ray) cannot be started twice in one process: a second run_simulation in the
# same pytest process hangs. The Flower tests therefore live in tests/flower/ and each file runs in a fresh
# interpreter through tests/test_flower_apps.py; they are collected directly only inside that subprocess.
if not os.environ.get("NNC_FLOWER_SUBPROCESS"):
    collect_ignore_glob = ["flower/*"]
