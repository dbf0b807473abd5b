"""nnc on a Flower deployment at the size of a real model: peak memory of every process, seconds per round.

A SuperLink and ``--nodes`` SuperNodes on 127.0.0.1 (``--insecure``, runtime dependency installation disabled;
examples/fl_deploy/local_deployment.py), ``flwr run`` of examples/fl_deploy/scale (``--layers`` float32 Linear
weights, ``--params`` values in all, generated from a seed; a synthetic rank-1 local step; top-1 % ternary uplink
with error feedback, coded top-1 % downlink; client state in each node's state directory). A thread polls every
process of every session the deployment started (SuperLink, SuperNodes, the SuperExecs they spawn, the
ServerApp and ClientApp processes) for ``VmHWM`` in /proc/PID/status every 0.1 s; a process is reported with the
largest value seen. Every process is stopped by its pid at the end, also on failure.

Before starting it estimates the memory the run needs from ``--server-bpp`` and ``--client-bpp`` (bytes per
parameter, measured at small sizes by this script) and refuses when that exceeds MemAvailable minus
``--headroom-gb`` (the machine must not swap), unless ``--force``.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/fl_deploy_scale.py --params 2e8 --server-bpp 35 --client-bpp 25 \\
        --json benchmarks/results/fl_deploy_scale_2e8.json

(200 M: ServerApp 31.5 B/param, ClientApp 23.9, 12.7 GB at once, 482 s; docs/fl.md, "Deploy".)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "fl_deploy"))
from local_deployment import LocalDeployment  # noqa: E402

APP = REPO / "examples" / "fl_deploy" / "scale"


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _proc(pid: int):
    """(parent pid, VmHWM bytes, VmRSS bytes, command line) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        hwm = rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return ppid, hwm, rss, cmd
    except (OSError, ValueError, IndexError):
        return None


class Poller:
    """Largest VmHWM seen per process descending from the given roots (pid -> name; some Flower processes start
    their own sessions, so membership is by parent chain), and the largest sum of RSS over all of them."""

    def __init__(self, roots: dict[int, str], period: float = 0.1):
        self.sessions, self.period = roots, period
        self.seen: dict[int, dict] = {}
        self.max_total_rss = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join()

    def _run(self):
        while not self._stop.is_set():
            total, live = 0, {}
            for name in os.listdir("/proc"):
                if name.isdigit():
                    got = _proc(int(name))
                    if got is not None:
                        live[int(name)] = got

            def root_of(pid):
                for _ in range(64):
                    if pid in self.sessions:
                        return pid
                    if pid not in live:
                        return None
                    pid = live[pid][0]
                return None

            for pid, (ppid, hwm, rss, cmd) in live.items():
                root = root_of(pid)
                if root is None:
                    continue
                total += rss
                e = self.seen.setdefault(pid, {"pid": pid, "session": self.sessions[root], "cmd": cmd,
                                               "hwm": 0, "first": time.time()})
                e["hwm"] = max(e["hwm"], hwm)
                e["last"] = time.time()
            self.max_total_rss = max(self.max_total_rss, total)
            self._stop.wait(self.period)


def _role(e: dict) -> str:
    cmd = e["cmd"]
    for key, role in (("flwr-serverapp", "ServerApp"), ("flwr-clientapp", "ClientApp"),
                      ("flower-superexec", "SuperExec"), ("flower-superlink", "SuperLink"),
                      ("flower-supernode", "SuperNode"), ("flwr run", "flwr run")):
        if key in cmd:
            return role
    return cmd.split(" ")[0].rsplit("/", 1)[-1][:24] or "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=2e8)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--server-bpp", type=float, default=35.0, help="ServerApp bytes per parameter (estimate)")
    ap.add_argument("--client-bpp", type=float, default=28.0, help="ClientApp bytes per parameter (estimate)")
    ap.add_argument("--headroom-gb", type=float, default=4.0)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    n = int(a.params)
    need = n * (a.server_bpp + a.nodes * a.client_bpp)
    avail = _mem_available()
    print(f"{n:,} parameters: estimated {need / 2 ** 30:.1f} GiB for the ServerApp and {a.nodes} ClientApps, "
          f"{avail / 2 ** 30:.1f} GiB available", flush=True)
    if need > avail - a.headroom_gb * 2 ** 30 and not a.force:
        print(f"refused: that leaves less than {a.headroom_gb} GiB (use a smaller --params, or --force)")
        return 2
    t0 = time.time()
    env = {"RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rounds, poller, err = [], None, None
    with LocalDeployment(a.nodes, app=APP, env=env) as d:
        sessions = {d.superlink.pid: "superlink", **{p.pid: f"supernode{i}" for i, p in d.supernodes.items()}}
        poller = Poller(sessions).start()
        t_start = time.time()
        proc = d.submit(**{"num-server-rounds": a.rounds, "params": n, "layers": a.layers, "num-partitions": a.nodes})
        sessions[proc.pid] = "flwr run"
        try:
            rounds = d.wait_rounds(a.rounds, proc, a.timeout)
            proc.wait(120)
        except Exception as e:  # noqa: BLE001 - reported, the deployment is stopped below either way
            err = f"{type(e).__name__}: {str(e)[-2000:]}"
        finally:
            from local_deployment import stop
            stop(proc)
            poller.stop()
        run_seconds = time.time() - t_start
        logs = {name: d.log(name)[-1500:] for name in ("superlink", "flwr-run")} if err else {}
    procs = sorted(poller.seen.values(), key=lambda e: -e["hwm"])
    table = [{"role": _role(e), "session": e["session"], "pid": e["pid"], "peak_rss_mb": e["hwm"] / 2 ** 20,
              "b_per_param": e["hwm"] / n, "seconds_alive": e.get("last", e["first"]) - e["first"]}
             for e in procs if e["hwm"] > 0]
    res = {"conditions": {"params": n, "layers": a.layers, "nodes": a.nodes, "rounds": a.rounds,
                          "uplink": "top-1 % ternary + EF (global)", "downlink": "coded top-1 % QP -44",
                          "model": "float32 Linear weights from a seed, synthetic rank-1 local step",
                          "memory": "VmHWM per process, polled every 0.1 s"},
           "error": err, "rounds": rounds, "run_seconds": run_seconds, "total_seconds": time.time() - t0,
           "max_total_rss_mb": poller.max_total_rss / 2 ** 20, "processes": table, "logs": logs}
    print(f"\n{n:,} parameters ({4 * n / 2 ** 30:.2f} GiB float32), {a.nodes} SuperNodes, {len(rounds)}/{a.rounds} "
          f"rounds in {run_seconds:.0f} s{' - ' + err[:300] if err else ''}")
    prev = None
    for r in rounds:
        dt = r["t"] - (prev if prev is not None else t_start)
        prev = r["t"]
        print(f"  round {r['round']}: {dt:.0f} s, up {r['up']:,} B, down {r['down']:,} B, dropped {r['dropped']}")
    print("\n| process | session | peak RSS MB | B/param |\n|---|---|---|---|")
    for e in table:
        if e["peak_rss_mb"] >= 50:
            print(f"| {e['role']} | {e['session']} | {e['peak_rss_mb']:,.0f} | {e['b_per_param']:.1f} |")
    print(f"largest sum of RSS over all processes at one time: {poller.max_total_rss / 2 ** 20:,.0f} MB")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0 if not err and len(rounds) == a.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
