"""Arrays as one record: a Submit with ArrayTasks ('1-1000000%8') is one row, not a million jobs.

The submit reserves the ids first..first+count-1 (task at position i is job first+i, ArrayJobId
first, Slurm's naming) and writes one `arrays` row (store migration 7): the template spec, the
tasks as ranges (protocol.TaskRanges) and the positions not yet made into jobs. Tasks become
real jobs (a jobs row, then an in-memory Job, announced once durable) lazily:
  - for the scheduler, a small window per array before each pass: its %N cap, or twice the free
    CPUs (at least MIN_WINDOW) -- no more of its tasks wait in memory than can start soon;
  - when a verb names a task (`_owned`): it is made a job first, then acted on.
Until then a task answers from the record: GetJob, its D-Bus path (on_disk) and ListJobs give it
as PENDING/HELD (CANCELLED once the array is cancelled); the Manager's counts and the per-user
caps count it (quotas.on_disk: the tasks as jobs, the template's bytes once).

Crash safety: a task's jobs row is durable before the record forgets its position -- the record
(written by the store's background thread, in no set order with the group committer's rows) lists
the tasks whose rows are in flight (rec.busy) as well as those left; a crash in between leaves the
position in the record with a row beside it, and recovery (`_read_arrays`) drops every position
that has a row -- no task is lost, none runs twice. A cancelled record purged after keep_finished
raises purged_max_id in the same transaction: its ids are never given out again.

CancelArray/HoldArray/ReleaseArray act on the record in O(ranges) and on the array's jobs one by
one. The record's tasks change state without a signal each: one JobStateChanged comes for the
first of them (its id and path), standing for all of the array's tasks not yet made jobs; every
task that is a job signals its own transitions as any job does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from schedd.core.engine.access import Caller
from schedd.core.engine.events import COUNTS
from schedd.core.model import EMPTY, Job, JobSpec, JobState, Reason, now_usec
from schedd.core.quota import exec_bytes
from schedd.core.spec import array_tasks_of, build_spec
from schedd.core.store import job_to_row, row_to_job
from schedd.errors import InvalidArgument, InvalidState, NotFound, SchedError
from schedd.protocol import TaskRanges
from schedd.protocol import clip as _clip

log = logging.getLogger("schedd.core.engine")

MAX_FORWARDED_TASKS = 10_000  # an array sent to a Slurm peer is a job per task: this many at most
_LIVE = (JobState.PENDING, JobState.HELD, JobState.RUNNING, JobState.SUSPENDED)


@dataclass(slots=True, eq=False)
class ArrayRec:
    """One array's record: what its tasks that are not jobs yet are."""

    id: int  # its first job id: the task at position i is job id + i
    template: JobSpec  # the spec every task runs (paths not expanded, no ArrayTaskId)
    tasks: TaskRanges
    left: list[list[int]]  # positions not made into jobs: ascending, disjoint [lo, hi)
    state: JobState  # PENDING, HELD or CANCELLED (then the left tasks ended cancelled, without a row)
    submit_time: int
    end_time: int = 0
    left_n: int = 0
    charged: bool = False  # its left tasks are counted in the owner's caps (quotas.on_disk)
    live: set[int] = field(default_factory=set)  # its jobs made for the scheduler that have not started
    busy: dict[int, asyncio.Future] = field(default_factory=dict)  # task ids being made durable

    @property
    def uid(self) -> int:
        return self.template.uid

    @property
    def last_id(self) -> int:
        return self.id + self.tasks.count - 1

    def has(self, pos: int) -> bool:
        i = bisect_right(self.left, [pos, 2**63]) - 1
        return i >= 0 and self.left[i][0] <= pos < self.left[i][1]

    def take_front(self, k: int) -> list[int]:
        out: list[int] = []
        while k > 0 and self.left:
            r = self.left[0]
            n = min(k, r[1] - r[0])
            out.extend(range(r[0], r[0] + n))
            r[0] += n
            k -= n
            if r[0] >= r[1]:
                self.left.pop(0)
        self.left_n -= len(out)
        return out

    def take(self, pos: int) -> bool:
        i = bisect_right(self.left, [pos, 2**63]) - 1
        if i < 0 or not self.left[i][0] <= pos < self.left[i][1]:
            return False
        lo, hi = self.left[i]
        self.left[i:i + 1] = [r for r in ([lo, pos], [pos + 1, hi]) if r[0] < r[1]]
        self.left_n -= 1
        return True

    def put_back(self, positions: list[int]) -> None:
        for p in positions:
            i = bisect_right(self.left, [p, 2**63])
            self.left.insert(i, [p, p + 1])
            self.left_n += 1
        merged: list[list[int]] = []
        for r in self.left:
            if merged and merged[-1][1] >= r[0]:
                merged[-1][1] = max(merged[-1][1], r[1])
            else:
                merged.append(r)
        self.left = merged

    def positions_after(self, pos: int) -> Iterator[int]:
        """Left positions above pos, ascending."""
        i = max(0, bisect_right(self.left, [pos, 2**63]) - 1)
        for lo, hi in self.left[i:]:
            yield from range(max(lo, pos + 1), hi)

    def folded(self) -> str:
        return self.tasks.format([(lo, hi) for lo, hi in self.left])

    @property
    def tasks_text(self) -> str:
        return self.tasks.text

    def durable_left(self) -> list[list[int]]:
        """left with the positions in flight (busy) merged in: what the durable record must list."""
        if not self.busy:
            return [list(r) for r in self.left]
        extra = sorted(jid - self.id for jid in self.busy)
        out: list[list[int]] = []
        i = 0
        for lo, hi in self.left:
            while i < len(extra) and extra[i] < lo:
                p = extra[i]
                if out and out[-1][1] >= p:
                    out[-1][1] = max(out[-1][1], p + 1)
                else:
                    out.append([p, p + 1])
                i += 1
            if out and out[-1][1] >= lo:
                out[-1][1] = max(out[-1][1], hi)
            else:
                out.append([lo, hi])
        for p in extra[i:]:
            if out and out[-1][1] >= p:
                out[-1][1] = max(out[-1][1], p + 1)
            else:
                out.append([p, p + 1])
        return out


