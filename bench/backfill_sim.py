#!/usr/bin/env python3
"""Trace-driven simulation of the scheduling policies, driving the daemon's own scheduler
module (schedd.core.scheduler + schedd.core.ledger) with a fake clock.

The trace is synthetic but shaped like a batch cluster's: Poisson arrivals at ~95 % offered
load, widths from 1 CPU to the whole node, log-normal run times, and time limits that
overestimate the run time 1.2-3x, rounded up to 15 minutes, as users do. The planner sees
only the limits; jobs end at their real run time. Figures are compared with `strict` (no
systemd here: this measures decisions, not mechanics).

    python3 bench/backfill_sim.py [--jobs 3000] [--seed 1] [--cpus 32] [--out bench/backfill_results.md]
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schedd.core.ledger import Ledger  # noqa: E402
from schedd.core.model import Job, JobSpec  # noqa: E402
from schedd.core.scheduler import Running, Scheduler  # noqa: E402

S = 1_000_000  # µs
GiB = 1 << 30
WIDTHS = [(1, 0.40), (2, 0.20), (4, 0.15), (8, 0.12), (16, 0.08), (32, 0.05)]


def trace(n: int, seed: int, cpus: int, load: float = 0.95) -> list[dict]:
    rng = random.Random(seed)
    widths = [min(w, cpus) for w, _ in WIDTHS]
    weights = [p for _, p in WIDTHS]
    jobs = []
    for i in range(n):
        width = rng.choices(widths, weights)[0]
        runtime = int(min(8 * 3600, max(30, rng.lognormvariate(math.log(600), 1.1)))) * S
        limit = math.ceil(runtime * rng.uniform(1.2, 3.0) / (900 * S)) * 900 * S
        jobs.append({"id": i + 1, "cpus": width, "runtime": runtime, "limit": limit,
                     "priority": 10 if rng.random() < 0.1 else 0})
    mean_work = statistics.fmean(j["cpus"] * j["runtime"] for j in jobs)
    gap = mean_work / (cpus * load)  # mean inter-arrival time for the offered load
    t = 0
    for j in jobs:
        t += int(rng.expovariate(1 / gap))
        j["arrival"] = t
    return jobs


def simulate(jobs: list[dict], policy: str, cpus: int, with_limits: bool = True) -> dict:
    ledger = Ledger(list(range(cpus)), cpus * 4 * GiB)
    running: dict[int, tuple[int, object, Job]] = {}  # id -> (planned end, alloc, job)
    sched = Scheduler(ledger, policy, running=lambda: [
        Running(end if with_limits else None, len(a.cpus), a.memory) for end, a, _ in running.values()])
    events: list[tuple[int, int, int]] = []  # (time, kind 0=end 1=arrival, id)
    for j in jobs:
        heapq.heappush(events, (j["arrival"], 1, j["id"]))
    by_id = {j["id"]: j for j in jobs}
    start: dict[int, int] = {}
    end: dict[int, int] = {}
    while events:
        now = events[0][0]
        while events and events[0][0] == now:
            _, kind, jid = heapq.heappop(events)
            if kind == 1:
                j = by_id[jid]
                spec = JobSpec(command=["x"], name=str(jid), cpus=j["cpus"], memory=j["cpus"] * GiB,
                               priority=j["priority"], runtime_max_usec=j["limit"] if with_limits else 0)
                sched.enqueue(Job(id=jid, spec=spec))
            else:
                _, alloc, _ = running.pop(jid)
                ledger.release(alloc)
                end[jid] = now
        for job, alloc in sched.schedule(now):
            j = by_id[job.id]
            start[job.id] = now
            running[job.id] = (now + j["limit"], alloc, job)
            heapq.heappush(events, (now + j["runtime"], 0, job.id))
    waits = sorted((start[j["id"]] - j["arrival"]) / S for j in jobs)
    wide = [(start[j["id"]] - j["arrival"]) / S for j in jobs if j["cpus"] == cpus]
    span = max(end.values()) - min(j["arrival"] for j in jobs)
    busy = sum(j["cpus"] * j["runtime"] for j in jobs)
    return {
        "utilization": busy / (cpus * span),
        "mean_wait": statistics.fmean(waits),
        "p95_wait": waits[int(0.95 * (len(waits) - 1))],
        "wide_mean_wait": statistics.fmean(wide) if wide else 0.0,
        "makespan_h": span / S / 3600,
    }


def hours(s: float) -> str:
    return f"{s / 3600:.2f} h"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cpus", type=int, default=32)
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    a = p.parse_args()
    jobs = trace(a.jobs, a.seed, a.cpus)
    runs = [("strict", "strict", True), ("backfill", "backfill", True),
            ("backfill, no time limits given", "backfill", False), ("first-fit", "first-fit", True)]
    results = {}
    for label, policy, limits in runs:
        t0 = time.perf_counter()
        results[label] = simulate(jobs, policy, a.cpus, limits)
        results[label]["sim_s"] = time.perf_counter() - t0
    base = results["strict"]
    lines = [
        f"Trace: {a.jobs} jobs, seed {a.seed}, one {a.cpus}-CPU node, ~95 % offered load; "
        f"time limits 1.2-3x the run time, rounded up to 15 min.",
        "",
        "| policy | utilization | mean wait | p95 wait | mean wait, whole-node jobs | makespan | vs strict: mean wait |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in results.items():
        lines.append(f"| {label} | {r['utilization']:.1%} | {hours(r['mean_wait'])} | {hours(r['p95_wait'])} | "
                     f"{hours(r['wide_mean_wait'])} | {r['makespan_h']:.1f} h | "
                     f"{r['mean_wait'] / base['mean_wait']:.2f}x |")
    table = "\n".join(lines)
    print(table)
    print(f"\n(simulated in {sum(r['sim_s'] for r in results.values()):.1f} s)")
    if a.out:
        a.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
