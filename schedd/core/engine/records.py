"""What the federation calls: records of jobs of ours placed on a peer, and fencing.

A job of ours placed on a peer is a record here, mirrored from there: no allocation, scope or
scheduler entry, but the same table, transitions and listeners as a local job. A job run here
for a peer is an ordinary local job that carries its origin; fence stops such a copy when its
origin has placed the job elsewhere. schedd.cluster.federation is the only caller.
"""

from __future__ import annotations

import logging
from typing import Any

from schedd.core.engine.events import COUNTS
from schedd.core.model import AWAITING_NODE, Job, JobState, Reason

log = logging.getLogger("schedd.core.engine")

# What the node running a job of ours may set on our record of it (events' field names); nothing
# else a peer sends is applied. cluster.wire reads these from the peer's job record.
MIRRORED_FIELDS = ("exit_code", "start_time", "end_time", "cpu_time_usec", "memory_peak",
                   "assigned_cpus", "assigned_gpus", "spec.stdout_path", "spec.stderr_path")


class Records:
    def allocate_id(self) -> int:
        jid = self._next_id
        self._next_id += 1
        return jid

    async def add_record(self, job: Job) -> None:
        """A job of ours that is not queued here (forwarded, or waiting for a node): durable, then announced."""
        self._insert(job)
        try:
            await self.store.save(job, retry=False)
        except Exception as e:
            self._remove(job)
            raise self.store.write_error(e.__cause__ or e) from e
        self._announce(job)
        self._transition_log(job, "submitted" if not job.remote_id else f"submitted, runs on {job.remote_node}")
        self._manager_changed(COUNTS)

    def mirror(self, job: Job, state: JobState, reason: str, fields: dict[str, Any]) -> None:
        """A transition of a forwarded job, as its node reported it."""
        self._mirror(job, state, reason, fields, frozenset())

    def _mirror(self, job: Job, state: JobState, reason: str, fields: dict[str, Any], changed: frozenset[str]) -> None:
        for name in MIRRORED_FIELDS:
            if name in fields:
                target, attr = (job.spec, name[5:]) if name.startswith("spec.") else (job, name)
                if getattr(target, attr) != fields[name]:
                    setattr(target, attr, fields[name])
                    changed |= {name}
        if state != job.state or reason != job.reason:
            self._set(job, state, reason, changed)
            if state.terminal:
                self._dependency_ended(job)
        elif changed:
            self._changed(job, changed)
        self.store.save(job)

    def placed_remote(self, job: Job, node: str, remote_id: int, fields: dict[str, Any]) -> None:
        """A waiting (or requeued) job of ours was forwarded to node."""
        job.remote_node, job.remote_id, job.node = node, remote_id, node
        job.start_granted = False
        self._mirror(job, job.state, job.reason, fields, frozenset({"remote_node", "remote_id", "node"}))

    def place_here(self, job: Job) -> None:
        """A waiting (or requeued) job of ours runs on this node after all."""
        job.remote_node, job.remote_id, job.node = "", 0, self.config.node_name
        self._changed(job, {"remote_node", "remote_id", "node"})
        self.store.save(job)
        if job.state == JobState.PENDING:
            self._make_eligible(job)
            self.kick()

    def send_away(self, job: Job) -> None:
        """A job of ours queued here that may run anywhere leaves this (drained) node's queue: it waits
        for the federation to place it on another node."""
        self._unqueue(job)
        job.remote_node, job.remote_id, job.node = AWAITING_NODE, 0, ""
        self._changed(job, {"remote_node", "remote_id", "node"})
        self.store.save(job)
        log.info("job %d: node %s is drained; it goes to another node", job.id, self.config.node_name)

    def recall(self, job: Job, node: str) -> None:
        """A job of ours queued on a node that drains (its copy never started): back to waiting for a node
        (placed elsewhere), as after a node failure but without counting a failure."""
        job.start_granted = False
        job.attempt += 1  # a late word of the old copy is never taken for the next attempt
        self._await_node(job, set())
        log.info("job %d: node %s drains; its queued copy there is recalled to run elsewhere", job.id, node)
        self.store.save(job)

    def _await_node(self, job: Job, fields: set[str]) -> None:
        """Its copy on another node given up: back to waiting for a node to place it on (HELD stays
        HELD); fields: what else the caller changed."""
        cleared = self._clear_run(job)
        job.remote_node, job.remote_id, job.node = AWAITING_NODE, 0, ""
        held = job.state == JobState.HELD
        self._set(job, JobState.HELD if held else JobState.PENDING, Reason.HELD if held else Reason.REQUEUED,
                  cleared | fields | {"remote_node", "remote_id", "node"})

    def requeue_away(self, job: Job, failed_node: str, *, requeue: bool, ran: bool) -> None:
        """The node holding a job of ours went down: back to PENDING (to be placed elsewhere), or FAILED.
        ran: it may have started there (a failure of a run: counted in node_failures and Restarts)."""
        job.node_failures += ran
        job.start_granted = False
        job.attempt += 1  # that attempt failed: a late word of its copy is never taken for the next one's
        if not requeue:
            self._end(job, JobState.FAILED, Reason.NODE_FAILURE, {"node_failures"})
        else:
            job.restarts += ran
            self._await_node(job, {"restarts", "node_failures"})
        log.warning("job %d: node %s went down under it; %s", job.id, failed_node,
                    "requeued elsewhere" if requeue else "failed (node-failure)")
        self.store.save(job)

    def grant_start(self, job: Job) -> None:
        """The node with our job's copy may start it (durable before it hears so: from now on a
        failure of that node is a failure of a run)."""
        job.start_granted = True
        self.store.save(job)

    async def new_attempt(self, job: Job) -> None:
        """Our job is about to be forwarded again: a new attempt, durable before any node hears of it
        (a copy of an earlier attempt is never taken for this one's)."""
        job.attempt += 1
        await self.store.save(job)

    async def hold_record(self, job: Job, hold: bool) -> None:
        """Hold or release a job of ours that waits for a node (no node has a copy to ask)."""
        job.spec.hold = hold
        self._set(job, JobState.HELD if hold else JobState.PENDING, Reason.HELD if hold else "", {"spec.hold"})
        await self.store.save(job)

    def end_record(self, job: Job, state: JobState, reason: str) -> None:
        """End a job of ours that is not running anywhere (waiting for a node) or whose node is gone."""
        self._end(job, state, reason)
        self.store.save(job)

    async def fence(self, job_id: int, *, failed: bool = False) -> Job:
        """Stop a copy run here for a peer that has placed the job elsewhere since (no job runs twice),
        or given this run up for failed (failed: it ends FAILED node-failure, as its origin recorded it)."""
        job = self.get(job_id)
        if job.state.terminal or job.id not in self.jobs:
            return job
        flags = self._flags[job.id]
        flags.fence, flags.failed = True, failed
        if job.state.queued and job.id not in self._starting:
            self._unqueue(job)
            self._end(job, *flags.stopped())
            self._wake_waiters(job)  # and forget its flags
            await self.store.save(job)
            return job
        await self._stop_and_wait(job, cancel=True)
        return job
