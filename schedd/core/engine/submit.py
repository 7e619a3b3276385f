"""Submission: validate -> route -> create -> commit, for one job or a batch (an array is a batch).

Validation builds each JobSpec and reserves its share of the per-user caps as it goes (a batch
over a cap stops at the first spec past it, and submits that run while a big batch yields see
its reservation); routing hands a job for another node to the federation; creation gives the
batch one block of ids; the commit makes the records durable before any program starts or
anyone hears of the ids, then announces them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable

from schedd.core.engine.access import PRIORITY_ACTION, Caller
from schedd.core.engine.events import COUNTS
from schedd.core.model import EMPTY, Job, JobSpec, JobState, Reason, now_usec
from schedd.core.quota import exec_bytes
from schedd.core.spec import build_spec
from schedd.core.store import job_to_row
from schedd.errors import AccessDenied, InvalidArgument, SchedError

log = logging.getLogger("schedd.core.engine")

Answered = Callable[[list[Job]], None]
_Held = dict[int, list[int]]  # uid -> [jobs, bytes] a batch has reserved of the caps and not yet queued


class _Slicer:
    """Batch work in slices: `await tick()` after each item yields to the loop once a slice is spent.

    Every `freeze_every` items it also moves what is alive out of the cyclic garbage collector's
    sight (gc.freeze): CPython runs a full collection each time the heap grows by a quarter, and
    one walks every tracked object -- about a second with 150,000 jobs in memory, a stall for
    every caller. Each freeze first collects what is not frozen yet (only the objects made since
    the last freeze: cheap), so no garbage that exists then is pinned. Jobs, specs and their bus
    objects hold no reference cycles, so reference counting frees them when they go; what stays
    for ever is only a cycle alive at a freeze that becomes garbage later.
    """

    __slots__ = ("seconds", "until", "freeze_every", "items", "pause")

    def __init__(self, seconds: float, freeze_every: int = 5000, pause=None) -> None:
        self.seconds = seconds
        self.until = time.monotonic() + seconds
        self.freeze_every = freeze_every
        self.items = 0
        self.pause = pause  # async () -> None awaited at each yield (back-pressure), or None

    async def tick(self) -> None:
        self.items += 1
        if self.items % self.freeze_every == 0:
            gc.collect()
            gc.freeze()
        if time.monotonic() >= self.until:
            await asyncio.sleep(0)
            if self.pause is not None:
                await self.pause()
            self.until = time.monotonic() + self.seconds


class Submission:
    SLICE = 0.01  # seconds of batch work between yields: what one big request may delay other callers
    LOG_EACH = 64  # a bigger batch is one journal line (its id range), not one per job
    ANSWER_AHEAD = 2000  # jobs a batch may have to be answered before its signals: announced in one go (~10-25 ms)

    async def submit(self, props: dict, caller: Caller, *, answered: Answered | None = None) -> Job:
        return (await self.submit_many([props], caller, answered=answered))[0]

    async def submit_many(self, specs: list[dict], caller: Caller, *, origin: tuple[str, int, int] | None = None,
                          answered: Answered | None = None) -> list[Job]:
        """Validate all, then queue all; answers once every one of them is durable.

        A big batch is worked in slices with yields to the loop between them (other callers are
        answered meanwhile); its share of the per-user caps is reserved first, so submits that run
        while it yields see it. origin: (node, id, attempt) of a job another node forwarded here,
        recorded with it (idempotency key). answered(jobs): called, for a batch of up to ANSWER_AHEAD
        jobs, once they are durable and just before they are announced -- the caller's reply can go out
        ahead of the batch's signals (returning comes after the announcements).
        """
        # The count cap before anything is built: an over-cap batch costs nothing.
        upfront = caller.uid if caller.uid != 0 or not any("User" in p for p in specs) else None
        held: _Held = {}
        if upfront is not None:
            self.quotas.reserve(upfront, len(specs), 0)
            held[upfront] = [len(specs), 0]
        try:
            sliced = _Slicer(self.SLICE, pause=self._drain_listeners)
            built, sizes = await self._validate(specs, caller, origin is not None, upfront, held, sliced)
            if (placed := await self._route(built)) is not None:
                return placed if isinstance(placed, list) else [placed]
            jobs = await self._create(built, origin, sliced)
            await self._commit(jobs, sizes, held, sliced, answered)
            return jobs
        finally:
            for uid, (n, b) in held.items():
                self.quotas.unreserve(uid, n, b)

    # -- validate ---------------------------------------------------------------------

    async def _validate(self, specs: list[dict], caller: Caller, forwarded: bool, upfront: int | None,
                        held: _Held, sliced: _Slicer) -> tuple[list[JobSpec], list[int]]:
        """Each spec built, its share of the caps reserved; then the rules across the batch."""
        limits = self.limits()
        daemon_uid = os.geteuid()
        known = self._known  # After may name an archived job, or an array's task that is no job yet
        built: list[JobSpec] = []
        sizes: list[int] = []
        users: dict = {}  # passwd entries of this batch's users: looked up once per batch
        for n, props in enumerate(specs):
            try:
                spec = build_spec(props, caller_uid=caller.uid, limits=limits, job_known=known,
                                  daemon_uid=daemon_uid, users=users)
            except SchedError as e:
                if len(specs) > 1:
                    e.message = f"spec {n}: {e.message}"
                    e.args = (e.message,)
                raise
            size = exec_bytes(spec)
            r = held.setdefault(spec.uid, [0, 0])
            self.quotas.reserve(spec.uid, 0 if spec.uid == upfront else 1, size, batch=r[1])
            r[0] += 0 if spec.uid == upfront else 1
            r[1] += size
            built.append(spec)
            sizes.append(size)
            await sliced.tick()
        await self._check_priority(built, caller, forwarded)
        here = [s for s in built if s.container and s.node in ("", self.config.node_name)]
        if here and self.executor is not None:
            await self.executor.check_specs(here)  # e.g. the image is in this node's store: only it can tell
        self._check_array(built)
        return built, sizes

    async def _check_priority(self, built: list[JobSpec], caller: Caller, forwarded: bool) -> None:
        """Users may only lower their priority (as in Slurm): above max_user_priority needs root or polkit.

        A forwarded job was checked by its origin, under the origin's rules; this node does not
        let a peer raise a job above its own max_user_priority either, but clamps rather than
        refuses, so that a job its origin rightly accepted still runs.
        """
        cap = self.config.max_user_priority
        high = [(n, s) for n, s in enumerate(built) if s.priority > cap]
        if not high or self.user_mode:
            return
        if forwarded:
            for _, s in high:
                log.warning("forwarded job of %s asks Priority %d; clamped to this node's max_user_priority %d",
                            s.owner, s.priority, cap)
                s.priority = cap
            return
        if caller.uid == 0:
            return
        if self.authorize_other is not None and await self.authorize_other(caller, PRIORITY_ACTION):
            log.info("uid %d submits with Priority %d: allowed by polkit", caller.uid, high[0][1].priority)
            return
        n, s = high[0]
        raise AccessDenied(
            f"{f'spec {n}: ' if len(built) > 1 else ''}Priority: {s.priority} is above {cap}, the most an ordinary "
            f"user may ask (max_user_priority); only root or a user polkit allows {PRIORITY_ACTION} may raise it"
        )

    @staticmethod
    def _check_array(built: list[JobSpec]) -> None:
        """An array is a whole batch of tasks with distinct ids and one cap."""
        tasks = [s.array_task_id for s in built if s.array_task_id is not None]
        if not tasks:
            return
        if len(tasks) != len(built):
            raise InvalidArgument("ArrayTaskId: an array is one SubmitMany call in which every spec is a task; "
                                  "mix no other jobs into it")
        if len(set(tasks)) != len(tasks):
            raise InvalidArgument("ArrayTaskId: each task of an array needs its own id")
        if len({s.array_max_running for s in built}) > 1:
            raise InvalidArgument("ArrayMaxRunning: every task of an array must give the same cap")

    # -- route ------------------------------------------------------------------------

    async def _route(self, built: list[JobSpec]) -> Job | list[Job] | None:
        """A job for another node (or 'any'): the federation's record of it if placed there (or
        waiting for a node); None: it runs here."""
        if self.federation is None or all(s.node in ("", self.config.node_name) for s in built):
            return None
        if len(built) > 1 and built[0].array_task_id is not None and hasattr(self.federation, "submit_array"):
            array = await self.federation.submit_array(built)  # a Slurm peer takes arrays (schedd.cluster.slurm)
            if array is not None:
                return array
        if len(built) > 1:
            raise InvalidArgument("Node: jobs for other nodes (or 'any') are submitted one at a time with Submit, "
                                  "not with SubmitMany")
        s = built[0]
        if s.after and not (s.after_any or s.after_not_ok) and getattr(self.federation, "takes_after", lambda _s: False)(s):
            return await self.federation.submit(s)  # Slurm's afterok among jobs sent to that Slurm peer
        if s.after or s.after_any or s.after_not_ok:
            key = "After" if s.after else "AfterAny" if s.after_any else "AfterNotOk"
            if s.node != "any":
                raise InvalidArgument(f"{key}: a job placed on another node cannot wait for jobs of this one; "
                                      f"drop Node or {key}")
            self.federation.require_local_fit(built[0], "a job with After runs on this node")
            return None
        return await self.federation.submit(built[0])

    # -- create and commit ----------------------------------------------------------------

    async def _create(self, built: list[JobSpec], origin: tuple[str, int, int] | None, sliced: _Slicer) -> list[Job]:
        """The jobs, with one block of ids: nothing submitted meanwhile takes one of them."""
        now = now_usec()
        first = self._next_id
        self._next_id += len(built)
        array = bool(built) and built[0].array_task_id is not None
        jobs = []
        jobs_dir = str(self.jobs_dir)
        node = self.config.node_name
        for jid, spec in enumerate(built, first):
            spec.expand_paths(jid, jobs_dir)
            job = Job(id=jid, spec=spec, submit_time=now, node=node, assigned_cpus=EMPTY, assigned_gpus=EMPTY,
                      state=JobState.HELD if spec.hold else JobState.PENDING,
                      reason=Reason.HELD if spec.hold else Reason.BEGIN_TIME if spec.begin_time > now else "")
            if origin is not None:
                job.origin_node, job.origin_id, job.attempt = origin
            if array:
                job.array_job_id = first  # Slurm's convention: the array is named by its first job
            jobs.append(job)
            await sliced.tick()
        return jobs

    async def _commit(self, jobs: list[Job], sizes: list[int], held: _Held, sliced: _Slicer,
                      answered: Answered | None) -> None:
        """Into the table and the queues, durable, then announced.

        The jobs may be placed and their scopes created while the commit runs, but no program
        starts (and no one hears of the ids) until the records are durable. A batch of up to
        ANSWER_AHEAD jobs is answered (answered) once durable and announced at once after, so that
        the caller's next call overlaps the announcements and the bus daemon's routing of them; a
        bigger one is announced in slices (paced, see drain) and answered when submit_many returns.
        """
        durable = asyncio.get_running_loop().create_future()
        early = answered is not None and len(jobs) <= self.ANSWER_AHEAD
        rows = []
        inserted: list[Job] = []
        later: list[Job] = []  # pending, for _make_eligible once announced
        self._unannounced.update(j.id for j in jobs)
        try:
            try:
                for job, size in zip(jobs, sizes):
                    r = held[job.uid]  # the reservation becomes the queued job's share
                    r[0] -= 1
                    r[1] -= size
                    self.quotas.unreserve(job.uid, 1, size)
                    self._insert(job)
                    inserted.append(job)
                    if job.state == JobState.PENDING and self._admits_later(job):
                        later.append(job)
                    elif job.state == JobState.PENDING:
                        self._durable[job.id] = durable
                        self._enqueue(job)
                    rows.append(job_to_row(job))
                    await sliced.tick()
                if self.schedule_now():
                    await asyncio.sleep(0)  # their StartTransientUnit goes out first; the commit runs beside it
                    for n, job in enumerate(inserted):
                        if job.state not in (JobState.PENDING, JobState.HELD):
                            rows[n] = job_to_row(job)  # its start ended at once (failed): that is its row now
                await self.store.save_rows(rows, retry=False)
            except BaseException as e:
                for job in inserted:
                    self._forget_unrecorded(job)
                durable.set_exception(e if isinstance(e, Exception) else SchedError("the submission was interrupted"))
                durable.exception()  # retrieved: launches waiting on it abort quietly
                if isinstance(e, Exception):
                    raise self.store.write_error(e.__cause__ or e, "the jobs" if len(jobs) > 1 else "the job") from e
                raise
            finally:
                self._unannounced.difference_update(j.id for j in jobs)
            # Durable: announced before any of them starts (a start's signals never precede the job's object).
            big = len(jobs) > self.LOG_EACH
            if early:
                answered(jobs)
            # Answered early, every job is announced in this same turn of the loop: no call comes
            # between the answer and a job's object (nor changes a job before it is announced).
            for job in jobs:
                self._announce(job)
                if not big:
                    self._transition_log(job, "submitted")
                if not early:
                    await sliced.tick()
            for job in later:  # dependencies, a begin time: once announced
                if job.state == JobState.PENDING and self.jobs.get(job.id) is job:
                    self._make_eligible(job)
                await sliced.tick()
            if big:
                log.info("jobs %d-%d submitted (%d jobs in one batch): user=%s", jobs[0].id, jobs[-1].id, len(jobs),
                         jobs[0].spec.owner)
            self._unload_held(jobs, rows)
        finally:
            if not durable.done():
                durable.set_result(None)  # recorded: whatever went wrong announcing them, they may run
            for job in jobs:
                self._durable.pop(job.id, None)
        self._manager_changed(COUNTS)
        self.kick()

    def _forget_unrecorded(self, job: Job) -> None:
        """Undo a submission whose commit failed: as if it never came."""
        self._remove(job)
        self._unqueue(job)
