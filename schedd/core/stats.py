"""Accounting figures: totals and per-user job counts, success rate, waits and CPU-hours.

Pure aggregation over `Record`s (one per job), so it is tested without a daemon;
the daemon feeds it from memory (live jobs) and the store (the archive).
Times are µs as on the bus; the figures are seconds and hours, as people read them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from schedd.core.model import Job, now_usec


@dataclass(frozen=True, slots=True)
class Record:
    """What accounting needs of one job."""

    user: str
    state: str
    submit_time: int
    start_time: int = 0
    end_time: int = 0
    cpu_time_usec: int = 0
    memory_peak: int = 0
    suspended_usec: int = 0

    @classmethod
    def of(cls, job: Job) -> "Record":
        return cls(job.spec.owner, job.state.value, job.submit_time, job.start_time,
                   job.end_time, job.cpu_time_usec, job.memory_peak, job.suspended_usec)


def wait_usec(submit: int, start: int, now: int | None = None) -> int:
    """Submit to start; still waiting: submit to now."""
    if not submit:
        return 0
    return max(0, (start or (now if now is not None else now_usec())) - submit)


def run_usec(start: int, end: int, now: int | None = None) -> int:
    """Start to end (to now while running); 0 before it starts."""
    if not start:
        return 0
    return max(0, (end or (now if now is not None else now_usec())) - start)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(records: Iterable[Record]) -> dict[str, Any]:
    """Figures for one group of jobs. Keys whose value is unknown (no job started) are left out."""
    recs = list(records)
    by_state: dict[str, int] = {}
    for r in recs:
        by_state[r.state] = by_state.get(r.state, 0) + 1
    completed, failed = by_state.get("COMPLETED", 0), by_state.get("FAILED", 0)
    waits = sorted(wait_usec(r.submit_time, r.start_time) / 1e6 for r in recs if r.start_time)
    runs = [run_usec(r.start_time, r.end_time) / 1e6 for r in recs if r.start_time and r.end_time]
    out: dict[str, Any] = {
        "Jobs": len(recs),
        "States": by_state,
        "Completed": completed,
        "Failed": failed,
        "CPUHours": round(sum(r.cpu_time_usec for r in recs) / 3.6e9, 6),
        "CPUTimeUSec": sum(r.cpu_time_usec for r in recs),
        "MaxMemoryPeak": max((r.memory_peak for r in recs), default=0),
    }
    if completed + failed:
        out["SuccessRate"] = round(completed / (completed + failed), 4)
    if waits:
        out["MeanWaitSec"] = round(sum(waits) / len(waits), 3)
        out["P95WaitSec"] = round(percentile(waits, 0.95), 3)
    if runs:
        out["MeanRunSec"] = round(sum(runs) / len(runs), 3)
    return out


def aggregate(records: Iterable[Record]) -> dict[str, Any]:
    """{"Total": summary, "Users": {user: summary}}."""
    recs = list(records)
    users: dict[str, list[Record]] = {}
    for r in recs:
        users.setdefault(r.user, []).append(r)
    return {"Total": summary(recs), "Users": {u: summary(rs) for u, rs in sorted(users.items())}}


def collect(engine: Any, uid: int | None = None, since: int = 0) -> dict[str, Any]:
    """Figures for jobs submitted at or after `since` (µs), of one uid or all: live jobs from memory,
    the archive from the store."""
    live = [j for j in engine.jobs.values() if (uid is None or j.spec.uid == uid) and j.submit_time >= since]
    archived = [Record(*row[1:]) for row in engine.store.accounting(uid, since, exclude=set(engine.jobs))]
    return aggregate([*(Record.of(j) for j in live), *archived])


async def gather(engine: Any, uid: int | None = None, since: int = 0) -> dict[str, Any]:
    """collect() without stalling the event loop for a big history: live jobs are read from memory
    in slices, the archive is read and everything aggregated in the store's background thread."""
    exclude = set(engine.jobs)  # memory's copies win; taken with the snapshot, so no job counts twice
    live: list[Record] = []
    for i, j in enumerate(list(engine.jobs.values()), 1):
        if (uid is None or j.spec.uid == uid) and j.submit_time >= since:
            live.append(Record.of(j))
        if i % 2000 == 0:
            await asyncio.sleep(0)

    def work() -> dict[str, Any]:
        archived = [Record(*row[1:]) for row in engine.store.accounting(uid, since, exclude=exclude)]
        return aggregate([*live, *archived])

    return await engine.store.background(work)


# D-Bus types of the figures (GetStats answers a{sv}; a figure that is unknown is absent).
FIGURE_TYPES: dict[str, str] = {
    "Jobs": "u", "States": "a{su}", "Completed": "u", "Failed": "u", "CPUHours": "d", "CPUTimeUSec": "t",
    "MaxMemoryPeak": "t", "SuccessRate": "d", "MeanWaitSec": "d", "P95WaitSec": "d", "MeanRunSec": "d",
}


def to_variants(figures: dict[str, Any]) -> dict[str, Any]:
    """aggregate()'s dict -> GetStats' a{sv}: Total a{sv}, Users a{sa{sv}}."""
    from dbus_fast import Variant  # keeps this module importable (and testable) without D-Bus

    def one(s: dict[str, Any]) -> dict[str, Variant]:
        return {k: Variant(FIGURE_TYPES[k], v) for k, v in s.items()}

    return {"Total": Variant("a{sv}", one(figures["Total"])),
            "Users": Variant("a{sa{sv}}", {u: one(s) for u, s in figures["Users"].items()})}
