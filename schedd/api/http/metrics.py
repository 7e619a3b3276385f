"""Prometheus metrics: counters and histograms updated on transitions, gauges read at scrape time.

The engine's listeners see every transition; `Metrics` counts submissions, starts and
ends (by reason) and observes how long jobs waited. Gauges (jobs by state and user,
resources, peers) are not kept up to date on every change: a custom collector reads
the engine's live state when Prometheus scrapes, so they can never drift.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter as PCounter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schedd import __version__
from schedd.core.model import Job, JobState, now_usec
from schedd.protocol import NODE_STATES

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a few ms (an idle node) to a day (a busy cluster).
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
LIVE_STATES = tuple(s for s in JobState if not s.terminal)

PeersFn = Callable[[], Iterable[dict[str, Any]]]  # ListNodes-style dicts: Name, State, LastSeenUSec


def safe_peers(peers: PeersFn | None) -> list[dict[str, Any]]:
    """The peers' records, or none when the federation cannot say (a scrape must not fail for it)."""
    if peers is None:
        return []
    try:
        return list(peers())
    except Exception:  # noqa: BLE001 - federation's bug, not the scrape's
        log.exception("listing peers for metrics/dashboard failed")
        return []


class _StateCollector(Collector):
    """Gauges computed from the engine at scrape time."""

    def __init__(self, engine: Any, peers: PeersFn | None) -> None:
        self.engine = engine
        self.peers = peers

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        jobs = GaugeMetricFamily("schedd_jobs", "Jobs on this node now, by state and user (finished ones: see "
                                 "schedd_jobs_finished_total)", labels=["state", "user"])
        counts: Counter[tuple[str, str]] = Counter()
        held: dict[str, list[int]] = {}  # per user: CPUs, memory, GPUs of the jobs running here
        for j in e.jobs.values():
            if j.state in LIVE_STATES:
                s = j.spec
                counts[j.state.value, s.owner] += 1
                if j.state.active and not j.remote:
                    h = held.setdefault(s.owner, [0, 0, 0])
                    h[0] += s.cpus
                    h[1] += s.memory
                    h[2] += s.gpus
        for (state, owner), n in e.on_disk_by_owner().items():  # the queue kept on disk (engine/loading.py)
            counts[state.value, owner] += n
        for state in LIVE_STATES:  # every state present even when zero, so queries need no `or vector(0)`
            if not any(s == state.value for s, _ in counts):
                jobs.add_metric([state.value, ""], 0)
        for (state, user), n in sorted(counts.items()):
            jobs.add_metric([state, user], n)
        yield jobs
        for i, (name, what) in enumerate((("schedd_user_cpus_allocated", "CPUs"),
                                          ("schedd_user_memory_allocated_bytes", "memory (bytes)"),
                                          ("schedd_user_gpus_allocated", "GPUs"))):
            fam = GaugeMetricFamily(name, f"{what} held by each user's jobs running on this node", labels=["user"])
            for user, h in sorted(held.items()):
                fam.add_metric([user], h[i])
            yield fam
        info = GaugeMetricFamily("schedd_node_info", "Always 1; names this node (join on instance for its name)",
                                 labels=["node", "version", "executor"])
        info.add_metric([e.config.node_name, __version__, getattr(getattr(e, "executor", None), "name", "") or ""], 1)
        yield info
        led = e.ledger
        for name, allocated, what, total, free in (
            ("schedd_node_cpus", "schedd_node_cpus_allocated", "CPUs", led.total_cpus, led.free_cpus),
            ("schedd_node_memory_bytes", "schedd_node_memory_allocated_bytes", "memory (bytes)", led.total_memory,
             led.free_memory),
            ("schedd_node_gpus", "schedd_node_gpus_allocated", "GPUs", led.total_gpus, led.free_gpus),
        ):
            yield GaugeMetricFamily(name, f"Schedulable {what} of this node in all", value=total)
            yield GaugeMetricFamily(allocated, f"{what} held by running jobs", value=total - free)
        yield GaugeMetricFamily("schedd_queue_length", "Jobs the scheduler may start (pending, dependencies met)",
                                value=len(e.scheduler))
        yield GaugeMetricFamily("schedd_queue_head_fits", "1 if the first job in queue order fits the free resources "
                                "now and the node is not drained (it should start at once: 1 for long with no "
                                "starts means a stuck queue)",
                                value=1 if not e.drain_state() and e.scheduler.head_fits() else 0)
        up = GaugeMetricFamily("schedd_peer_up", "1 if the peer answers its heartbeats, else 0", labels=["peer"])
        age = GaugeMetricFamily("schedd_peer_last_heartbeat_age_seconds", "Seconds since the peer was last heard",
                                labels=["peer"])
        state = GaugeMetricFamily("schedd_node_state", "1 for the state each node is in (up, down, draining, "
                                  "drained), 0 for the others", labels=["node", "state"])
        now = now_usec()
        rows = safe_peers(self.peers)
        if not any(p.get("Local") for p in rows):
            rows = [{"Name": e.config.node_name, "Local": True,
                     "State": e.drain_state() or "up"}, *rows]
        for p in rows:
            for s in NODE_STATES:
                state.add_metric([p["Name"], s], 1 if p.get("State") == s else 0)
        yield state
        for p in rows:
            if p.get("Local"):
                continue
            up.add_metric([p["Name"]], 1 if p.get("State") not in ("down", None) else 0)
            seen = p.get("LastSeenUSec") or 0
            age.add_metric([p["Name"]], max(0, now - seen) / 1e6 if seen else float("inf"))
        yield up
        yield age
        yield from _peer_capacity(safe_peers(self.peers))


