"""The dashboard's memory: a bounded ring of samples, the last hour's runs and the recent waits.

Why here and not from Prometheus: the page must draw its plots on a node nobody scrapes, offline.

- Samples: every `interval` (10 s by default, `[http] history_interval`) one row per node of the
  cluster: CPUs, memory and GPUs allocated and in all, running and pending jobs, and (this node
  only) the queue's length and the starts, ends and failures since the row before. The ring keeps
  `keep / interval` rows per node (24 h: 8,640 rows, about 1.6 MB per node in memory).
- Runs: each run that ended in the last hour (id, name, user, node, its CPU ids, start, end, state),
  at most RUNS_KEPT, for the page's timeline by CPU (a running job is in the live snapshot).
- Waits: (id, start, seconds from submission to start) of the last WAITS_KEPT starts within `keep`.

Cost: a sample reads the ledger's counters, the engine's counts and the peers' rows (all O(1) per
node, no scan of the job table); starts and ends are counted as the engine reports transitions.
It survives a restart: the ring is written to `<state_dir>/history.json` every PERSIST_EVERY_S
(off the event loop) and at a clean stop, and read back at start; a gap is left for the time the
daemon was down (a crash loses at most PERSIST_EVERY_S of samples).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schedd.core.model import Job, JobState, now_usec

log = logging.getLogger(__name__)

# One row: the time (s since the epoch) then these, in this order (None: unknown, e.g. a peer down).
FIELDS = ("cpus", "cpus_total", "memory", "memory_total", "gpus", "gpus_total", "running", "pending",
          "queue", "starts", "ends", "failed")
RUNS_KEPT = 4096
RUN_WINDOW_S = 3600
WAITS_KEPT = 4096
PERSIST_EVERY_S = 600
FILE_VERSION = 1

PeersFn = Callable[[], Iterable[dict[str, Any]]]
Row = tuple  # (t, *FIELDS)


@dataclass(slots=True)
class Run:
    id: int
    name: str
    user: str
    node: str
    cpus: list[int]
    start: float  # s since the epoch
    end: float
    state: str

    def json(self) -> list:
        return [self.id, self.name, self.user, self.node, self.cpus, self.start, self.end, self.state]


@dataclass
class History:
    """An engine listener that counts starts and ends, and a sampler owned by the HTTP app's lifetime."""

    engine: Any
    peers: PeersFn | None = None
    interval: float = 10.0
    keep: float = 86400.0
    path: Path | None = None
    on_sample: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.capacity = max(1, int(self.keep // self.interval))
        self.rows: dict[str, deque[Row]] = {}
        self.runs: deque[Run] = deque(maxlen=RUNS_KEPT)
        self.waits: deque[tuple[int, float, float]] = deque(maxlen=WAITS_KEPT)
        self._starts = self._ends = self._failed = 0
        self._task: asyncio.Task | None = None
        self.restored = False
        if self.path is not None:
            self._load()
        self.engine.listeners.append(self)

    # -- engine events (counters only: no I/O, no scan) --------------------------------

    def job_changed(self, job: Job, fields: frozenset[str], old_state: JobState) -> None:
        state = job.state
        if state == old_state:
            return
        if state == JobState.RUNNING and old_state == JobState.PENDING:
            self._starts += 1
            if job.submit_time and job.start_time:
                self.waits.append((job.id, job.start_time / 1e6, max(0, job.start_time - job.submit_time) / 1e6))
        elif old_state.active and not state.active:
            if state.terminal:
                self._ends += 1
                self._failed += state == JobState.FAILED
            if job.start_time:
                end = (job.end_time or now_usec()) / 1e6
                self.runs.append(Run(job.id, job.spec.name, job.spec.owner, job.node or self.engine.config.node_name,
                                     list(job.assigned_cpus), job.start_time / 1e6, end, state.value))

    def job_added(self, job: Job) -> None: pass
    def job_released(self, job: Job) -> None: pass
    def job_loaded(self, job: Job) -> None: pass
    def job_unloaded(self, job: Job) -> None: pass
    def manager_changed(self, facts: frozenset[str]) -> None: pass

    # -- sampling ---------------------------------------------------------------------------

    def sample(self, t: float | None = None) -> dict[str, list]:
        """Take one row per node now; returns {node: row} (what the page's live stream gets)."""
        t = round(now_usec() / 1e6 if t is None else t, 3)
        e = self.engine
        led = e.ledger
        pending, running = e.counts()
        out: dict[str, list] = {e.config.node_name: [
            t, led.total_cpus - led.free_cpus, led.total_cpus, led.total_memory - led.free_memory,
            led.total_memory, led.total_gpus - led.free_gpus, led.total_gpus, running, pending,
            len(e.scheduler), self._starts, self._ends, self._failed]}
        self._starts = self._ends = self._failed = 0
        for p in self._peer_rows():
            name = p.get("Name")
            if not name or p.get("Local") or name in out:
                continue
            if p.get("State") == "down":  # draining and drained nodes still report their load
                out[name] = [t] + [None] * len(FIELDS)
                continue
            g = p.get
            out[name] = [t, g("TotalCPUs", 0) - g("AvailableCPUs", 0), g("TotalCPUs", 0),
                         g("TotalMemory", 0) - g("AvailableMemory", 0), g("TotalMemory", 0),
                         g("TotalGPUs", 0) - g("AvailableGPUs", 0), g("TotalGPUs", 0),
                         g("RunningJobs", 0), g("PendingJobs", 0), None, None, None, None]
        for name, row in out.items():
            ring = self.rows.get(name)
            if ring is None:
                ring = self.rows[name] = deque(maxlen=self.capacity)
            ring.append(tuple(row))
        return out

    def _peer_rows(self) -> list[dict[str, Any]]:
        if self.peers is None:
            return []
        try:
            return list(self.peers())
        except Exception:  # noqa: BLE001 - the federation's bug must not stop the sampler
            log.exception("listing peers for the history failed")
            return []

    async def run(self) -> None:
        """Sample every `interval` on the loop's clock (no drift), and write the ring out now and then."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        last_save = loop.time()
        while True:
            try:
                row = self.sample()
                for fn in self.on_sample:
                    fn(row)
            except Exception:  # noqa: BLE001 - one bad sample must not end the history
                log.exception("history sample failed")
            if self.path is not None and loop.time() - last_save >= PERSIST_EVERY_S:
                last_save = loop.time()
                data = self.dump()
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self._write, data)
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.path is not None:
            try:
                self._write(self.dump())
            except OSError as e:
                log.warning("could not save the dashboard's history to %s: %s", self.path, e)

    # -- what the page reads ------------------------------------------------------------

    def view(self, since: float = 0.0) -> dict[str, Any]:
        """Columnar, as uPlot wants it: per node {"t": [...], "cpus": [...], ...}; rows after `since` only."""
        now = now_usec() / 1e6
        nodes: dict[str, dict[str, list]] = {}
        for name, ring in self.rows.items():
            rows = list(ring)
            if since:
                rows = rows[bisect.bisect_right([r[0] for r in rows], since):]
            cols = list(zip(*rows)) if rows else [()] * (len(FIELDS) + 1)
            nodes[name] = {"t": list(cols[0]), **{f: list(c) for f, c in zip(FIELDS, cols[1:])}}
        return {
            "node": self.engine.config.node_name, "now": now, "interval_s": self.interval,
            "keep_s": self.keep, "capacity": self.capacity, "fields": list(FIELDS),
            "persisted": self.path is not None, "restored": self.restored, "nodes": nodes,
            "runs": [r.json() for r in self.runs if r.end >= now - RUN_WINDOW_S],
            "waits": [list(w) for w in self.waits if w[1] >= now - self.keep],
        }

    # -- persistence -----------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {"version": FILE_VERSION, "interval_s": self.interval, "fields": list(FIELDS),
                "rows": {n: list(r) for n, r in self.rows.items()},
                "runs": [r.json() for r in self.runs], "waits": list(self.waits)}

    def _write(self, data: dict[str, Any]) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        # 0600: the runs name jobs and users, which the dashboard shows but the state directory does not.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, self.path)

    def _load(self) -> None:
        """Read a ring written before; anything unreadable or of another layout starts an empty one."""
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != FILE_VERSION or data.get("fields") != list(FIELDS):
                raise ValueError("another layout")
            cutoff = now_usec() / 1e6 - self.keep
            width = len(FIELDS) + 1
            for name, rows in data["rows"].items():
                ring = self.rows[str(name)] = deque(maxlen=self.capacity)
                for r in rows:
                    if isinstance(r, list) and len(r) == width and isinstance(r[0], (int, float)) and r[0] >= cutoff:
                        ring.append(tuple(r))
                if ring:  # the daemon was down from here: a gap, not a line across it
                    ring.append((ring[-1][0] + self.interval / 2,) + (None,) * len(FIELDS))
            for r in data.get("runs", []):
                self.runs.append(Run(*r))
            for w in data.get("waits", []):
                self.waits.append(tuple(w))
            self.restored = True
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("ignoring the dashboard's saved history %s: %s", self.path, e)
            self.rows.clear()
            self.runs.clear()
            self.waits.clear()
