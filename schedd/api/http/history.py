"""The dashboard's memory: a bounded ring of samples, the last hour's runs and the recent waits.

Why here and not from Prometheus: the page must draw its plots on a node nobody scrapes, offline.

- Samples: every `interval` (10 s by default, `[http] history_interval`) one row per node of the
  cluster: CPUs, memory and GPUs allocated and in all, running and pending jobs, and (this node
  only) the queue's length and the starts, ends and failures since the row before. The ring keeps
  `keep / interval` rows per node (24 h: 8,640 rows, about 1.6 MB per node in memory), at most
  MAX_ROWS (an interval under 5 s keeps less than 24 h).
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
import math
import os
import stat
import tempfile
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
MAX_ROWS = 17_280  # a node's ring at most: 24 h of 5 s samples (about 3 MB a node in memory)
PERSIST_EVERY_S = 600
FILE_VERSION = 1
# A saved ring is read back only up to max(MIN_FILE_CAP, ROW_BYTES a row it can hold): a full ring of
# every node is about 70 bytes a row, so anything far bigger was not written by us and is not parsed.
MIN_FILE_CAP = 16 << 20
ROW_BYTES = 160

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
    nodes: int = 1  # this node and its peers: bounds what is read back from `path`
    on_sample: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # At most MAX_ROWS a node: a short history_interval keeps less than `keep` (100 ms samples of a day
        # would be 864,000 rows a node, hundreds of MB and seconds of the event loop to serve).
        self.capacity = max(1, min(MAX_ROWS, int(self.keep // self.interval)))
        self.keep = min(self.keep, self.capacity * self.interval)
        self.max_file_bytes = max(MIN_FILE_CAP, ROW_BYTES * self.capacity * max(1, self.nodes))
        self.rows: dict[str, deque[Row]] = {}
        self.runs: deque[Run] = deque(maxlen=RUNS_KEPT)
        self.waits: deque[tuple[int, float, float]] = deque(maxlen=WAITS_KEPT)
        self._starts = self._ends = self._failed = 0
        self._task: asyncio.Task | None = None
        self._gen = 0  # bumped by each sample and run: the full view's cached bytes are good while it holds
        self._full: tuple[int, bytes] | None = None
        self.restored = False
        if self.path is not None:
            self._load()
        self.engine.listeners.append(self)

    # -- engine events (counters only: no I/O, no scan) --------------------------------

    def job_changed(self, job: Job, fields: frozenset[str], old_state: JobState) -> None:
        state = job.state
        if state == old_state:
            return
        # Starts and ends count on the node that runs the job (a job of ours on a peer counts there,
        # so a cluster's sum counts it once); its wait, from its submission, where it was submitted.
        here = not job.remote
        if state == JobState.RUNNING and old_state == JobState.PENDING:
            self._starts += here
            if job.submit_time and job.start_time and not job.origin_node:
                self.waits.append((job.id, job.start_time / 1e6, max(0, job.start_time - job.submit_time) / 1e6))
                self._gen += 1
        elif old_state.active and not state.active:
            if state.terminal and here:
                self._ends += 1
                self._failed += state == JobState.FAILED
            if job.start_time:
                end = (job.end_time or now_usec()) / 1e6
                self.runs.append(Run(job.id, job.spec.name, job.spec.owner, job.node or self.engine.config.node_name,
                                     list(job.assigned_cpus), job.start_time / 1e6, end, state.value))
                self._gen += 1

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
            row = _peer_row(p, t)
            if row is not None and row[0] not in out:
                out[row[0]] = row[1]
        for name, row in out.items():
            ring = self.rows.get(name)
            if ring is None:
                ring = self.rows[name] = deque(maxlen=self.capacity)
            ring.append(tuple(row))
        self._gen += 1
        return out

    def _peer_rows(self) -> list[Any]:
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
                try:
                    await asyncio.to_thread(self._write, data)
                except (OSError, ValueError) as e:  # a full disk must not end the sampler
                    log.warning("could not save the dashboard's history to %s: %s", self.path, e)
            next_at += self.interval
            if next_at <= loop.time():  # a stalled loop or a suspended machine: skip the missed samples,
                next_at = loop.time() + self.interval  # not a burst of rows all stamped now
            await asyncio.sleep(next_at - loop.time())

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
            except (OSError, ValueError) as e:
                log.warning("could not save the dashboard's history to %s: %s", self.path, e)

    # -- what the page reads ------------------------------------------------------------

    def view_bytes(self, since: float = 0.0) -> bytes:
        """view() as JSON. The whole ring (every page load) is serialized once a sample, not once a
        request: a day of a cluster is tens of milliseconds of the event loop each time."""
        oldest = min((ring[0][0] for ring in self.rows.values() if ring), default=0.0)
        if since >= oldest:  # a since older than every row is the whole ring: from the cache too
            return json.dumps(self.view(since), separators=(",", ":")).encode()
        if self._full is None or self._full[0] != self._gen:
            self._full = (self._gen, json.dumps(self.view(), separators=(",", ":")).encode())
        return self._full[1]

    def view(self, since: float = 0.0) -> dict[str, Any]:
        """Columnar, as uPlot wants it: per node {"t": [...], "cpus": [...], ...}; rows after `since` only."""
        now = now_usec() / 1e6
        nodes: dict[str, dict[str, list]] = {}
        for name, ring in self.rows.items():
            if since:  # only the tail is copied: a page's catch-up costs its rows, not the day's
                first = bisect.bisect_right(ring, since, key=lambda r: r[0])
                rows = [ring[i] for i in range(first, len(ring))]
            else:
                rows = list(ring)
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
        """Atomically: a new 0600 file beside it (O_EXCL: never through a link or a file planted there),
        synced, then renamed over the old one (a rename replaces a link at the path, never follows it)."""
        assert self.path is not None
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            # 0600 (mkstemp's mode): the runs name jobs and users, which the state directory does not show.
            with open(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"), allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _load(self) -> None:
        """Read a ring written before; anything unreadable, hostile or of another layout starts an empty
        one with a log line. Never follows a link (as root, a link to another file), never blocks on a
        FIFO or a device, never reads more than max_file_bytes, and keeps only well-formed rows in time order."""
        assert self.path is not None
        for stale in self.path.parent.glob(self.path.name + ".*.tmp"):  # a write cut short by a crash
            with contextlib.suppress(OSError):
                stale.unlink()  # the name itself, never what a link points to
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("ignoring the dashboard's saved history %s: %s", self.path, e.strerror or e)
            return
        try:
            with open(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ValueError("not a regular file")
                if st.st_size > self.max_file_bytes:
                    raise ValueError(f"{st.st_size} bytes, more than the {self.max_file_bytes} read back")
                text = f.read(self.max_file_bytes + 1)
                if len(text) > self.max_file_bytes:
                    raise ValueError(f"more than the {self.max_file_bytes} bytes read back")
            self._restore(json.loads(text))
            self.restored = True
        except Exception as e:  # noqa: BLE001 - whatever is in the file (RecursionError too) is no reason not to start
            log.warning("ignoring the dashboard's saved history %s: %s", self.path, str(e)[:200] or type(e).__name__)
            self.rows.clear()
            self.runs.clear()
            self.waits.clear()

    def _restore(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("version") != FILE_VERSION or data.get("fields") != list(FIELDS):
            raise ValueError("another layout")
        rows, runs, waits = data.get("rows"), data.get("runs", []), data.get("waits", [])
        if not isinstance(rows, dict) or not isinstance(runs, list) or not isinstance(waits, list):
            raise ValueError("another layout")
        if len(rows) > 4 * max(1, self.nodes) + 16:  # nodes of another configuration are kept, a flood is not
            raise ValueError(f"{len(rows)} nodes")
        now = now_usec() / 1e6
        cutoff = now - self.keep
        width = len(FIELDS) + 1
        for name, node_rows in rows.items():
            if not isinstance(node_rows, list):
                continue
            ring: deque[Row] = deque(maxlen=self.capacity)
            last = cutoff
            for r in node_rows:
                # In time order, within the kept window and not in the future (a later sample must come
                # after it), numbers or null only: the page and bisect rely on it.
                if (isinstance(r, list) and len(r) == width and _number(r[0]) and last <= r[0] <= now
                        and all(v is None or _number(v) for v in r[1:])):
                    ring.append(tuple(r))
                    last = r[0]
            if ring:  # the daemon was down from here: a gap, not a line across it
                ring.append((min(now, ring[-1][0] + self.interval / 2),) + (None,) * len(FIELDS))
                self.rows[name] = ring
        for r in runs[-RUNS_KEPT:]:
            if (isinstance(r, list) and len(r) == 8 and _integer(r[0]) and isinstance(r[1], str)
                    and isinstance(r[2], str) and isinstance(r[3], str) and isinstance(r[4], list)
                    and all(_integer(c) for c in r[4]) and _number(r[5]) and _number(r[6]) and isinstance(r[7], str)):
                self.runs.append(Run(*r))
        for w in waits[-WAITS_KEPT:]:
            if isinstance(w, list) and len(w) == 3 and _integer(w[0]) and _number(w[1]) and _number(w[2]):
                self.waits.append(tuple(w))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count(v: Any) -> int | None:
    """A heartbeat's figure if it is one (a non-negative integer), else None: a gap, not a crash."""
    return v if _integer(v) and v >= 0 else None


def _peer_row(p: Any, t: float) -> tuple[str, list] | None:
    """(name, row) of one ListNodes row of a peer, or None for this node or a row without a name.
    A peer's odd figures (not numbers, free above total) become gaps or zeros, never an exception:
    one peer must not cost the other nodes their samples."""
    if not isinstance(p, dict):
        return None
    name = p.get("Name")
    if not isinstance(name, str) or not name or p.get("Local"):
        return None
    if p.get("State") == "down":  # draining and drained nodes still report their load
        return name, [t] + [None] * len(FIELDS)
    row: list = [t]
    for total_key, free_key in (("TotalCPUs", "AvailableCPUs"), ("TotalMemory", "AvailableMemory"),
                                ("TotalGPUs", "AvailableGPUs")):
        total, free = _count(p.get(total_key)), _count(p.get(free_key))
        row += [None if total is None or free is None else max(0, total - free), total]
    return name, row + [_count(p.get("RunningJobs")), _count(p.get("PendingJobs")), None, None, None, None]