# A peer's capacity and load as its last heartbeat (or, for a Slurm peer, slurmrestd's nodes) told.
_PEER_GAUGES = (
    ("schedd_peer_cpus", "CPUs the peer offers in all", "TotalCPUs"),
    ("schedd_peer_cpus_available", "CPUs free on the peer", "AvailableCPUs"),
    ("schedd_peer_memory_bytes", "Memory the peer offers in all (bytes)", "TotalMemory"),
    ("schedd_peer_memory_available_bytes", "Memory free on the peer (bytes)", "AvailableMemory"),
    ("schedd_peer_gpus", "GPUs the peer offers in all", "TotalGPUs"),
    ("schedd_peer_gpus_available", "GPUs free on the peer", "AvailableGPUs"),
    ("schedd_peer_jobs_pending", "Jobs queued on the peer (a Slurm peer: its whole queue)", "PendingJobs"),
    ("schedd_peer_jobs_running", "Jobs running on the peer", "RunningJobs"),
)


def _peer_capacity(rows: list[dict[str, Any]]):
    for name, doc, key in _PEER_GAUGES:
        g = GaugeMetricFamily(name, doc, labels=["peer"])
        for p in rows:
            if not p.get("Local"):
                g.add_metric([p["Name"]], p.get(key) or 0)
        yield g


class Metrics:
    """An engine listener (job_added/job_changed/...) owning its own registry."""

    def __init__(self, engine: Any, peers: PeersFn | None = None) -> None:
        if hasattr(prometheus_client, "disable_created_metrics"):
            prometheus_client.disable_created_metrics()  # no *_created series: they double every counter
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submitted = PCounter("schedd_jobs_submitted", "Jobs submitted", ["user"], registry=r)
        self.started = PCounter("schedd_jobs_started", "Jobs started", ["user"], registry=r)
        self.finished = PCounter("schedd_jobs_finished", "Jobs that ended, by final state and reason",
                                 ["user", "state", "reason"], registry=r)
        self.queue_wait = Histogram("schedd_job_queue_wait_seconds",
                                    "Time a job spent eligible in the queue (pending) before it started",
                                    buckets=WAIT_BUCKETS, registry=r)
        self.start_latency = Histogram("schedd_job_submit_to_start_seconds",
                                       "Time from submission to start (holds and dependencies included)",
                                       buckets=WAIT_BUCKETS, registry=r)
        r.register(_StateCollector(engine, peers))
        self._pending_since: dict[int, int] = {}
        for job in engine.jobs.values():
            if job.state == JobState.PENDING:
                self._pending_since[job.id] = job.submit_time
        engine.listeners.append(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- engine events ---------------------------------------------------------

    def job_added(self, job: Job) -> None:
        if job.state.terminal:  # a finished job brought back (requeue of an archived one): not a submission
            return
        self.submitted.labels(job.spec.owner).inc()
        if job.state == JobState.PENDING:
            self._pending_since[job.id] = job.submit_time or now_usec()

    def job_changed(self, job: Job, fields: frozenset[str], old_state: JobState) -> None:
        state = job.state
        if state == old_state:
            return
        now = now_usec()
        if state == JobState.PENDING:
            self._pending_since[job.id] = now
            return
        since = self._pending_since.pop(job.id, None)
        if state == JobState.RUNNING and old_state == JobState.PENDING:
            user = job.spec.owner
            self.started.labels(user).inc()
            start = job.start_time or now
            if since is not None:
                self.queue_wait.observe(max(0, start - since) / 1e6)
            if job.submit_time:
                self.start_latency.observe(max(0, start - job.submit_time) / 1e6)
        elif state.terminal:
            self.finished.labels(job.spec.owner, state.value, job.reason or "none").inc()

    def job_released(self, job: Job) -> None:
        self._pending_since.pop(job.id, None)

    def job_loaded(self, job: Job) -> None:
        if job.state == JobState.PENDING:  # as for the jobs in memory at start
            self._pending_since.setdefault(job.id, job.submit_time)

    def job_unloaded(self, job: Job) -> None:
        self._pending_since.pop(job.id, None)

    def manager_changed(self, facts: frozenset[str]) -> None:
        pass
