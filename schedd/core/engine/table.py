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
import heapq
import logging
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
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


class SortedIds:
    """A set of job ids kept in order, for listing pages without a scan: chunks of sorted ids with
    their maxima, so adding, discarding and finding the first id after a cursor cost O(log n)
    plus a short move inside one chunk (a plain sorted list moves half the ids on every insert)."""

    __slots__ = ("_chunks", "_maxes", "_len")
    CHUNK = 1024

    def __init__(self) -> None:
        self._chunks: list[list[int]] = []
        self._maxes: list[int] = []
        self._len = 0

    @classmethod
    def from_sorted(cls, ids: list[int]) -> "SortedIds":
        """The set of ids, given ascending and distinct."""
        out = cls()
        n = cls.CHUNK
        out._chunks = [ids[k:k + n] for k in range(0, len(ids), n)]
        out._maxes = [c[-1] for c in out._chunks]
        out._len = len(ids)
        return out

    def __len__(self) -> int:
        return self._len

    def __contains__(self, x: int) -> bool:
        i = bisect_left(self._maxes, x)
        if i == len(self._maxes):
            return False
        c = self._chunks[i]
        return c[bisect_left(c, x)] == x

    def add(self, x: int) -> None:
        maxes = self._maxes
        if not maxes:
            self._chunks.append([x])
            maxes.append(x)
        elif x > maxes[-1]:  # the common case: a new job has the highest id
            c = self._chunks[-1]
            c.append(x)
            maxes[-1] = x
            if len(c) >= 2 * self.CHUNK:
                self._split(len(maxes) - 1)
        else:
            i = bisect_left(maxes, x)
            c = self._chunks[i]
            pos = bisect_left(c, x)
            if c[pos] == x:
                return
            c.insert(pos, x)
            if len(c) >= 2 * self.CHUNK:
                self._split(i)
        self._len += 1

    def _split(self, i: int) -> None:
        c = self._chunks[i]
        half = len(c) // 2
        self._chunks[i:i + 1] = [c[:half], c[half:]]
        self._maxes[i:i + 1] = [c[half - 1], c[-1]]

    def discard(self, x: int) -> None:
        i = bisect_left(self._maxes, x)
        if i == len(self._maxes):
            return
        c = self._chunks[i]
        pos = bisect_left(c, x)
        if c[pos] != x:
            return
        del c[pos]
        self._len -= 1
        if not c:
            del self._chunks[i], self._maxes[i]
        else:
            self._maxes[i] = c[-1]

    def after(self, x: int) -> Iterator[int]:
        """The ids above x, ascending (consume it before the set changes)."""
        i = bisect_right(self._maxes, x)
        if i == len(self._maxes):
            return
        c = self._chunks[i]
        yield from c[bisect_right(c, x):]
        for c in self._chunks[i + 1:]:
            yield from c

    def __iter__(self) -> Iterator[int]:
        return self.after(-1)


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
        # Listing without a scan: the ids in memory by state, and by (uid, state) for the states a
        # job leaves only through _set or _remove. The sweep drops finished jobs from `jobs` alone,
        # so the finished states' sets may name ids that left: a read skips them, and they are
        # compacted once they outnumber the jobs they count (_index_add).
        self._ids: dict[JobState, SortedIds] = {s: SortedIds() for s in JobState}
        self._user_ids: dict[tuple[int, JobState], SortedIds] = {}
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
        """Jobs by id, oldest first: live ones from memory, the rest from the archive.

        Served from the id indexes (memory) and SQLite's (the archive): a page costs
        O(limit · log n) whatever the length of the queue behind it."""
        if states is not None:
            bad = [s for s in states if s not in JobState.__members__]
            if bad:
                raise InvalidArgument(f"States: unknown state {bad[0]!r}; states are {', '.join(JobState)}")
        wanted = list(JobState) if states is None else [JobState(s) for s in dict.fromkeys(states)]
        mem = self._list_memory(wanted, uid, after, limit)
        # Only finished jobs are in the archive and not in memory, and queued ones not loaded yet (loading.py).
        db_states = [s.value for s in wanted if s in TERMINAL_STATES or self._deferred[s]]
        if not db_states:
            return mem
        db = self.store.query(db_states, uid, after, limit, exclude=self.jobs)
        if not db:
            return mem
        return sorted(mem + db, key=lambda j: j.id)[:limit]

    def _list_memory(self, wanted: list[JobState], uid: int | None, after: int, limit: int) -> list[Job]:
        sources = []
        for s in wanted:
            if uid is not None and not s.terminal:
                idx = self._user_ids.get((uid, s))
                if idx is not None:
                    sources.append(idx.after(after))
            else:
                sources.append(self._ids[s].after(after))
        ids = sources[0] if len(sources) == 1 else heapq.merge(*sources)
        jobs, hidden, want = self.jobs, self._unannounced, set(wanted)
        out: list[Job] = []
        last = -1
        for jid in ids:
            if jid == last:
                continue  # a finished state's stale entry beside the job's current one
            last = jid
            job = jobs.get(jid)
            if job is None or job.state not in want or (uid is not None and job.uid != uid) or jid in hidden:
                continue
            out.append(job)
            if len(out) == limit:
                break
        return out

    def _index_add(self, job: Job, state: JobState) -> None:
        idx = self._ids[state]
        idx.add(job.id)
        if state.terminal:
            if len(idx) > 2 * self._by_state[state] + 1024:  # the sweep dropped many: forget their ids
                jobs, fresh = self.jobs, SortedIds()
                for jid in idx:
                    j = jobs.get(jid)
                    if j is not None and j.state == state:
                        fresh.add(jid)
                self._ids[state] = fresh
            return
        key = (job.uid, state)
        u = self._user_ids.get(key)
        if u is None:
            u = self._user_ids[key] = SortedIds()
        u.add(job.id)

    def _index_discard(self, job: Job, state: JobState) -> None:
        self._ids[state].discard(job.id)
        if not state.terminal:
            key = (job.uid, state)
            u = self._user_ids.get(key)
            if u is not None:
                u.discard(job.id)
                if not u:
                    del self._user_ids[key]

    def counts(self) -> tuple[int, int]:
        """(pending incl. held, running incl. suspended), as the Manager properties show them."""
        c, d = self._by_state, self._deferred
        return sum(c[s] + d[s] for s in _QUEUED), sum(c[s] for s in _ACTIVE)

    # -- membership ---------------------------------------------------------------

    def _insert(self, job: Job) -> None:
        """Into the table (not yet announced): counted, and its queue share taken if it waits to run."""
        self.jobs[job.id] = job
        self._by_state[job.state] += 1
        self._index_add(job, job.state)
        if job.state.queued:
            self.quotas.enter(job.uid, exec_bytes(job.spec))

    def _insert_loaded(self, loaded: list[Job]) -> None:
        """_insert of every job recovery loaded into an empty table, in one sweep: the store gives
        them in id order, so each index is built by appending (no search per job)."""
        if self.jobs or any(a.id >= b.id for a, b in zip(loaded, loaded[1:])):
            for job in loaded:  # not the start-up case: one at a time
                self._insert(job)
            return
        by_key: dict[JobState | tuple[int, JobState], list[int]] = defaultdict(list)
        jobs, counts, enter = self.jobs, self._by_state, self.quotas.enter
        for job in loaded:
            jid, state = job.id, job.state
            jobs[jid] = job
            counts[state] += 1
            by_key[state].append(jid)
            if not state.terminal:
                by_key[(job.spec.uid, state)].append(jid)
                if state.queued:
                    enter(job.spec.uid, exec_bytes(job.spec))
        for key, ids in by_key.items():
            idx = SortedIds.from_sorted(ids)
            if isinstance(key, tuple):
                self._user_ids[key] = idx
            else:
                self._ids[key] = idx

    def _remove(self, job: Job) -> None:
        """Out of the table without a word to the listeners (what _insert did, undone)."""
        self.jobs.pop(job.id, None)
        self._by_state[job.state] -= 1
        self._index_discard(job, job.state)
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
        if old != state:
            self._index_discard(job, old)
            self._index_add(job, state)
        if old.queued and not state.queued:
            self.quotas.leave(job.uid, exec_bytes(job.spec))
        elif state.queued and not old.queued:
            self.quotas.enter(job.uid, exec_bytes(job.spec))
        changed = TRANSITION | frozenset(fields)
        for l in self.listeners:
            l.job_changed(job, changed, old)
        self._transition_log(job, state.value.lower(), old)  # after the signals: the journal line is no one's wait
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
