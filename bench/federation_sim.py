#!/usr/bin/env python3
"""Federation at scale, by simulation: N real federated nodes in one process, as N grows.

Each node is the real federation code (schedd/cluster: Peers heartbeats all-to-all, liveness,
Origin, RunNode) on loopback aiohttp, with a real Engine and Store on a fake executor (the fault
harness's nodes, tests/unit/fedsim.py, without faults; bench/_fedsim_nodes.py). For each N:

- heartbeat traffic per node per second, sent + received: bytes on the wire (every socket write of
  the process, HTTP framing included) and JSON bodies alone (counted at the request seam), over a
  steady window in which the cluster does nothing but heartbeat;
- federation CPU per node per second: process CPU time (all threads) over the window's wall time,
  divided by N (nothing else runs then); the process's whole load is shown too (one event loop
  runs every node: near 1.0 it cannot keep up, and nodes start judging themselves away);
- placement: a `Node=any` job submitted on the first node, which is too small for it, until its
  copy is recorded on the node it was sent to (median of a few);
- failure detection: one node is silenced (it stops sending and answering: fedsim's stall) until
  every other node has judged it down (3 intervals of silence after the last beat it sent).

One process cannot beat 128 x 127 times every 100 ms, so the interval grows with N (printed); the
per-interval columns are the ones to compare across N.

    python3 bench/federation_sim.py [--sizes 2,8,32,64] [--interval N=SECONDS,...] [--jobs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fedsim_nodes import Cluster, Wire, fedsim, poll, until  # noqa: E402

from dbus_fast import Variant  # noqa: E402

from schedd.core.engine import Caller  # noqa: E402

# Heartbeat interval by N: long enough that one process keeps every node's loop on time (a node
# whose loop runs an interval late judges itself away, which is this process's limit, not the design's).
INTERVALS = {2: 1.0, 8: 1.0, 32: 2.0, 64: 6.0, 128: 20.0}
MIB = 1 << 20


def interval_for(n: int, given: dict[int, float]) -> float:
    if n in given:
        return given[n]
    if n in INTERVALS:
        return INTERVALS[n]
    return max(1.0, n * n / 1100)  # about what the table's sizes need on a 2-core machine


@dataclass
class Row:
    n: int
    interval: float
    ready_s: float
    window_s: float
    wire_bps: float  # heartbeat bytes on the wire per node per second, sent + received
    json_bps: float  # JSON bodies alone
    beats: int  # heartbeats in the window
    cpu_per_node: float  # CPU s per node per s
    load: float  # process CPU s per wall s
    lag_max: float  # the loop's worst lateness in the window
    place_ms: list[float]
    placed_on: list[str]
    down_s: list[float]  # silence -> each other node's judgment
    aways: int
    reconnects: bool  # each heartbeat on a new connection (fd limit), not kept alive
    failed: str = ""  # the cluster never got every link ready: what it got

    def cells(self) -> list[str]:
        i = self.interval
        if self.failed:
            cells = [str(self.n), f"{i:g}" + ("*" if self.reconnects else "")] + ["-"] * (len(HEAD) - 2)
            cells[HEAD.index("proc load")] = f"{self.load:.2f}"
            cells[HEAD.index("down median")] = f"did not keep up: {self.failed}"
            return cells
        peers = max(1, self.n - 1)
        pm = statistics.median(self.place_ms) if self.place_ms else float("nan")
        dm = statistics.median(self.down_s) if self.down_s else float("nan")
        dx = max(self.down_s) if self.down_s else float("nan")
        return [
            str(self.n), f"{i:g}" + ("*" if self.reconnects else ""),
            f"{self.wire_bps:,.0f}", f"{self.wire_bps * i:,.0f}", f"{self.wire_bps * i / peers:,.0f}",
            f"{self.json_bps * i:,.0f}",
            f"{self.cpu_per_node * 1e3:.3f}", f"{self.cpu_per_node * i * 1e3:.2f}",
            f"{self.cpu_per_node * i / peers * 1e6:.0f}",
            f"{self.load:.2f}", f"{self.lag_max * 1e3:.0f}",
            f"{pm:.1f}",
            f"{dm:.2f} ({dm / i:.2f}I)", f"{dx:.2f} ({dx / i:.2f}I)",
            str(self.aways),
        ]


HEAD = ["N", "I s", "wire B/node/s", "B/node/I", "B/peer/I", "JSON B/node/I",
        "CPU ms/node/s", "CPU ms/node/I", "CPU µs/peer/I", "proc load", "lag ms",
        "place ms", "down median", "down max", "aways"]


def table(rows: list[Row]) -> str:
    cells = [HEAD] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEAD))]
    line = lambda c: "| " + " | ".join(x.rjust(w) for x, w in zip(c, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(c) for c in cells[1:]])


class LagProbe:
    """How late the loop wakes a 20 ms sleeper: what every node's timers see."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.02)
            self.worst = max(self.worst, loop.time() - t - 0.02)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def measure(n: int, interval: float, jobs: int, window_intervals: float, say) -> Row:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix=f"fedsim-{n}-") as tmp:
        c = Cluster(Path(tmp), n, interval)
        t, cpu0 = time.monotonic(), time.process_time()
        try:
            ready = await c.start()
        except AssertionError:
            wall = time.monotonic() - t
            say(f"N={n}: only {c.ready_links()} of {n * (n - 1)} links up and ready after {wall:.0f}s "
                f"(process load {(time.process_time() - cpu0) / wall:.2f}): one process does not keep up")
            await c.stop()
            return Row(n, interval, float("nan"), 0, float("nan"), float("nan"), 0, float("nan"),
                       (time.process_time() - cpu0) / wall, float("nan"), [], [], [], c.aways(), c.reconnects,
                       failed=f"{c.ready_links()}/{n * (n - 1)} links ready after {wall:.0f}s")
        say(f"N={n}: {n} nodes started and all {n * (n - 1)} links ready in {time.monotonic() - t:.1f}s "
            f"({ready:.1f}s after the last node started); heartbeat every {interval:g}s")
        try:
            await asyncio.sleep(interval)  # let the start's bursts (reconciles, resyncs) pass
            aways0 = c.aways()
            # -- steady window: nothing but heartbeats ------------------------------------
            window = max(1, min(window_intervals, round(40 / interval))) * interval  # whole intervals, <= ~40 s
            probe = LagProbe()
            probe.start()
            bytes0, req0 = c.counters.snapshot()
            wire0, cpu0, wall0 = Wire.total, time.process_time(), time.monotonic()
            await asyncio.sleep(window)
            wire1, cpu1, wall1 = Wire.total, time.process_time(), time.monotonic()
            bytes1, req1 = c.counters.snapshot()
            await probe.stop()
            wall = wall1 - wall0
            other = {k: v - req0.get(k, 0) for k, v in req1.items() if k != "POST /heartbeat" and v != req0.get(k, 0)}
            if other:
                say(f"N={n}: requests other than heartbeats in the window: {other}")
            hb = "POST /heartbeat"
            beats = req1.get(hb, 0) - req0.get(hb, 0)
            json_total = sum(bytes1.values()) - sum(bytes0.values())
            # Every byte written is read once, by another node of this process: per node, sent + received.
            wire_bps = 2 * (wire1 - wire0) / n / wall
            json_bps = 2 * json_total / n / wall
            load = (cpu1 - cpu0) / wall
            say(f"N={n}: window {wall:.1f}s: {beats} heartbeats ({beats / wall * interval:.0f} an interval, "
                f"expected {n * (n - 1)}), process load {load:.2f}, worst loop lag {probe.worst * 1e3:.0f} ms")
            # -- placement of Node=any jobs submitted on the small first node ----------------
            origin = c.nodes[c.names[0]]
            uid = fedsim.user_uid()
            place, placed_on = [], []
            for _ in range(jobs):
                props = {"Command": Variant("as", ["true"]), "Memory": Variant("t", 64 * MIB),
                         "Node": Variant("s", "any"), "CPUs": Variant("u", c.cpus)}
                t0 = c.sim.now()
                job = await origin.engine.submit(props, Caller(uid=uid))
                key = (origin.name, job.id)
                await until(lambda: key in c.added, f"the copy of {key}", 10 + 3 * interval)
                where, at = c.added[key]
                place.append((at - t0) * 1e3)
                placed_on.append(where)
                await until(lambda: c.sim.record(key).state.terminal, f"{key} to end", 10 + 3 * interval)
            say(f"N={n}: placement ms {[round(p, 1) for p in place]} on {placed_on}")
            # -- silence one node, until every other judges it down ------------------------
            # The jobs' pushes are over after an interval; then silence at a random point of the beat's cycle.
            await asyncio.sleep(interval * (1 + random.Random(n).random()))
            victim = c.nodes[c.names[-1]]
            downs0 = len(c.sim.downs)
            t_silent = c.sim.now()
            victim.stall()
            judges = set(c.names) - {victim.name}

            def judged() -> dict[str, float]:
                out: dict[str, float] = {}
                for d in c.sim.downs[downs0:]:
                    if d.peer == victim.name and d.judge in judges:
                        out.setdefault(d.judge, d.t - t_silent)
                return out

            await poll(lambda: len(judged()) == len(judges), f"every node to judge {victim.name} down",
                        10 + 5 * interval, every=0.01)
            down = sorted(judged().values())
            wrong = [f"{d.judge}->{d.peer}" for d in c.sim.downs[downs0:] if d.peer != victim.name]
            if wrong:
                say(f"N={n}: healthy nodes judged down meanwhile: {wrong[:10]}")
            say(f"N={n}: {victim.name} silenced: judged down by all {len(judges)} others after "
                f"{down[0]:.2f}-{down[-1]:.2f}s ({down[0] / interval:.2f}-{down[-1] / interval:.2f} intervals)")
            return Row(n, interval, ready, wall, wire_bps, json_bps, beats, load / n, load, probe.worst,
                       place, placed_on, down, c.aways() - aways0, c.reconnects)
        finally:
            await c.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2,8,32,64", help="comma-separated node counts (default 2,8,32,64; 128 does not keep up in one process)")
    ap.add_argument("--interval", default="", help="heartbeat interval by size, e.g. 32=2,128=15 (seconds)")
    ap.add_argument("--jobs", type=int, default=5, help="Node=any jobs placed per size (median)")
    ap.add_argument("--window", type=int, default=3, help="steady window, in heartbeat intervals (at most ~40 s)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print the table only")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    given = {int(k): float(v) for k, v in (kv.split("=") for kv in args.interval.split(",") if kv.strip())}
    logging.basicConfig(level=logging.CRITICAL)  # the nodes' own logs (node up/down) are not the output
    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    rows = []
    for n in sizes:
        if n < 2:
            raise SystemExit("a federation needs at least 2 nodes")
        rows.append(asyncio.run(measure(n, interval_for(n, given), args.jobs, args.window, say)))
    print(table(rows))
    print("I: heartbeat interval (chosen per N so one process keeps up; a node heartbeats every peer once an\n"
          "interval). wire: bytes written to loopback sockets (HTTP framing included), sent + received, per node;\n"
          "JSON: request and answer bodies alone. /peer: per node divided by its N-1 peers. CPU: process CPU time\n"
          "over wall time / N in a window of heartbeats only; proc load: the whole process (one event loop runs\n"
          "all nodes; near 1.0 it falls behind). lag: worst lateness of a 20 ms timer in the window. place:\n"
          "Node=any job submitted on a node too small for it -> its copy recorded on the chosen node (median).\n"
          "down: one node silenced -> each other node judges it down (threshold 3 I after its last beat).\n"
          "aways: times a node found its own loop an interval late (should be 0).\n"
          "*: both ends of N(N-1) kept-alive links exceed this process's fd limit: idle connections close\n"
          "after I/4, so every heartbeat pays a TCP connect (N machines would keep them).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
