"""The job table and the one transition point.

Every job the engine holds in memory is in `jobs`; every change of state goes through `_set`
(counts, per-user queue shares, the transition log line and the listeners, all in one place),
every end this node stamps through `_end` (a mirrored end carries its node's end time). Beside
the table: the requests waiting on a job's run (_Flags) and the coalesced manager facts.
Finished jobs leave memory later (sweep.py) and are then read from the store, which is the
durable copy and the archive.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field, fields

from schedd.config import Config
from schedd.core.engine.events import COUNTS, RUN_FIELDS, TRANSITION, Listener
from schedd.core.model import TERMINAL_STATES, Job, JobState, Reason, now_usec
from schedd.core.quota import Quotas, exec_bytes
from schedd.core.store import Store
from schedd.errors import InvalidArgument, NotFound
from schedd.protocol import format_duration

log = logging.getLogger("schedd.core.engine")


_QUEUED = tuple(s for s in JobState if s.queued)
_ACTIVE = tuple(s for s in JobState if s.active)


# (field, a maker of its value on a new Job) for each field a run leaves behind.
_RUN_DEFAULTS = tuple(
    (f.name, f.default_factory if f.default is MISSING else (lambda v=f.default: v))
    for f in fields(Job) if f.name in RUN_FIELDS)
assert len(_RUN_DEFAULTS) == len(RUN_FIELDS)


@dataclass
class _Flags:
    """Requests against a job that take effect when its processes end."""

    cancel: bool = False
    requeue: bool = False
    timeout: bool = False  # stopped by the daemon because its time limit ran out
    fence: bool = False  # stopped because its origin placed it elsewhere (node failure)
    failed: bool = False  # fenced as a run its origin counts as failed (Requeue=false): FAILED, not CANCELLED

    def stopped(self) -> tuple[JobState, str]:
        """How a job cancelled or fenced is recorded."""
        if not self.fence:
            return JobState.CANCELLED, Reason.CANCELLED
        return (JobState.FAILED if self.failed else JobState.CANCELLED), Reason.NODE_FAILURE
    waiters: list[asyncio.Future] = field(default_factory=list)


class JobTable:
    """The jobs in memory, their counts by state, and the listeners that hear of each change."""

    config: Config
    store: Store
    quotas: Quotas
    MANAGER_COALESCE = 0.05  # seconds; counters change with every job, clients need not hear each step

    def _init_table(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.listeners: list[Listener] = []
        self._by_state: Counter[JobState] = Counter()
        self._unannounced: set[int] = set()  # ids of a batch not yet durable: no one hears of them
        self._purged_max_id = 0  # the highest id the purge of finished jobs has deleted (store.meta)
        self._flags: dict[int, _Flags] = defaultdict(_Flags)
        self._manager_dirty: set[str] = set()

    # -- reading ----------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        """The job: from memory while it is live, else from the archive; NotFound if neither has it."""
        job = None if job_id in self._unannounced else self.jobs.get(job_id) or self.store.get(job_id)
        if job is None:
            raise self._not_found(job_id)
        return job

    def _not_found(self, job_id: int) -> NotFound:
        """NotFound, saying why for an id the store once had: ids are given out increasing and the
        highest purged one is kept, so a missing id at or below it was purged (keep_finished) -- or,
        rarely, its submission never became durable (a failed commit)."""
        if 0 < job_id <= self._purged_max_id and job_id not in self._unannounced:
            keep = self.config.keep_finished_usec
            when = f" more than {format_duration(keep)} ago" if keep else ""
            return NotFound(f"job {job_id} finished{when} and was purged (keep_finished)")
        return NotFound(f"no job {job_id}")

    def list(self, states: list[str] | None, uid: int | None, after: int, limit: int) -> list[Job]:
        """Jobs by id, oldest first: live ones from memory, the rest from the archive."""
        if states is not None:
            bad = [s for s in states if s not in JobState.__members__]
            if bad:
                raise InvalidArgument(f"States: unknown state {bad[0]!r}; states are {', '.join(JobState)}")
        wanted = set(states) if states is not None else None
        hidden = self._unannounced
        mem = [
            j for jid, j in self.jobs.items()
            if jid > after and (wanted is None or j.state.value in wanted) and (uid is None or j.uid == uid)
            and not (hidden and jid in hidden)
        ]
        mem.sort(key=lambda j: j.id)
        mem = mem[:limit]
        db_states = None if wanted is None else [s for s in wanted if JobState(s) in TERMINAL_STATES]
        if db_states == []:
            return mem
        db = self.store.query(db_states, uid, after, limit, exclude=set(self.jobs))
        return sorted(mem + db, key=lambda j: j.id)[:limit]

    def counts(self) -> tuple[int, int]:
        """(pending incl. held, running incl. suspended), as the Manager properties show them."""
        c = self._by_state
        return sum(c[s] for s in _QUEUED), sum(c[s] for s in _ACTIVE)

    # -- membership ---------------------------------------------------------------

    def _insert(self, job: Job) -> None:
        """Into the table (not yet announced): counted, and its queue share taken if it waits to run."""
        self.jobs[job.id] = job
        self._by_state[job.state] += 1
        if job.state.queued:
            self.quotas.enter(job.uid, exec_bytes(job.spec))

    def _remove(self, job: Job) -> None:
        """Out of the table without a word to the listeners (what _insert did, undone)."""
        self.jobs.pop(job.id, None)
        self._by_state[job.state] -= 1
        if job.state.queued:
            self.quotas.leave(job.uid, exec_bytes(job.spec))

    def _announce(self, job: Job) -> None:
        for l in self.listeners:
            l.job_added(job)

    def _changed(self, job: Job, fields: Iterable[str]) -> None:
        """Fields changed without a transition (the state stays)."""
        fields = frozenset(fields)
        for l in self.listeners:
            l.job_changed(job, fields, job.state)

    # -- transitions ----------------------------------------------------------------

    def _set(self, job: Job, state: JobState, reason: str, fields: Iterable[str] = ()) -> None:
        """The one transition point; fields: what else the caller wrote on the job for this transition."""
        old = job.state
        job.state = state
        job.reason = reason
        self._by_state[old] -= 1
        self._by_state[state] += 1
        if old.queued and not state.queued:
            self.quotas.leave(job.uid, exec_bytes(job.spec))
        elif state.queued and not old.queued:
            self.quotas.enter(job.uid, exec_bytes(job.spec))
        self._transition_log(job, state.value.lower(), old)
        changed = TRANSITION | frozenset(fields)
        for l in self.listeners:
            l.job_changed(job, changed, old)
        if old != state:
            self._manager_changed(COUNTS)

    def _end(self, job: Job, state: JobState, reason: str, fields: Iterable[str] = ()) -> None:
        """A terminal transition: stamped with its end time, and the jobs that wait on it learn of it."""
        job.end_time = now_usec()
        self._set(job, state, reason, {"end_time", *fields})
        self._dependency_ended(job)

    @staticmethod
    def _clear_run(job: Job) -> frozenset[str]:
        """Forget what the last run left (events.RUN_FIELDS, back to a new Job's values) so the job
        can run again; the fields it cleared (the same for every way back to PENDING)."""
        for name, fresh in _RUN_DEFAULTS:
            setattr(job, name, fresh())
        return RUN_FIELDS

    def _transition_log(self, job: Job, what: str, old: JobState | None = None) -> None:
        s = job.spec
        extra = ""
        if job.state.terminal:
            extra = f" exit-code={job.exit_code}"
        level = logging.WARNING if job.state == JobState.FAILED else logging.INFO
        where = f"node={job.remote_node}" if job.remote else f"unit={job.unit}"
        if job.origin_node:
            where += f" origin={job.origin_node}:{job.origin_id}"
        log.log(level, "job %d %s%s: user=%s %s reason=%s%s", job.id, what,
                 f" (was {old.value.lower()})" if old is not None and old != job.state else "",
                 s.owner, where, job.reason or "-", extra)

    # -- the manager's facts -------------------------------------------------------------

    def _manager_changed(self, fact: str) -> None:
        if not self._manager_dirty:
            asyncio.get_running_loop().call_later(self.MANAGER_COALESCE, self._flush_manager)
        self._manager_dirty.add(fact)

    def _flush_manager(self) -> None:
        facts, self._manager_dirty = frozenset(self._manager_dirty), set()
        for l in self.listeners:
            l.manager_changed(facts)

    async def _drain_listeners(self) -> None:
        """Let listeners with a backlog (the bus's outgoing signals) catch up between slices of a batch."""
        for l in self.listeners:
            drain = getattr(l, "drain", None)
            if drain is not None:
                await drain()
