"""The package passes the ruff configuration in pyproject.toml ([tool.ruff]: pycodestyle and pyflakes, 120
columns)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_passes_ruff():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "nnc"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_package_is_typed():
    assert (ROOT / "nnc" / "py.typed").is_file()