class Arrays:
    """The records, and where they stand in for jobs: submit, reads, verbs, counts, the scheduler's feed."""

    MIN_WINDOW = 4  # tasks of an array without a cap made jobs ahead of a free CPU, at least
    PERSIST_DELAY = 0.2  # seconds a record may lag behind its tasks' jobs rows (see _persist_soon)

    def _init_arrays(self) -> None:
        self._arrays: dict[int, ArrayRec] = {}
        self._array_firsts: list[int] = []  # the records' ids, ascending (ids are given out increasing)
        self._array_left: Counter[JobState] = Counter()  # tasks not made into jobs, of queued records
        self._array_dirty: set[int] = set()  # records with a write due (_persist_soon)

    # -- finding -------------------------------------------------------------------

    def _array_of(self, job_id: int) -> ArrayRec | None:
        i = bisect_right(self._array_firsts, job_id) - 1
        if i < 0:
            return None
        rec = self._arrays[self._array_firsts[i]]
        return rec if job_id <= rec.last_id else None

    def _task_job(self, rec: ArrayRec, pos: int, state: JobState | None = None, why: bool = True) -> Job:
        """The job the task at pos is (or would be): built from the template. why=False: its state is
        all the caller needs (a dependency's), so its own dependencies are not looked up."""
        jid = rec.id + pos
        spec = replace(rec.template, array_task_id=rec.tasks.task_at(pos), array_max_running=rec.tasks.cap)
        spec.expand_paths(jid, str(self.jobs_dir))
        state = state or rec.state
        reason = {JobState.HELD: Reason.HELD, JobState.CANCELLED: Reason.CANCELLED}.get(state, "")
        if state == JobState.PENDING and getattr(self, "drain", None) is not None:
            reason = Reason.DRAINED  # on a drained node a task not made a job yet waits as its made ones do
        elif state == JobState.PENDING and spec.begin_time > now_usec():
            reason = Reason.BEGIN_TIME
        spec.hold = state == JobState.HELD
        job = Job(id=jid, spec=spec, state=state, reason=reason, submit_time=rec.submit_time,
                  end_time=rec.end_time if state == JobState.CANCELLED else 0, node=self.config.node_name,
                  assigned_cpus=EMPTY, assigned_gpus=EMPTY, array_job_id=rec.id)
        if (why and not reason and state == JobState.PENDING and (spec.after or spec.after_any or spec.after_not_ok)
                and self._dependencies_hold(job) is None):
            job.reason = Reason.DEPENDENCY  # as its made siblings that wait say (admission)
        return job

    def _virtual(self, job_id: int, why: bool = True) -> Job | None:
        """A task that is no job yet, as its record says (a task being made one: PENDING)."""
        rec = self._array_of(job_id) if self._arrays else None
        if rec is None:
            return None
        if rec.has(job_id - rec.id):
            return self._task_job(rec, job_id - rec.id, why=why)
        if job_id in rec.busy:
            return self._task_job(rec, job_id - rec.id, JobState.PENDING, why=why)
        return None

    # -- reads: the record answers for its tasks ---------------------------------------------

    def get(self, job_id: int) -> Job:
        try:
            return super().get(job_id)
        except NotFound:
            job = self._virtual(job_id)
            if job is None:
                raise
            return job

    def _known(self, job_id: int) -> bool:
        return super()._known(job_id) or self._virtual(job_id) is not None

    def _lookup(self, job_id: int) -> Job | None:
        """A dependency may be a task no job yet: the record answers (PENDING/HELD: wait; CANCELLED: fail)."""
        return super()._lookup(job_id) or self._virtual(job_id, why=False)

    def on_disk(self, job_id: int) -> Job | None:
        return super().on_disk(job_id) or self._virtual(job_id)

    def counts(self) -> tuple[int, int]:
        pending, running = super().counts()
        return pending + self._array_left[JobState.PENDING] + self._array_left[JobState.HELD], running

    def on_disk_by_owner(self) -> Counter[tuple[JobState, str]]:
        """The queue kept out of memory by owner (metrics' schedd_jobs): jobs on disk and the tasks
        of arrays that are no jobs yet. (The job subtree's children and GetManagedObjects list jobs,
        not such tasks: their paths answer when asked, as systemd's units that are not loaded.)"""
        out = super().on_disk_by_owner()
        for rec in self._arrays.values():
            if rec.state.queued and rec.left_n:
                out[rec.state, rec.template.owner] += rec.left_n
        return out

    def folded(self, job_id: int) -> str | None:
        """For a ListJobs row with FoldArrays: the text of the array's tasks not yet jobs, if job_id
        is the first of them (the row stands for them all)."""
        rec = self._array_of(job_id) if self._arrays else None
        if rec is None or not rec.left or rec.id + rec.left[0][0] != job_id:
            return None
        return rec.folded()

    def list(self, states: list[str] | None, uid: int | None, after: int, limit: int,
             fold: bool = False) -> list[Job]:
        """Jobs, and the tasks records stand for: each task a row (made from the ranges, only as many
        as the page takes), or with fold one row per array at its first such task."""
        base = super().list(states, uid, after, limit)
        wanted = None if states is None else set(states)
        extra: list[Job] = []
        for rec in self._arrays.values():
            if (not rec.left_n or rec.last_id <= after or (uid is not None and rec.uid != uid)
                    or (wanted is not None and rec.state.value not in wanted)):
                continue
            if fold:
                first = rec.id + rec.left[0][0]
                if first > after:
                    extra.append(self._task_job(rec, rec.left[0][0]))
                continue
            for n, pos in enumerate(rec.positions_after(after - rec.id)):
                if n == limit:
                    break
                extra.append(self._task_job(rec, pos))
        if not extra:
            return base
        return sorted(base + extra, key=lambda j: j.id)[:limit]

    # -- submit ------------------------------------------------------------------------

    async def submit_many(self, specs: list[dict], caller: Caller, *, origin=None, answered=None) -> list[Job]:
        if any(isinstance(p, dict) and "ArrayTasks" in p for p in specs):
            if len(specs) != 1 or origin is not None:
                raise InvalidArgument("ArrayTasks: an array is one Submit of its own; do not mix it into SubmitMany")
            return [await self._submit_array(specs[0], caller)]
        return await super().submit_many(specs, caller, origin=origin, answered=answered)

    async def _submit_array(self, props: dict, caller: Caller) -> Job:
        """One record, durable before the answer; the answer is the first task (its id names the array)."""
        limits = self.limits()
        spec = build_spec(props, caller_uid=caller.uid, limits=limits, job_known=self._known,
                          daemon_uid=os.geteuid())
        tasks = array_tasks_of(props, limits)
        await self._check_priority([spec], caller, False)
        if spec.node and getattr(self.federation, "takes_array", lambda _n: False)(spec.node):
            # A Slurm peer takes an array as one Slurm job per task (schedd.cluster.slurm).
            if tasks.count > MAX_FORWARDED_TASKS:
                raise InvalidArgument(f"ArrayTasks: {tasks.count} tasks for {spec.node}, which runs each as a job "
                                      f"of its own: at most {MAX_FORWARDED_TASKS} there")
            specs = [replace(spec, array_task_id=t, array_max_running=tasks.cap) for t in tasks]
            return (await self.federation.submit_array(specs))[0]
        n, size = tasks.count, exec_bytes(spec)
        try:
            self.quotas.reserve(spec.uid, n, size)  # the caps count every task as a queued job
        except InvalidArgument as e:
            raise InvalidArgument(f"ArrayTasks: {tasks.count} tasks, each counted as a queued job: "
                                  f"{e.message}") from None
        try:
            first = self._next_id
            self._next_id += n
            rec = ArrayRec(first, spec, tasks, [[0, n]], JobState.HELD if spec.hold else JobState.PENDING,
                           now_usec(), left_n=n)
            try:
                await self.store.put_array(self._array_row(rec))
            except Exception as e:
                raise self.store.write_error(e, "the array") from e
        finally:
            self.quotas.unreserve(spec.uid, n, size)
        self._add_record(rec)
        log.info("array %d submitted: tasks %s (jobs %d-%d), user=%s%s", rec.id, _clip(tasks.text), rec.id,
                 rec.last_id, spec.owner, " held" if spec.hold else "")
        self._manager_changed(COUNTS)
        self.kick()
        return self._task_job(rec, 0)

    def _add_record(self, rec: ArrayRec) -> None:
        self._arrays[rec.id] = rec
        i = bisect_right(self._array_firsts, rec.id)
        self._array_firsts.insert(i, rec.id)
        if rec.state.queued and rec.left_n:
            self._array_left[rec.state] += rec.left_n
            self.quotas.to_disk(rec.uid, rec.left_n, exec_bytes(rec.template))
            rec.charged = True

    def _array_row(self, rec: ArrayRec) -> tuple:
        """The record's row. Its `left` lists the tasks in flight too (rec.busy): their jobs rows
        are written by the group committer, this row by the background thread, in no set order, so
        the durable record may only stop listing a task once its row is durable (recovery then drops
        the positions that have rows: none lost, none twice)."""
        tmpl = Job(id=rec.id, spec=rec.template, submit_time=rec.submit_time)
        return (rec.id, json.dumps(job_to_row(tmpl)), rec.tasks_text, rec.tasks.count,
                json.dumps(rec.durable_left()), rec.uid, rec.state.value, rec.submit_time, rec.end_time)

    def _persist(self, rec: ArrayRec) -> asyncio.Future:
        """The record as it stands now (or its deletion once every task is a durable job).

        Raises a SchedError if the store is closing: a verb is acknowledged only once durable."""
        try:
            if not rec.left and not rec.busy and rec.state != JobState.CANCELLED:
                self._drop_record(rec)
                fut = self.store.delete_array(rec.id)
            else:
                fut = self.store.put_array(self._array_row(rec))
        except RuntimeError as e:  # the store is closing (shutdown)
            raise SchedError(f"cannot record array {rec.id}: {e}") from e
        fut.add_done_callback(lambda f: f.cancelled() or not f.exception() or log.error(
            "array %d: cannot record it: %s (recovery re-derives it from the jobs rows)", rec.id, f.exception()))
        return fut

    def _persist_later(self, rec: ArrayRec) -> None:
        """_persist for writes nobody waits on: the durable record stays a correct, older one if it fails."""
        try:
            self._persist(rec)
        except SchedError as e:
            log.warning("array %d: not recorded (%s); recovery re-derives it from the jobs rows", rec.id, e)

    def _uncharge(self, rec: ArrayRec) -> None:
        """The record holds no queued task any more: its template's bytes leave the owner's cap."""
        if rec.charged:
            self.quotas.from_disk(rec.uid, 0, exec_bytes(rec.template))
            rec.charged = False

    def _drop_record(self, rec: ArrayRec) -> None:
        if rec.busy:
            return  # dropped when its last tasks are durable
        self._uncharge(rec)
        self._arrays.pop(rec.id, None)
        i = bisect_right(self._array_firsts, rec.id) - 1
        if i >= 0 and self._array_firsts[i] == rec.id:
            del self._array_firsts[i]

    # -- tasks become jobs ----------------------------------------------------------------

    def _materialize(self, rec: ArrayRec, positions: list[int]) -> asyncio.Future:
        """Jobs for the tasks at positions (taken from rec.left): in the table and the queue now,
        announced once their rows are durable (no program starts before: the _durable future)."""
        loop = asyncio.get_running_loop()
        durable = loop.create_future()
        jobs = [self._task_job(rec, p) for p in positions]
        rows = []
        later: set[int] = set()
        for job in jobs:
            self._unannounced.add(job.id)
            self._insert(job)
            rec.busy[job.id] = durable
            if job.state == JobState.PENDING:
                self._durable[job.id] = durable
                rec.live.add(job.id)
                if self._admits_later(job):
                    later.add(job.id)  # dependencies, a begin time: once announced (_make_eligible), as a submit does
                else:
                    self._enqueue(job)
            rows.append(job_to_row(job))
        k = len(jobs)
        if rec.state.queued:  # a cancelled record's tasks are counted nowhere
            self._array_left[rec.state] -= k
            self.quotas.from_disk(rec.uid, k, 0)
        state = rec.state
        self.store.save_rows(rows, retry=False).add_done_callback(
            lambda f: self._materialized(rec, jobs, positions, state, durable, f, later))
        return durable

    def _materialized(self, rec: ArrayRec, jobs: list[Job], positions: list[int], state: JobState,
                      durable: asyncio.Future, f: asyncio.Future, later: set[int] = frozenset()) -> None:
        for job in jobs:
            self._unannounced.discard(job.id)
            rec.busy.pop(job.id, None)
        err = f.exception() if not f.cancelled() else SchedError("the store closed")
        if err is not None:
            for job in jobs:
                self._durable.pop(job.id, None)
                rec.live.discard(job.id)
                self._forget_unrecorded(job)
            rec.put_back(positions)
            if rec.state.queued:  # counted as the record's tasks are now (its state may have changed meanwhile)
                self._array_left[state] += len(jobs)
                self.quotas.to_disk(rec.uid, len(jobs), 0)
            durable.set_exception(err)
            durable.exception()
            log.error("array %d: cannot make tasks into jobs (%s); they stay in the record", rec.id, err)
            return
        durable.set_result(None)
        for job in jobs:
            self._durable.pop(job.id, None)
            self._announce(job)
            if job.state == JobState.PENDING and job.id in later and job.id in self.jobs:
                self._make_eligible(job)
                self.kick()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("array %d: %s made job%s %s", rec.id,
                      _clip(rec.tasks.format([(p, p + 1) for p in positions[:8]], cap=False)),
                      "s" if len(jobs) > 1 else "",
                      ",".join(str(j.id) for j in jobs[:8]) + ("..." if len(jobs) > 8 else ""))
        self._persist_soon(rec)

    def _persist_soon(self, rec: ArrayRec) -> None:
        """The record after tasks became jobs, written at most every PERSIST_DELAY per array: their
        rows are durable already, and recovery drops the positions that have rows, so a record a
        moment behind loses and repeats nothing (one fsync per task would cap an array's rate)."""
        if rec.id in self._array_dirty:
            return
        self._array_dirty.add(rec.id)

        def flush() -> None:
            self._array_dirty.discard(rec.id)
            if self._arrays.get(rec.id) is rec:
                self._persist_later(rec)
        asyncio.get_running_loop().call_later(self.PERSIST_DELAY, flush)

    def _schedule(self) -> bool:
        """Before each pass, each pending array tops up its window of jobs waiting to start."""
        if self._arrays:
            self._feed_arrays()
        return super()._schedule()

    def _feed_arrays(self) -> None:
        free = self.ledger.free_cpus
        for rec in list(self._arrays.values()):
            if rec.state != JobState.PENDING or not rec.left_n:
                continue
            jobs, starting = self.jobs, self._starting
            rec.live = {i for i in rec.live if i not in starting and (j := jobs.get(i)) is not None
                        and j.state == JobState.PENDING}
            window = rec.tasks.cap or max(self.MIN_WINDOW, 2 * free // max(1, rec.template.cpus))
            want = window - len(rec.live)
            if want > 0:
                self._materialize(rec, rec.take_front(want))

    # -- verbs -------------------------------------------------------------------------

    async def _owned(self, job_id: int, caller: Caller) -> Job:
        """A task no job yet becomes one before a verb acts on it (its owner's verb only)."""
        rec = self._array_of(job_id) if self._arrays else None
        if rec is not None:
            pos = job_id - rec.id
            fut = rec.busy.get(job_id)
            if fut is None and rec.has(pos):  # in any state: a cancelled task a verb names (Requeue) is a job then
                await self.authorize(self._task_job(rec, pos), caller)
                if rec.take(pos):
                    fut = self._materialize(rec, [pos])
                else:
                    fut = rec.busy.get(job_id)
            if fut is not None:
                try:
                    await asyncio.shield(fut)
                except SchedError:
                    raise
                except Exception as e:
                    raise SchedError(f"job {job_id}: {e}") from e
        return await super()._owned(job_id, caller)

    async def _array_target(self, array_id: int, caller: Caller) -> tuple[ArrayRec | None, list[int]]:
        """The record and the ids of the array's live jobs; AccessDenied/NotFound as for a job."""
        rec = self._arrays.get(array_id)
        if rec is None:
            inner = self._array_of(array_id)
            if inner is not None:
                raise InvalidArgument(f"job {array_id} is task {array_id - inner.id} of array {inner.id}; "
                                      f"name the array by its first id, {inner.id}")
        if rec is not None:
            await self.authorize(self._task_job(rec, 0), caller)
            for fut in list(rec.busy.values()):
                await asyncio.gather(fut, return_exceptions=True)
        # Live jobs are in memory but for queued ones kept on disk (loading.py): the store only then.
        ids = set(self.store.array_job_ids(array_id, array_id, [s.value for s in _LIVE])) if +self._deferred else set()
        last = rec.last_id if rec is not None else None
        for s in _LIVE:
            for jid in self._ids[s].after(array_id - 1):
                if last is not None and jid > last:
                    break
                job = self.jobs.get(jid)
                if job is not None and job.array_job_id == array_id and job.state == s:
                    ids.add(jid)
                elif last is None and (job is None or job.array_job_id != array_id):
                    break
        if rec is None:
            first = self.jobs.get(array_id) or self.store.get(array_id)
            if first is None or first.array_job_id != array_id:
                raise NotFound(f"no array {array_id}"
                               + ("" if first is None else f": job {array_id} is not an array's first job"))
            await self.authorize(first, caller)
        return rec, sorted(ids)

    def _record_to(self, rec: ArrayRec, state: JobState) -> int:
        """The record's left tasks to state, counts and caps with them; how many moved."""
        old, n = rec.state, rec.left_n
        if old == state:
            return 0
        if old.queued:
            self._array_left[old] -= n
        if state.queued:
            self._array_left[state] += n
            if not old.queued:  # back from CANCELLED: a write of the cancel failed (_record_verb)
                self.quotas.to_disk(rec.uid, n, 0 if rec.charged else exec_bytes(rec.template))
                rec.charged = True
        else:
            self.quotas.from_disk(rec.uid, n, 0)
            self._uncharge(rec)
            rec.end_time = now_usec()
        rec.state = state
        self._manager_changed(COUNTS)
        return n

    async def _record_verb(self, rec: ArrayRec, state: JobState) -> None:
        """The record's tasks to state, answered once durable: if the write fails, memory goes back
        (counts, caps) and the verb fails with the store's error."""
        old, end = rec.state, rec.end_time
        self._record_to(rec, state)
        try:
            try:
                await self._persist(rec)
            except SchedError:
                raise
            except Exception as e:
                raise self.store.write_error(e, f"array {rec.id}") from e
        except SchedError:
            if rec.state == state:
                self._record_to(rec, old)
                rec.end_time = end
            raise
        self._array_signal(rec)

    def _end_task_dependents(self, rec: ArrayRec) -> None:
        """The record's tasks were cancelled without becoming jobs: jobs waiting on them fail as on a
        cancelled dependency."""
        for dep in [d for d in self._dependents if rec.id <= d <= rec.last_id and rec.has(d - rec.id)]:
            self._dependency_ended(self._task_job(rec, dep - rec.id))

    def _array_signal(self, rec: ArrayRec) -> None:
        """One JobStateChanged for the record's tasks: its first left task's, standing for them all."""
        if not rec.left:
            return
        job = self._task_job(rec, rec.left[0][0])
        for l in self.listeners:
            changed = getattr(l, "array_changed", None)
            if changed is not None:
                changed(job, rec.left_n)

    async def _each(self, verb, ids: list[int], caller: Caller) -> None:
        results = await asyncio.gather(*(verb(jid, caller) for jid in ids), return_exceptions=True)
        for jid, r in zip(ids, results):
            if isinstance(r, (InvalidState, NotFound)):
                continue  # it moved on meanwhile (ended, started)
            if isinstance(r, BaseException):
                log.warning("array: job %d: %s", jid, r)

    async def cancel_array(self, array_id: int, caller: Caller) -> None:
        """Every task: those no job yet CANCELLED in the record (one signal), the jobs cancelled each."""
        rec, ids = await self._array_target(array_id, caller)
        if rec is not None and rec.state.queued:
            await self._record_verb(rec, JobState.CANCELLED)
            self._end_task_dependents(rec)
            log.info("array %d cancelled: %d tasks that had not started", rec.id, rec.left_n)
        await self._each(self.cancel, ids, caller)

    async def hold_array(self, array_id: int, caller: Caller) -> None:
        await self._move_array(array_id, caller, JobState.PENDING, JobState.HELD, self.hold)

    async def release_array(self, array_id: int, caller: Caller) -> None:
        await self._move_array(array_id, caller, JobState.HELD, JobState.PENDING, self.release)
        self.kick()

    async def _move_array(self, array_id: int, caller: Caller, src: JobState, dst: JobState, verb) -> None:
        """Hold or release: the record if it is in src, then each of its jobs in src."""
        rec, ids = await self._array_target(array_id, caller)
        if rec is not None and rec.state == src:
            await self._record_verb(rec, dst)
        movable = [i for i in ids if (j := self.jobs.get(i)) is None or j.state == src]
        await self._each(verb, movable, caller)

    # -- recovery ------------------------------------------------------------------------

    async def recover(self, executor) -> None:
        """The records are read first: recovering a job whose After names a task that is no job yet
        (_make_eligible) finds the task; they are counted once the jobs are in."""
        read, purged = self._read_arrays()
        for rec in read:
            self._arrays[rec.id] = rec
            self._array_firsts.insert(bisect_right(self._array_firsts, rec.id), rec.id)
        await super().recover(executor)
        self._purged_max_id = max(self._purged_max_id, purged)
        for rec in read:
            self._arrays.pop(rec.id, None)
            self._array_firsts.remove(rec.id)
            self._load_array(rec)

    def _read_arrays(self) -> tuple[list[ArrayRec], int]:
        """The records, each less the positions that became jobs rows before a crash let the record
        say so (their rows are the truth: no task lost, none twice); and the highest id purged."""
        out, purged = [], 0
        for (aid, template, tasks, count, left, uid, state, submit_time, end_time) in self.store.load_arrays():
            try:
                spec = row_to_job(tuple(json.loads(template))).spec
                rec = ArrayRec(aid, spec, TaskRanges.parse(tasks, max_ranges=0), [list(r) for r in json.loads(left)],
                               JobState(state), submit_time, end_time)
                rec.left_n = sum(hi - lo for lo, hi in rec.left)
            except Exception:
                log.exception("array %d: its record cannot be read; its tasks that were not jobs are lost", aid)
                continue
            keep = self.config.keep_finished_usec
            if rec.state == JobState.CANCELLED and keep and rec.end_time < now_usec() - keep:
                # its tasks ended longer ago than keep_finished: purged as jobs are, their ids never reused
                self.store.delete_array(aid, purged_to=rec.last_id)
                purged = max(purged, rec.last_id)
                continue
            if rec.left:  # a cancelled record's too: a task a verb named (Requeue) became a row
                stale = False
                for jid in self.store.array_job_ids(aid, aid + rec.left[0][0]):
                    stale |= rec.take(jid - aid)
                if stale:
                    self._array_dirty.add(aid)  # written once loaded (_load_array)
            out.append(rec)
        return out, purged

    def _load_array(self, rec: ArrayRec) -> None:
        aid = rec.id
        for s in (JobState.PENDING,):
            for jid in self._ids[s].after(aid - 1):
                if jid > rec.last_id:
                    break
                rec.live.add(jid)
        self._add_record(rec)
        stale = aid in self._array_dirty
        self._array_dirty.discard(aid)
        if stale or (not rec.left and rec.state.queued):
            self._persist_later(rec)
        log.info("array %d: %d tasks not started yet (%s)", aid, rec.left_n, rec.state.value.lower())
