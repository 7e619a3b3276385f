"""Admission: when a pending job may be handed to the scheduler.

First, a BeginTime still ahead: the job waits outside every queue, holding nothing, reason
`begin-time`, until that wall-clock time. One loop timer serves all such jobs: a heap of
(begin time, id) and a timer for its earliest entry (stale entries -- a job cancelled, held or
re-parked meanwhile -- are dropped as they surface). The loop's timers keep monotonic time and
the begin time is wall-clock time, so a timer that fires early (the wall clock stepped back)
re-arms for the rest, a sleep is at most BEGIN_MAX_SLEEP (a forward step is noticed within it),
and clock_stepped() re-reads the clock at once.

Then three rules keep a pending job out of the scheduler's queue: dependencies that do not hold
yet (After: completed; AfterAny: ended; AfterNotOk: ended, not completed) -- the job is blocked,
pending with reason `dependency` (Slurm's Dependency), and fails FAILED `dependency` once one of
them never can -- an array's cap on
running tasks (ArrayMaxRunning) -- the task is parked until a sibling leaves -- and, for a copy
run here for another node, an origin that cannot grant its start now (schedd.cluster.runnode) --
the copy waits, parked, until its origin is ready again. The scheduler itself only ever sees
eligible jobs.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import defaultdict

from schedd.core.cluster import Cluster
from schedd.core.model import Job, JobState, Reason, now_usec
from schedd.core.scheduler import Scheduler
from schedd.core.store import Store


# Per dependency kind, a dependency's state -> whether it holds (True), never can (False); absent: not yet.
_AFTER_OK = {JobState.COMPLETED: True, JobState.FAILED: False, JobState.CANCELLED: False}
_AFTER_ANY = {JobState.COMPLETED: True, JobState.FAILED: True, JobState.CANCELLED: True}
_AFTER_NOT_OK = {JobState.COMPLETED: False, JobState.FAILED: True, JobState.CANCELLED: True}


class Admission:
    """Blocked jobs and their dependents, and the admitted and parked tasks of capped arrays."""

    jobs: dict[int, Job]
    store: Store
    scheduler: Scheduler
    federation: Cluster | None
    BEGIN_MAX_SLEEP = 3600.0  # seconds: the longest the begin timer sleeps before it reads the wall clock again
    BEGIN_SLACK_USEC = 1000  # a timer this early is on time (the loop's clock resolution)

    def _init_admission(self) -> None:
        self._begin_waiting: dict[int, Job] = {}  # pending, their BeginTime still ahead
        self._begin_heap: list[tuple[int, int]] = []  # (begin time, id), stale entries included
        self._begin_timer: asyncio.TimerHandle | None = None
        self._begin_timer_at = 0  # the heap entry's time the timer was armed for
        self._blocked: dict[int, Job] = {}  # pending, waiting on dependencies
        self._dependents: dict[int, set[int]] = defaultdict(set)
        # Arrays with a cap on running tasks: which tasks are admitted (queued, starting or
        # running) and which wait their turn outside the scheduler, in task order.
        self._admitted: dict[int, set[int]] = defaultdict(set)
        self._parked: dict[int, dict[int, Job]] = defaultdict(dict)
        self._away: dict[str, dict[int, Job]] = defaultdict(dict)  # origin -> its copies waiting for it
        self._origin_backs: dict[str, int] = defaultdict(int)  # origin -> how often it said to ask again

    def _lookup(self, job_id: int) -> Job | None:
        """A dependency, live or archived (the store is read only for one no longer in memory)."""
        return self.jobs.get(job_id) or self.store.get(job_id)

    def _known(self, job_id: int) -> bool:
        """A job After may name: live or archived (arrays.py adds the tasks that are no job yet)."""
        return job_id in self.jobs or self.store.exists(job_id)

    @staticmethod
    def _admits_later(job: Job) -> bool:
        """Whether a new pending job must go through _make_eligible (once announced), not straight to the queue."""
        s = job.spec
        return bool(s.after or s.after_any or s.after_not_ok or (s.begin_time and s.begin_time > now_usec()))

    def _make_eligible(self, job: Job) -> None:
        """Queue a pending job, or park it until its begin time, or until its dependencies complete."""
        if self._wait_for_begin(job):
            return
        verdict = self._dependencies_hold(job)
        if verdict is False:
            self._end(job, JobState.FAILED, Reason.DEPENDENCY)
            self.store.save(job)
        elif verdict is None:
            for dep in self._dependency_ids(job):
                self._dependents[dep].add(job.id)
            self._blocked[job.id] = job
            if job.reason not in (Reason.DEPENDENCY, Reason.DRAINED):  # a drained node's wait says drained
                self._set_pending_reason(job, Reason.DEPENDENCY)
        else:
            self._enqueue(job)

    @staticmethod
    def _dependency_ids(job: Job) -> list[int]:
        s = job.spec
        return [*s.after, *s.after_any, *s.after_not_ok] if s.after_any or s.after_not_ok else s.after

    def _dependencies_hold(self, job: Job, ended: Job | None = None) -> bool | None:
        """True: every dependency holds; False: one never can (the job can never run); None: it waits.

        After: the job completed. AfterAny: it ended, however. AfterNotOk: it ended and did not
        complete. A dependency no longer known (purged) cannot hold: False, as for After.
        ended: the dependency that just ended (an array's task need not be in the table or store).
        """
        s = job.spec
        result: bool | None = True
        for ids, rule in ((s.after, _AFTER_OK), (s.after_any, _AFTER_ANY), (s.after_not_ok, _AFTER_NOT_OK)):
            for dep in ids:
                d = ended if ended is not None and ended.id == dep else self._lookup(dep)
                holds = False if d is None else rule.get(d.state)
                if holds is False:
                    return False
                if holds is None:
                    result = None
        return result

    def _dependency_ended(self, dep: Job) -> None:
        """dep ended: the jobs blocked on it fail (it can no longer hold for them) or, all theirs held, queue."""
        for jid in self._dependents.pop(dep.id, ()):
            job = self._blocked.get(jid)
            if job is None:
                continue
            verdict = self._dependencies_hold(job, dep)
            if verdict is False:
                del self._blocked[jid]
                self._end(job, JobState.FAILED, Reason.DEPENDENCY)
                self.store.save(job)
            elif verdict:
                del self._blocked[jid]
                self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        """Hand a pending job to the scheduler, unless its array already has its cap of tasks admitted
        (or its origin cannot grant its start now). Its dependencies hold by now: it no longer says so."""
        if job.reason == Reason.DEPENDENCY:
            self._set_pending_reason(job, "")
        if job.origin_node and (self.federation is None or not self.federation.origin_ready(job.origin_node)):
            self._park_for_origin(job)
            return
        aid, cap = job.array_job_id, job.spec.array_max_running
        if aid and cap:
            admitted = self._admitted[aid]
            if job.id not in admitted and len(admitted) >= cap:
                self._parked[aid][job.id] = job
                return
            admitted.add(job.id)
        self.scheduler.enqueue(job)

    # -- BeginTime ---------------------------------------------------------------------

    def _wait_for_begin(self, job: Job) -> bool:
        """Park the job until its BeginTime if that is still ahead (True); else clear its begin-time reason."""
        begin = job.spec.begin_time
        if not begin or begin <= now_usec() + self.BEGIN_SLACK_USEC:
            if job.reason == Reason.BEGIN_TIME:
                self._set_pending_reason(job, "")
            return False
        self._begin_waiting[job.id] = job
        heapq.heappush(self._begin_heap, (begin, job.id))
        if job.reason != Reason.BEGIN_TIME:
            self._set_pending_reason(job, Reason.BEGIN_TIME)
        self._arm_begin()
        return True

    def _set_pending_reason(self, job: Job, reason: str) -> None:
        """A pending job's reason changes, its state stays (no JobStateChanged: no transition)."""
        job.reason = reason
        if job.id not in self._unannounced:
            self._changed(job, {"reason"})
        self.store.save(job, urgent=False)

    def _begin_live(self, entry: tuple[int, int]) -> Job | None:
        job = self._begin_waiting.get(entry[1])
        return job if job is not None and job.spec.begin_time == entry[0] else None

    def _arm_begin(self) -> None:
        """The timer for the earliest live entry (none when no job waits for its begin time)."""
        heap = self._begin_heap
        while heap and self._begin_live(heap[0]) is None:
            heapq.heappop(heap)
        if not heap:
            if self._begin_timer is not None:
                self._begin_timer.cancel()
                self._begin_timer = None
            return
        at = heap[0][0]
        if self._begin_timer is not None:
            if self._begin_timer_at == at:
                return
            self._begin_timer.cancel()
        loop = asyncio.get_running_loop()
        delay = min(self.BEGIN_MAX_SLEEP, max(0.0, (at - now_usec()) / 1e6))
        self._begin_timer = loop.call_at(loop.time() + delay, self._begin_due)
        self._begin_timer_at = at

    def _begin_due(self) -> None:
        """The timer fired: the jobs whose begin time has come go on to admission; the timer re-arms."""
        self._begin_timer = None
        now = now_usec() + self.BEGIN_SLACK_USEC
        heap, due = self._begin_heap, []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            job = self._begin_live(entry)
            if job is not None:
                del self._begin_waiting[job.id]
                due.append(job)
        for job in due:
            if job.state == JobState.PENDING and self.jobs.get(job.id) is job:
                self._make_eligible(job)
        self._arm_begin()  # woken early (the wall clock stepped back): the rest of the wait
        if due:
            self.kick()

    def clock_stepped(self) -> None:
        """The wall clock was set (or a test moved it): the begin times are read against it at once."""
        if self._begin_timer is not None:
            self._begin_timer.cancel()
            self._begin_timer = None
        if self._begin_heap:
            self._begin_due()

    def begin_waiting(self) -> int:
        """How many pending jobs wait for their begin time."""
        return len(self._begin_waiting)

    def _unqueue(self, job: Job) -> None:
        """Out of every queue (scheduler, blocked, parked, waiting for its begin time): cancelled, held, fenced or lost."""
        self.scheduler.dequeue(job.id)
        self._begin_waiting.pop(job.id, None)
        self._blocked.pop(job.id, None)
        if job.origin_node:
            self._away.get(job.origin_node, {}).pop(job.id, None)
        self._leave_array(job)

    def _park_for_origin(self, job: Job) -> None:
        """A copy waits outside the scheduler until its origin says to ask it again (origin_back)."""
        self._away[job.origin_node][job.id] = job

    def origin_lost(self, origin: str) -> None:
        """origin cannot grant starts now: its queued copies wait outside the scheduler."""
        for job in [j for j in self.scheduler.queued() if j.origin_node == origin]:
            self.scheduler.dequeue(job.id)
            self._park_for_origin(job)

    def origin_back(self, origin: str) -> None:
        """origin can grant starts again: its copies are queued again."""
        self._origin_backs[origin] += 1
        for job in self._away.pop(origin, {}).values():
            if job.state == JobState.PENDING and job.id in self.jobs:
                self.scheduler.enqueue(job)
        self.kick()

    def _leave_array(self, job: Job) -> None:
        """A task stops counting against its array's cap (ended, cancelled, held): admit the next."""
        aid, cap = job.array_job_id, job.spec.array_max_running
        if not aid or not cap:
            return
        parked = self._parked.get(aid)
        if parked:
            parked.pop(job.id, None)
        admitted = self._admitted.get(aid)
        if admitted is None or job.id not in admitted:
            return
        admitted.discard(job.id)
        while parked and len(admitted) < cap:
            nxt = parked.pop(next(iter(parked)))
            admitted.add(nxt.id)
            self.scheduler.enqueue(nxt)
        if not parked:
            self._parked.pop(aid, None)
        if not admitted:
            self._admitted.pop(aid, None)
