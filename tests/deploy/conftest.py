import shutil
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "examples" / "fl_deploy"
sys.path.insert(0, str(APP))      # local_deployment, nnc_digits (the app) for the in-process reference


def pytest_collection_modifyitems(items):
    missing = [b for b in ("flower-superlink", "flower-supernode", "flwr") if shutil.which(b) is None]
    if missing:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=f"Flower executables not on PATH: {missing}"))
