"""A Flower 1.42 deployment on 127.0.0.1: one SuperLink, N SuperNodes, ``flwr run`` of an app directory.

Used by ``tests/deploy/`` and ``benchmarks/fl_wire.py``; also runnable by hand::

    python examples/fl_deploy/local_deployment.py --nodes 3 --rounds 4

Every process runs with ``--insecure`` on loopback, runtime dependency installation disabled, in its own
session (so that stopping it by pid also stops the SuperExec it spawned), with all state under one temporary
directory (``FLWR_HOME`` per process, the CLI's ``config.toml``, logs). Ports are picked free at start, so
several deployments can run side by side.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
REPO = APP_DIR.parent.parent
CONNECTION = "nnc-local"


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the process that started it dies, so a killed test or
    benchmark leaves no deployment behind."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Stop a process started here, and the process group it leads, by its pid."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:   # the group may outlive its leader (SuperExec polls its parent): finish it
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(5)


class LocalDeployment:
    """``with LocalDeployment(nodes=3) as d: d.run(rounds=4)``; see the module docstring.

    ``fleet_port`` lets SuperNodes reach the Fleet API through another port (a byte-counting proxy that
    forwards to :attr:`port`); by default they connect to the SuperLink directly.
    """

    def __init__(self, nodes: int = 3, *, app: Path = APP_DIR, root: str | None = None, fleet_port=None,
                 env: dict | None = None):
        self.nodes, self.app = nodes, Path(app)
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="nnc-deploy-")
        self.root = Path(root or self._tmp.name)
        self.port = free_port()
        self.fleet_port = fleet_port
        self.env = dict(os.environ, **(env or {}))
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH", "")]))
        self.env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        self.superlink: subprocess.Popen | None = None
        self.supernodes: dict[int, subprocess.Popen] = {}
        self._starts: dict[int, int] = {}
        self.out_file = self.root / "rounds.jsonl"

    # --- processes -----------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        home = self.root / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{name}.log", "ab")
        try:
            return subprocess.Popen(cmd, cwd=self.root, env=dict(self.env, FLWR_HOME=str(home)), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        finally:
            log.close()

    def start(self) -> "LocalDeployment":
        self.superlink = self._spawn("superlink", [
            "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port)])
        wait_port(self.port)
        for i in range(self.nodes):
            self.start_node(i)
        cli = self.root / "home" / "cli"
        cli.mkdir(parents=True, exist_ok=True)
        (cli / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        return self

    def start_node(self, partition: int) -> subprocess.Popen:
        """Start (or restart) the SuperNode that holds ``partition``."""
        n = self._starts[partition] = self._starts.get(partition, -1) + 1
        port = free_port()
        proc = self._spawn(f"supernode{partition}.{n}", [
            "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.fleet_port or self.port}",
            "--host", "127.0.0.1", "--port", str(port),
            "--node-config", f"partition-id={partition} num-partitions={self.nodes}"])
        self.supernodes[partition] = proc
        wait_port(port)
        return proc

    def restart_node(self, partition: int, sig: int = signal.SIGTERM) -> None:
        stop(self.supernodes[partition], sig)
        self.start_node(partition)

    def close(self) -> None:
        for proc in list(self.supernodes.values()):
            stop(proc)
        if self.superlink is not None:
            stop(self.superlink)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    # --- runs ----------------------------------------------------------------------------------------
    def submit(self, **run_config) -> subprocess.Popen:
        """``flwr run APP nnc-local --run-config ... --stream`` in the background; rounds go to ``out_file``."""
        run_config.setdefault("out-file", str(self.out_file))
        run_config.setdefault("num-partitions", self.nodes)
        cfg = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        env = dict(self.env, FLWR_HOME=str(self.root / "home" / "cli"))
        log = open(self.root / "flwr-run.log", "ab")
        try:
            return subprocess.Popen(["flwr", "run", str(self.app), CONNECTION, "--run-config", cfg, "--stream"],
                                    cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        finally:
            log.close()

    def rounds(self) -> list[dict]:
        if not self.out_file.exists():
            return []
        return [json.loads(line) for line in self.out_file.read_text().splitlines() if line.strip()]

    def wait_rounds(self, n: int, proc: subprocess.Popen | None = None, timeout: float = 600.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        why = f"after {timeout} s"
        while time.monotonic() < deadline:
            got = self.rounds()
            if len(got) >= n:
                return got
            if proc is not None and proc.poll() is not None and len(self.rounds()) < n:
                why = f"when `flwr run` ended (exit code {proc.returncode})"
                break
            time.sleep(0.2)
        raise TimeoutError(f"{len(self.rounds())} of {n} rounds {why}\n--- flwr run:\n"
                           f"{self.log('flwr-run')[-3000:]}\n--- superlink:\n{self.log('superlink')[-3000:]}")

    def run(self, timeout: float = 600.0, **run_config) -> list[dict]:
        """Run to completion; returns the per-round records the ServerApp wrote."""
        proc = self.submit(**run_config)
        try:
            n = int(run_config.get("num-server-rounds", 4))
            got = self.wait_rounds(n, proc, timeout)
            proc.wait(60)
            return got
        finally:
            stop(proc)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args(argv)
    with LocalDeployment(a.nodes) as d:
        for r in d.run(**{"num-server-rounds": a.rounds}):
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
