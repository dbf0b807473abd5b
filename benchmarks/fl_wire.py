"""Bytes on the wire in a real Flower 1.42 deployment, against the payload the nnc ledger counts.

A SuperLink and N SuperNodes run on 127.0.0.1 (examples/fl_deploy/local_deployment.py); the SuperNodes reach the
Fleet API through a byte-counting TCP proxy, so every byte of Fleet API traffic (HTTP requests and responses:
registration, heartbeats, polling, message and object transfer) is counted per direction with a timestamp.
First the federation idles (nodes connected, no run) to measure polling; then each method of the app
(``nnc``: top-5 % ternary uplink + coded top-10 % downlink; ``float32``: FedAvg) runs R rounds. For each round
the table gives the payload (``ServerCodec.ledger``: bitstream lengths, or float32 nbytes) and the wire bytes in
that round's time window, gross and net of the idle polling rate.

    python benchmarks/fl_wire.py --nodes 3 --rounds 4 --json benchmarks/results/fl_wire.json
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "fl_deploy"))

from local_deployment import LocalDeployment, free_port  # noqa: E402


class CountingProxy:
    """A TCP forwarder on 127.0.0.1 that records ``(time, nbytes)`` for each direction: ``up`` is
    client -> upstream (SuperNode -> SuperLink), ``down`` the reverse. Runs its own event loop in a thread."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = free_port()
        self.events = {"up": [], "down": []}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _count(self, d: str, n: int) -> None:
        with self._lock:
            self.events[d].append((time.time(), n))

    async def _pipe(self, reader, writer, d: str) -> None:
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                self._count(d, len(data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def _handle(self, cr, cw) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            cw.close()
            return
        await asyncio.gather(self._pipe(cr, uw, "up"), self._pipe(ur, cw, "down"))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> "CountingProxy":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def bytes_between(self, t0: float, t1: float) -> dict[str, int]:
        out = {}
        with self._lock:
            for d, ev in self.events.items():
                ts = [t for t, _ in ev]
                out[d] = sum(n for _, n in ev[bisect.bisect_right(ts, t0):bisect.bisect_right(ts, t1)])
        return out


def measure(nodes: int, rounds: int, idle_s: float, methods, lr: float, hidden: int = 32) -> dict:
    d = LocalDeployment(nodes)
    proxy = CountingProxy(d.port).start()
    d.fleet_port = proxy.port
    result = {"conditions": {"nodes": nodes, "rounds": rounds, "idle_s": idle_s, "lr": lr,
                             "model": f"PyTorch MLP 64-{hidden}-10 ({75 * hidden + 10:,} parameters), sklearn digits",
                             "flower": __import__("flwr").__version__, "transport": "Fleet API over HTTP, "
                             "--insecure, 127.0.0.1, counted at a TCP proxy between SuperNodes and SuperLink"},
              "methods": {}}
    try:
        d.start()
        time.sleep(3)                                   # registration done
        t0 = time.time()
        time.sleep(idle_s)
        idle = proxy.bytes_between(t0, time.time())
        rate = {k: v / idle_s / nodes for k, v in idle.items()}
        result["idle"] = {"seconds": idle_s, "bytes": idle, "bytes_per_s_per_node": rate}
        for m in methods:
            d.out_file = d.root / f"rounds-{m}.jsonl"
            t_start = time.time()
            rows = d.run(**{"num-server-rounds": rounds, "fraction-train": 1.0, "lr": lr, "seed": 0,
                            "method": m, "hidden": hidden, "out-file": str(d.out_file)}, timeout=1800)
            prev = t_start
            per = []
            for r in rows:
                w = proxy.bytes_between(prev, r["t"])
                dt = r["t"] - prev
                per.append({"round": r["round"], "seconds": dt, "acc": r["acc"],
                            "payload_up": r["up"], "payload_down": r["down"],
                            "wire_up": w["up"], "wire_down": w["down"],
                            "wire_up_net": max(0, w["up"] - rate["up"] * dt * nodes),
                            "wire_down_net": max(0, w["down"] - rate["down"] * dt * nodes)})
                prev = r["t"]
            result["methods"][m] = per
    finally:
        d.close()
        proxy.stop()
    return result


def table(res: dict) -> str:
    lines = [f"idle polling: {res['idle']['bytes_per_s_per_node']['up']:.0f} B/s up + "
             f"{res['idle']['bytes_per_s_per_node']['down']:.0f} B/s down per node "
             f"({res['idle']['seconds']:.0f} s, {res['conditions']['nodes']} nodes)",
             "| method | round | s | payload up | wire up | wire up net | payload down | wire down | "
             "wire down net | acc |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m, per in res["methods"].items():
        for r in per:
            lines.append(f"| {m} | {r['round']} | {r['seconds']:.1f} | {r['payload_up']:,} | {r['wire_up']:,} | "
                         f"{r['wire_up_net']:,.0f} | {r['payload_down']:,} | {r['wire_down']:,} | "
                         f"{r['wire_down_net']:,.0f} | {r['acc']:.3f} |")
    if "float32" in res["methods"] and "nnc" in res["methods"]:
        tot = {m: {k: sum(r[k] for r in per) for k in per[0] if k not in ("round", "acc")}
               for m, per in res["methods"].items()}
        f, n = tot["float32"], tot["nnc"]
        res["ratios"] = {
            "payload_up": f["payload_up"] / n["payload_up"], "wire_up": f["wire_up"] / n["wire_up"],
            "wire_up_net": f["wire_up_net"] / max(1, n["wire_up_net"]),
            "payload_down": f["payload_down"] / max(1, n["payload_down"]),
            "wire_down": f["wire_down"] / n["wire_down"],
            "wire_down_net": f["wire_down_net"] / max(1, n["wire_down_net"])}
        lines.append("float32 / nnc over all rounds: " + ", ".join(f"{k} {v:.1f}x" for k, v in res["ratios"].items()))
    return "\n".join(lines)


def records(hidden: int = 32) -> dict:
    """Serialised size of what nnc puts in a Flower message, per-tensor records (the layout before one record per
    message: one Array per tensor or stream + four ConfigRecord keys) against one packed Array, for the app's
    model (64-hidden-10 MLP) after a round of training. Exact (``record_wire_bytes``), no deployment needed."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from nnc.fl import ClientCodec, ServerCodec
    from nnc.fl.flower.fedavg import STYPE_STREAM, STYPE_UPDATE, _downlink_to_records, _uplink_to_record, \
        record_wire_bytes
    from nnc.fl.flower.records import bytes_array, to_arrayrecord
    from nnc_digits.task import METHODS, base_fn

    def old_down(msg):
        arrays = {f"nnc.stream.{i:04d}": bytes_array(x, STYPE_STREAM) for i, x in enumerate(msg.streams)}
        arrays.update({k: Array(np.asarray(v, np.float32)) for k, v in (msg.arrays or {}).items()})
        meta = ConfigRecord({"nnc.kind": msg.kind, "nnc.base-round": 0, "nnc.round": 1, "nnc.reset-uplink": False})
        return record_wire_bytes(ArrayRecord(arrays)) + record_wire_bytes(meta) - record_wire_bytes(ConfigRecord())

    def old_up(u):
        if isinstance(u.payload, bytes):
            return record_wire_bytes(ArrayRecord({"nnc.update": bytes_array(u.payload, STYPE_UPDATE)}))
        return record_wire_bytes(to_arrayrecord(u.payload))

    base = base_fn()
    out = {}
    for m, (up, down) in METHODS.items():
        server, client = ServerCodec(base, up, down), ClientCodec(base, up, down)
        rng = np.random.default_rng(0)
        for r in range(2):
            msg = server.downlink_for(0)
            model = client.receive(msg)
            u = client.encode({k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.01
                               for k, v in model.items()})
            server.step({0: u})
        msg = server.downlink_for(0)
        out[m] = {"down_payload": msg.nbytes, "down_old": old_down(msg),
                  "down_new": record_wire_bytes(_downlink_to_records(msg, list(base))[0]),
                  "up_payload": u.nbytes, "up_old": old_up(u),
                  "up_new": record_wire_bytes(_uplink_to_record(u, list(base)))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle polling measured before the runs")
    ap.add_argument("--methods", nargs="+", default=["float32", "nnc"])
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--hidden", type=int, default=32, help="hidden units of the app's MLP (model size)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--records", action="store_true", help="only the record framing table (no deployment)")
    a = ap.parse_args(argv)
    if a.records:
        rec = records()
        print("| method | message | payload | per-tensor records (before) | one record (now) |\n|---|---|---|---|---|")
        for m, r in rec.items():
            for d in ("down", "up"):
                print(f"| {m} | {d} | {r[d + '_payload']:,} | {r[d + '_old']:,} | {r[d + '_new']:,} |")
        if a.json:
            a.json.write_text(json.dumps(rec, indent=1))
        return 0
    res = measure(a.nodes, a.rounds, a.idle, a.methods, a.lr, a.hidden)
    print(table(res))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
