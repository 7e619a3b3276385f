"""The engine: owns the jobs, applies every transition, and keeps store, scheduler and executor in step.

Front ends (D-Bus, the peer API, the dashboard) call the engine's methods with a
Caller and listen to its events; they hold no job state of their own. Live jobs are
in memory and decide scheduling; the store is the durable copy and the archive of
finished jobs, which the engine reads only for jobs no longer in memory (a dependency
on an archived job, GetJob or a listing of old ones).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

from schedd import faults, unit_name
from schedd.config import Config
from schedd.errors import AccessDenied, InvalidArgument, InvalidState, NotFound, SchedError
from schedd.executor import Executor, ExecutorError, ExitInfo, StartWithdrawn
from schedd.core.cluster import Cluster
from schedd.core.ledger import Allocation, Ledger, LedgerConflict
from schedd.core.model import AWAITING_NODE, TERMINAL_STATES, Job, JobSpec, JobState, Reason, now_usec
from schedd.core.quota import Quotas, exec_bytes
from schedd.core.scheduler import Running, Scheduler
from schedd.protocol import format_duration
from schedd.core.spec import Limits, build_spec
from schedd.core.store import Store, job_to_row

log = logging.getLogger(__name__)

# Properties (D-Bus names) touched by each kind of transition, for PropertiesChanged.
_START_PROPS = {"State", "Reason", "StartTime", "AssignedCPUs", "AssignedGPUs", "Node", "WaitUSec"}
MANAGE_ACTION = "org.schedd.Schedd1.manage-jobs"  # polkit action for other users' jobs
PRIORITY_ACTION = "org.schedd.Schedd1.set-priority"  # polkit action for a Priority above max_user_priority
_END_PROPS = {"State", "Reason", "ExitCode", "EndTime", "CPUTimeUSec", "MemoryPeak", "RunUSec"}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: the uid the bus vouches for, and the bus name (for polkit)."""

    uid: int
    sender: str | None = None
    interactive: bool = False  # the call allows interactive authorization (a polkit agent may ask)


class Listener(Protocol):
    def job_added(self, job: Job) -> None: ...
    def job_changed(self, job: Job, props: set[str], old_state: JobState) -> None: ...
    def job_released(self, job: Job) -> None: ...
    def manager_changed(self, props: set[str]) -> None: ...


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


@dataclass
class _Flags:
    """Requests against a job that take effect when its processes end."""

    cancel: bool = False
    requeue: bool = False
    timeout: bool = False  # stopped by the daemon because its time limit ran out
    fence: bool = False  # stopped because its origin placed it elsewhere (node failure)
    waiters: list[asyncio.Future] = field(default_factory=list)


class _Lazy:
    """An awaitable that makes its coroutine only when awaited (an executor whose start fails early
    never awaits it, and an unawaited coroutine would warn)."""

    __slots__ = ("_make",)

    def __init__(self, make) -> None:
        self._make = make

    def __await__(self):
        return self._make().__await__()


class Engine:
    def __init__(self, config: Config, store: Store, *, user_mode: bool = False) -> None:
        self.config = config
        self.store = store
        self.user_mode = user_mode
        self.ledger = Ledger(config.cpu_ids, config.memory, config.gpu_ids)
        self.scheduler = Scheduler(self.ledger, config.policy, running=self._running)
        self.executor: Executor | None = None
        self.jobs: dict[int, Job] = {}
        self.listeners: list[Listener] = []
        self.authorize_other: Any = None  # async (Caller, action) -> bool, e.g. polkit
        self.federation: Cluster | None = None  # set by the daemon when [[peers]] are configured
        self._allocs: dict[int, Allocation] = {}
        self._flags: dict[int, _Flags] = defaultdict(_Flags)
        self._blocked: dict[int, Job] = {}  # pending, waiting on dependencies
        self._dependents: dict[int, set[int]] = defaultdict(set)
        self._starting: set[int] = set()
        self._durable: dict[int, asyncio.Future] = {}  # submitted jobs whose commit is still running
        self.quotas = Quotas(config)  # queued jobs and their argv+environment bytes, per uid
        self._unannounced: set[int] = set()  # ids of a batch not yet durable: no one hears of them
        self._purged_max_id = 0  # the highest id the purge of finished jobs has deleted (store.meta)
        self._by_state: Counter[JobState] = Counter()
        self._next_id = 1
        self._kick_scheduled = False
        self._manager_dirty: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        # Arrays with a cap on running tasks: which tasks are admitted (queued, starting or
        # running) and which wait their turn outside the scheduler, in task order.
        self._admitted: dict[int, set[int]] = defaultdict(set)
        self._parked: dict[int, dict[int, Job]] = defaultdict(dict)
        self._limit_timers: dict[int, asyncio.TimerHandle] = {}
        self.jobs_dir = config.state_dir / "jobs"

    # -- start-up -------------------------------------------------------------

    async def recover(self, executor: Executor) -> None:
        """Load the store and re-adopt what kept running; before the bus name is taken.

        A PENDING job may have run meanwhile: its RUNNING row is saved lazily (urgent=False),
        so the daemon can die after the gate was released but before that row landed. Its
        gate's status file then tells how the run ended. Each run has its own status file,
        named by the job's restart count (the gates' status_path): a requeue bumps the count
        in the same row that makes the job PENDING, so whatever the moment of a crash, the
        PENDING row names a file only its next run writes. The alternative, removing the old
        file before the PENDING row commits, leaves a window (file gone, RUNNING row still
        the durable one: the run would read as lost); this one has none. Every way back to
        PENDING follows from it: Requeue and a node failure elsewhere (requeue_away) bump
        the count; a run that never started (aborted) keeps it, and its file says aborted,
        which queues it again; place_here gives back a job that has not run here at its count.

        The state directory and jobs/ are 0711: users traverse to their own jobs/<id>
        (0700, theirs) but list nothing; the database and exits/ are root's alone.
        """
        self.executor = executor
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config.state_dir, 0o711)
        os.chmod(self.jobs_dir, 0o711)
        self._next_id = self.store.max_id() + 1
        self._purged_max_id = self.store.purged_max_id()
        since = now_usec() - self.config.finished_object_ttl_usec
        adopted = lost = 0
        for job in self.store.load_live(since):
            self.jobs[job.id] = job
            self._by_state[job.state] += 1
            if job.state.active and not job.remote:
                alloc = Allocation(tuple(job.assigned_cpus), job.spec.memory, tuple(job.assigned_gpus))
                try:
                    self.ledger.claim(alloc)
                except LedgerConflict as e:
                    log.error("job %d: its recorded allocation overlaps another (%s); trusting it anyway", job.id, e)
                self._allocs[job.id] = alloc
                if job.array_job_id and job.spec.array_max_running:
                    self._admitted[job.array_job_id].add(job.id)
        for job in list(self.jobs.values()):
            if job.state.active and not job.remote:
                try:
                    running = await executor.recover(job)
                except Exception:
                    log.exception("job %d: cannot re-attach to it", job.id)
                    self._fail_lost(job)
                    running = False
                if running:
                    adopted += 1
                    self._arm_limit(job)
                else:
                    lost += 1
            elif job.state.queued:
                self.quotas.enter(job.uid, exec_bytes(job.spec))
        # Units of jobs we do not track as running: a crash between start and its record, or strangers.
        active = {j.id for j in self.jobs.values() if j.state.active and not j.remote}
        for jid in await executor.orphans(active):
            job = self.jobs.get(jid)
            if job is not None and job.state == JobState.PENDING and not job.remote:
                try:
                    await self._adopt_unrecorded(job)
                except Exception:
                    log.exception("job %d: cannot adopt its running unit", job.id)
                    self._fail_lost(job)
                adopted += 1
            else:
                what = f"{job.state.value.lower()} job" if job else "job unknown to the store"
                log.warning("%s belongs to a %s; stopping it", unit_name(jid), what)
                await executor.reap_orphan(jid)
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.state == JobState.PENDING and job.id not in self._allocs and not job.remote:
                try:
                    info = self.executor.recorded_exit(job)
                    if info is not None:
                        self._finish(job, info)
                    else:
                        self._make_eligible(job)
                except Exception:
                    log.exception("job %d: cannot recover it", job.id)
                    self._fail_lost(job)
        log.info("recovered %d live jobs (next id %d): %d running re-adopted, %d ended while down",
                 len(self.jobs), self._next_id, adopted, lost)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_finished())
        self._purger = asyncio.get_running_loop().create_task(self._purge_finished())
        self.kick()

    async def _adopt_unrecorded(self, job: Job) -> None:
        found = await self.executor.find_unrecorded(job.id)
        if found is None:
            return
        handle, pinned = found
        cpus = tuple(c for c in pinned if c in self.ledger.cpu_ids)
        alloc = Allocation(cpus, job.spec.memory, ())
        try:
            self.ledger.claim(alloc)
        except LedgerConflict as e:
            log.error("job %d: adopted allocation overlaps another (%s)", job.id, e)
        self._allocs[job.id] = alloc
        job.assigned_cpus, job.handle = list(cpus), handle
        job.start_time = job.start_time or now_usec()
        self._set(job, JobState.RUNNING, "", _START_PROPS)
        log.warning("job %d was running without a record (daemon died while starting it); adopted", job.id)
        if not await self.executor.recover(job):
            return
        self.store.save(job)

    # -- queries ----------------------------------------------------------------

    def limits(self) -> Limits:
        c = self.config
        return Limits(
            node_name=c.node_name, total_cpus=self.ledger.total_cpus, total_memory=self.ledger.total_memory,
            total_gpus=self.ledger.total_gpus, default_memory=c.default_memory, min_memory=c.min_memory,
            max_argv_bytes=c.max_argv_bytes, max_env_entries=c.max_env_entries,
            default_time_usec=c.default_time_usec, max_time_usec=c.max_time_usec,
            cluster=self.federation.views if self.federation is not None else None,
        )

    def get(self, job_id: int) -> Job:
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
        return c[JobState.PENDING] + c[JobState.HELD], c[JobState.RUNNING] + c[JobState.SUSPENDED]

    # -- requests ---------------------------------------------------------------

    SLICE = 0.01  # seconds of batch work between yields: what one big request may delay other callers
    LOG_EACH = 1000  # a bigger batch is one journal line, not one per job

    async def submit(self, props: dict, caller: Caller) -> Job:
        return (await self.submit_many([props], caller))[0]

    async def submit_many(self, specs: list[dict], caller: Caller, *, origin: tuple[str, int] | None = None) -> list[Job]:
        """Validate all, then queue all; answers once every one of them is durable.

        A big batch is worked in slices with yields to the loop between them (other callers are
        answered meanwhile); its share of the per-user caps is reserved first, so submits that run
        while it yields see it. origin: (node, id) of a job another node forwarded here, recorded
        with it (idempotency key).
        """
        # The count cap before anything is built: an over-cap batch costs nothing.
        upfront = caller.uid if caller.uid != 0 or not any("User" in p for p in specs) else None
        held: dict[int, list[int]] = {}  # uid -> [jobs, bytes] this batch has reserved and not yet queued
        if upfront is not None:
            self.quotas.reserve(upfront, len(specs), 0)
            held[upfront] = [len(specs), 0]
        try:
            return await self._submit_reserved(specs, caller, origin, upfront, held)
        finally:
            for uid, (n, b) in held.items():
                self.quotas.unreserve(uid, n, b)

    async def _submit_reserved(self, specs: list[dict], caller: Caller, origin: tuple[str, int] | None,
                               upfront: int | None, held: dict[int, list[int]]) -> list[Job]:
        limits = self.limits()
        daemon_uid = os.geteuid()
        known = lambda i: i in self.jobs or self.store.exists(i)  # noqa: E731
        sliced = _Slicer(self.SLICE, pause=self._drain_listeners)
        built: list[JobSpec] = []
        sizes: list[int] = []
        for n, props in enumerate(specs):
            try:
                spec = build_spec(props, caller_uid=caller.uid, limits=limits, job_known=known,
                                  daemon_uid=daemon_uid)
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
        await self._check_priority(built, caller, origin is not None)
        tasks = [s.array_task_id for s in built if s.array_task_id is not None]
        if tasks:
            if len(tasks) != len(built):
                raise InvalidArgument("ArrayTaskId: an array is one SubmitMany call in which every spec is a task; "
                                      "mix no other jobs into it")
            if len(set(tasks)) != len(tasks):
                raise InvalidArgument("ArrayTaskId: each task of an array needs its own id")
            if len({s.array_max_running for s in built}) > 1:
                raise InvalidArgument("ArrayMaxRunning: every task of an array must give the same cap")
        if self.federation is not None and any(s.node not in ("", self.config.node_name) for s in built):
            if len(built) > 1:
                raise InvalidArgument("Node: jobs for other nodes (or 'any') are submitted one at a time with Submit, "
                                      "not with SubmitMany")
            if built[0].after:
                if built[0].node != "any":
                    raise InvalidArgument("After: a job placed on another node cannot wait for jobs of this one; "
                                          "drop Node or After")
                self.federation.require_local_fit(built[0], "a job with After runs on this node")
            else:
                job = await self.federation.submit(built[0])
                if job is not None:
                    return [job]  # placed on a peer (or waiting for one)
        now = now_usec()
        first = self._next_id
        self._next_id += len(built)  # one block of ids: nothing submitted meanwhile takes one of them
        jobs = []
        jobs_dir = str(self.jobs_dir)
        for jid, spec in enumerate(built, first):
            spec.expand_paths(jid, jobs_dir)
            job = Job(id=jid, spec=spec, submit_time=now, node=self.config.node_name,
                      state=JobState.HELD if spec.hold else JobState.PENDING,
                      reason=Reason.HELD if spec.hold else "")
            if origin is not None:
                job.origin_node, job.origin_id = origin
            if tasks:
                job.array_job_id = first  # Slurm's convention: the array is named by its first job
            jobs.append(job)
            await sliced.tick()
        # The jobs may be placed and their scopes created while the commit runs, but no
        # program starts (and no one hears of the ids) until the records are durable.
        durable = asyncio.get_running_loop().create_future()
        rows = []
        inserted: list[Job] = []
        self._unannounced.update(j.id for j in jobs)
        try:
            try:
                for job, size in zip(jobs, sizes):
                    self.jobs[job.id] = job
                    self._by_state[job.state] += 1
                    r = held[job.uid]  # the reservation becomes the queued job's share
                    r[0] -= 1
                    r[1] -= size
                    self.quotas.unreserve(job.uid, 1, size)
                    self.quotas.enter(job.uid, size)
                    inserted.append(job)
                    if job.state == JobState.PENDING:
                        if not job.spec.after:
                            self._durable[job.id] = durable
                            self._enqueue(job)
                    rows.append(job_to_row(job))
                    await sliced.tick()
                self.kick()
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
            for job in jobs:
                for l in self.listeners:
                    l.job_added(job)
                if not big:
                    self._transition_log(job, "submitted")
                if job.state == JobState.PENDING and job.spec.after:
                    self._make_eligible(job)
                await sliced.tick()
            if big:
                log.info("jobs %d-%d submitted (%d jobs in one batch): user=%s", first, jobs[-1].id, len(jobs),
                         jobs[0].spec.owner)
        finally:
            if not durable.done():
                durable.set_result(None)  # recorded: whatever went wrong announcing them, they may run
            for job in jobs:
                self._durable.pop(job.id, None)
        self._manager_changed({"PendingJobs"})
        self.kick()
        return jobs

    async def _check_priority(self, built: list, caller: Caller, forwarded: bool) -> None:
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

    async def _drain_listeners(self) -> None:
        """Let listeners with a backlog (the bus's outgoing signals) catch up between slices of a batch."""
        for l in self.listeners:
            drain = getattr(l, "drain", None)
            if drain is not None:
                await drain()

    def _forget_unrecorded(self, job: Job) -> None:
        """Undo a submission whose commit failed: as if it never came."""
        self.jobs.pop(job.id, None)
        self._by_state[job.state] -= 1
        if job.state.queued:
            self.quotas.leave(job.uid, exec_bytes(job.spec))
        self._unqueue(job)

    def _check_owner(self, job: Job, caller: Caller) -> None:
        if caller.uid == 0 or caller.uid == job.uid or self.user_mode:
            return
        raise AccessDenied(f"job {job.id} belongs to {job.spec.owner}; only its owner or root may change it "
                           f"(or a user polkit allows {MANAGE_ACTION})")

    async def _authorize(self, job: Job, caller: Caller) -> None:
        try:
            self._check_owner(job, caller)
        except AccessDenied:
            if self.authorize_other is not None and await self.authorize_other(caller, MANAGE_ACTION):
                log.info("uid %d acts on job %d of uid %d: allowed by polkit", caller.uid, job.id, job.uid)
                return
            raise

    async def authorize(self, job: Job, caller: Caller) -> None:
        """AccessDenied unless the caller owns the job, is root, or polkit allows it (e.g. to read its output)."""
        await self._authorize(job, caller)

    async def _owned(self, job_id: int, caller: Caller) -> Job:
        """The job, if it exists and the caller may change it."""
        job = self._live(job_id)
        await self._authorize(job, caller)
        return job

    def _live(self, job_id: int) -> Job:
        job = None if job_id in self._unannounced else self.jobs.get(job_id)
        if job is None:
            if job_id not in self._unannounced and self.store.exists(job_id):
                return self.store.get(job_id)
            raise self._not_found(job_id)
        return job

    async def cancel(self, job_id: int, caller: Caller) -> None:
        job = await self._owned(job_id, caller)
        if job.remote:
            return await self.federation.action(job, "cancel")
        if job.state.terminal:
            raise InvalidState(f"job {job_id} is already {job.state.value}; only pending, held or running jobs can be cancelled")
        if job.state.queued and job.id not in self._starting:
            self._unqueue(job)
            self._end(job, JobState.CANCELLED, Reason.CANCELLED)
            self.store.save(job)
            await self.store.drain(job.id)
            return
        await self._stop_and_wait(job, cancel=True)
        await self.store.drain(job.id)  # answered once CANCELLED is durable, not as a lazy write

    async def _stop_and_wait(self, job: Job, *, cancel: bool = False, requeue: bool = False) -> None:
        """Ask the executor to end the job's processes; return once the job's end is recorded."""
        flags = self._flags[job.id]
        before = (flags.cancel, flags.requeue)
        flags.cancel |= cancel
        flags.requeue |= requeue
        fut = asyncio.get_running_loop().create_future()
        flags.waiters.append(fut)
        if job.id not in self._starting:
            try:
                if job.state == JobState.SUSPENDED:
                    await self.executor.resume(job)  # so it can act on the SIGTERM
                await self.executor.stop(job)
            except ExecutorError as e:
                # The job runs on: its later end must not read as this request's (a forged CANCELLED).
                if self._flags.get(job.id) is flags:  # undo only what this call asked (not a concurrent Requeue's)
                    flags.cancel = flags.cancel and (before[0] or not cancel)
                    flags.requeue = flags.requeue and (before[1] or not requeue)
                    flags.waiters.remove(fut)
                raise SchedError(str(e)) from e
        await fut

    async def hold(self, job_id: int, caller: Caller) -> None:
        job = await self._owned(job_id, caller)
        if job.remote:
            return await self.federation.action(job, "hold")
        if job.state == JobState.HELD:
            return
        if job.state != JobState.PENDING or job.id in self._starting:
            raise InvalidState(f"job {job_id} is {job.state.value}; only pending jobs can be held")
        self._unqueue(job)
        self._set(job, JobState.HELD, Reason.HELD, {"State", "Reason"})
        job.spec.hold = True
        await self.store.save(job)

    async def release(self, job_id: int, caller: Caller) -> None:
        job = await self._owned(job_id, caller)
        if job.remote:
            return await self.federation.action(job, "release")
        if job.state == JobState.PENDING:
            return
        if job.state != JobState.HELD:
            raise InvalidState(f"job {job_id} is {job.state.value}; only held jobs can be released")
        job.spec.hold = False
        self._set(job, JobState.PENDING, "", {"State", "Reason"})
        await self.store.save(job)
        self._make_eligible(job)
        self.kick()

    async def suspend(self, job_id: int, caller: Caller) -> None:
        job = await self._owned(job_id, caller)
        if job.remote:
            return await self.federation.action(job, "suspend")
        if job.state == JobState.SUSPENDED:
            return
        if job.state != JobState.RUNNING or job.id in self._starting:
            raise InvalidState(f"job {job_id} is {job.state.value}; only running jobs can be suspended")
        try:
            await self.executor.suspend(job)  # keeps its allocation, like Slurm's suspend
        except ExecutorError as e:
            raise SchedError(str(e)) from e
        if job.state != JobState.RUNNING:
            return  # it ended meanwhile
        self._disarm_limit(job.id)
        job.suspend_time = now_usec()
        self._set(job, JobState.SUSPENDED, "", {"State", "Reason", "SuspendedUSec"})
        await self.store.save(job)

    async def resume(self, job_id: int, caller: Caller) -> None:
        job = await self._owned(job_id, caller)
        if job.remote:
            return await self.federation.action(job, "resume")
        if job.state == JobState.RUNNING:
            return
        if job.state != JobState.SUSPENDED:
            raise InvalidState(f"job {job_id} is {job.state.value}; only suspended jobs can be resumed")
        try:
            await self.executor.resume(job)
        except ExecutorError as e:
            raise SchedError(str(e)) from e
        if job.state != JobState.SUSPENDED:
            return
        self._end_suspension(job)
        self._set(job, JobState.RUNNING, "", {"State", "Reason", "SuspendedUSec"})
        await self.store.save(job)
        self._arm_limit(job)

    def _end_suspension(self, job: Job) -> None:
        if job.suspend_time:
            job.suspended_usec += max(0, now_usec() - job.suspend_time)
            job.suspend_time = 0

    # -- time limits ------------------------------------------------------------
    # The engine keeps each job's clock, not systemd: a scope's RuntimeMaxUSec cannot be
    # changed once it runs (systemd 252 refuses), and a suspended job's limit must pause.

    def _arm_limit(self, job: Job) -> None:
        self._disarm_limit(job.id)
        deadline = job.deadline()
        if deadline is None or job.state != JobState.RUNNING:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, (deadline - now_usec()) / 1e6)
        self._limit_timers[job.id] = loop.call_at(loop.time() + delay, self._time_up, job.id)

    def _disarm_limit(self, job_id: int) -> None:
        timer = self._limit_timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    def _time_up(self, job_id: int) -> None:
        self._limit_timers.pop(job_id, None)
        job = self.jobs.get(job_id)
        if job is None or job.state != JobState.RUNNING:
            return
        deadline = job.deadline()
        if deadline is None:
            return
        if now_usec() < deadline - 1000:  # the wall clock stepped back: wait the rest
            self._arm_limit(job)
            return
        log.info("job %d reached its time limit of %s; stopping %s", job.id,
                 format_duration(job.spec.runtime_max_usec), job.unit)
        self._flags[job.id].timeout = True
        self._spawn(self._stop_for_limit(job))

    async def _stop_for_limit(self, job: Job) -> None:
        try:
            await self.executor.stop(job)
        except ExecutorError as e:
            log.error("job %d: cannot stop it at its time limit: %s", job.id, e)

    async def requeue(self, job_id: int, caller: Caller) -> None:
        job = await self._owned(job_id, caller)
        if job.remote:
            return await self.federation.action(job, "requeue")
        if job.state.queued:
            raise InvalidState(f"job {job_id} is {job.state.value}: it has not run, nothing to requeue")
        if job.state.active or job.id in self._starting:
            await self._stop_and_wait(job, requeue=True)
            await self.store.drain(job.id)  # answered once the PENDING row (and its new run number) is durable
            return
        if job.id not in self.jobs:
            self.jobs[job.id] = job
            self._by_state[job.state] += 1
            for l in self.listeners:
                l.job_added(job)
        self._requeue(job)
        await self.store.drain(job.id)

    def _requeue(self, job: Job) -> None:
        """Back to PENDING as its next run (restarts + 1): see recover() for why the count names the run."""
        last_run = job.restarts
        job.restarts += 1
        job.exit_code = job.start_time = job.end_time = job.cpu_time_usec = job.memory_peak = 0
        job.suspended_usec = job.suspend_time = 0
        job.assigned_cpus, job.assigned_gpus, job.handle = [], [], None
        self._set(job, JobState.PENDING, Reason.REQUEUED, _END_PROPS | _START_PROPS | {"Restarts", "SuspendedUSec"})
        fut = self.store.save(job)
        fut.add_done_callback(lambda f, jid=job.id: f.exception() or self.executor.forget(jid, last_run))
        self._make_eligible(job)
        self.kick()

    # -- scheduling -------------------------------------------------------------

    def _make_eligible(self, job: Job) -> None:
        """Queue a pending job, or park it until its dependencies complete."""
        waiting = False
        for dep in job.spec.after:
            d = self.jobs.get(dep) or self.store.get(dep)
            if d is None or d.state in (JobState.FAILED, JobState.CANCELLED):
                self._end(job, JobState.FAILED, Reason.DEPENDENCY)
                self.store.save(job)
                return
            if d.state != JobState.COMPLETED:
                self._dependents[dep].add(job.id)
                waiting = True
        if waiting:
            self._blocked[job.id] = job
        else:
            self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        """Hand a pending job to the scheduler, unless its array already has its cap of tasks admitted."""
        aid, cap = job.array_job_id, job.spec.array_max_running
        if aid and cap:
            admitted = self._admitted[aid]
            if job.id not in admitted and len(admitted) >= cap:
                self._parked[aid][job.id] = job
                return
            admitted.add(job.id)
        self.scheduler.enqueue(job)

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

    def _running(self) -> list[Running]:
        """Running jobs as the backfill planner sees them: when each ends at the latest."""
        out = []
        for jid, alloc in self._allocs.items():
            job = self.jobs.get(jid)
            end = job.deadline() if job is not None and job.start_time else None
            if job is not None and not job.start_time and job.spec.runtime_max_usec:
                end = now_usec() + job.spec.runtime_max_usec  # still starting
            out.append(Running(end, len(alloc.cpus), alloc.memory, len(alloc.gpus)))
        return out

    def _unqueue(self, job: Job) -> None:
        self.scheduler.dequeue(job.id)
        self._blocked.pop(job.id, None)
        self._leave_array(job)

    def _dependency_ended(self, dep: Job) -> None:
        for jid in self._dependents.pop(dep.id, ()):
            job = self._blocked.get(jid)
            if job is None:
                continue
            if dep.state != JobState.COMPLETED:
                del self._blocked[jid]
                self._end(job, JobState.FAILED, Reason.DEPENDENCY)
                self.store.save(job)
            elif all(getattr(self.jobs.get(d) or self.store.get(d), "state", None) == JobState.COMPLETED
                     for d in job.spec.after):
                del self._blocked[jid]
                self._enqueue(job)

    def kick(self) -> None:
        """Something changed (submit, exit, release): run one scheduling pass soon, once."""
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._schedule)

    def _schedule(self) -> None:
        self._kick_scheduled = False
        started = self.scheduler.schedule(now_usec())
        for job, alloc in started:
            self._allocs[job.id] = alloc
            self._starting.add(job.id)
            self._spawn(self._launch(job, alloc))
        if started:
            self._manager_changed({"AvailableCPUs", "AvailableMemory", "AvailableGPUs"})

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _launch(self, job: Job, alloc: Allocation) -> None:
        job.assigned_cpus, job.assigned_gpus = list(alloc.cpus), list(alloc.gpus)
        try:
            self._prepare_output(job)
            job.handle = await self.executor.start(job, alloc, _Lazy(lambda: self._go(job)))
        except Exception as e:
            self._starting.discard(job.id)
            if job.id not in self.jobs:  # its submission was never recorded
                self._release(job)
                self.kick()
                return
            self._release(job)
            flags = self._flags.get(job.id)
            if flags is not None and flags.cancel:
                # Cancelled (or fenced) while starting: its program never ran, whatever stopped the start.
                log.info("job %d: cancelled while it was being started; its program did not run", job.id)
                self._end(job, JobState.CANCELLED, Reason.NODE_FAILURE if flags.fence else Reason.CANCELLED)
            else:
                log.error("job %d: cannot start: %s", job.id, e)
                self._end(job, JobState.FAILED, Reason.RESOURCES)
            self.store.save(job)
            self.executor.forget(job.id, job.restarts)
            self._wake_waiters(job)
            self.kick()
            return
        self._starting.discard(job.id)
        job.start_time = now_usec()
        job.node = self.config.node_name
        self._set(job, JobState.RUNNING, "", _START_PROPS)
        self.store.save(job, urgent=False)
        self._arm_limit(job)
        flags = self._flags.get(job.id)
        if flags is not None and (flags.cancel or flags.requeue):
            try:
                await self.executor.stop(job)  # an executor that had let the program run before it returned
            except ExecutorError as e:
                log.error("job %d: cannot stop: %s", job.id, e)

    async def _go(self, job: Job) -> None:
        """What the executor awaits before it lets the job's program run: the record is durable and
        nobody cancelled the job meanwhile (the executor releases the program right after, with no
        await in between, so a cancel that came during the start never lets it run)."""
        durable = self._durable.get(job.id)
        if durable is not None:
            await durable
        flags = self._flags.get(job.id)
        if flags is not None and flags.cancel:
            raise StartWithdrawn(f"job {job.id} was cancelled while it was being started")

    def _prepare_output(self, job: Job) -> None:
        """The default output directory jobs/<id>: the job's user's, mode 0700, so no one else reads it.

        A directory of that name owned by someone else (left by an earlier job of the same id,
        e.g. after the database was reset) is moved aside, never handed over with its files.
        """
        d = self.jobs_dir / str(job.id)
        if not (job.spec.stdout_path.startswith(str(d) + "/") or job.spec.stderr_path.startswith(str(d) + "/")):
            return
        d.mkdir(mode=0o700, exist_ok=True)
        owner = os.lstat(d).st_uid
        if owner not in (os.geteuid(), job.spec.uid):
            aside = self.jobs_dir / f".stale-{job.id}-{now_usec()}"
            log.warning("job %d: %s belongs to uid %d, not to the job's user; moved to %s", job.id, d, owner, aside)
            os.rename(d, aside)
            d.mkdir(mode=0o700)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, job.spec.uid, job.spec.gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)

    # -- ends -------------------------------------------------------------------

    def on_exit(self, job_id: int, info: ExitInfo) -> None:
        """The executor's report: the job's main process ended (or was found ended)."""
        faults.point("job-ended")
        job = self.jobs.get(job_id)
        if job is None:
            log.error("exit reported for unknown job %d", job_id)
            return
        waiters = list(self._flags[job_id].waiters) if job_id in self._flags else []
        try:
            self._finish(job, info)
        except Exception:
            log.exception("job %d: cannot record how it ended", job_id)
            self._fail_lost(job, waiters)
        self.kick()

    def _fail_lost(self, job: Job, waiters: list[asyncio.Future] | None = None) -> None:
        """The last resort when a job's end cannot be processed: FAILED lost, its resources
        back, its waiters woken; never left RUNNING holding CPUs, never a crash."""
        try:
            self._disarm_limit(job.id)
            self._unqueue(job)
            self._release(job)
            job.handle = None
            if not job.state.terminal:
                self._end(job, JobState.FAILED, Reason.LOST)
            self.store.save(job)
        except Exception:
            log.exception("job %d: cannot mark it failed", job.id)
        finally:
            for w in [*(waiters or ()), *self._flags.pop(job.id, _Flags()).waiters]:
                if not w.done():
                    w.set_result(None)

    def _finish(self, job: Job, info: ExitInfo) -> None:
        flags = self._flags.pop(job.id, _Flags())
        self._disarm_limit(job.id)
        self._end_suspension(job)
        self._release(job)
        job.exit_code = info.exit_code
        job.cpu_time_usec = info.cpu_usec
        job.memory_peak = info.memory_peak
        if info.error:
            log.warning("job %d: %s", job.id, info.error)
        if info.aborted and not flags.cancel:
            job.exit_code = 0
            # Its program never started (the daemon died between scope and release): queue it again.
            log.info("job %d never started; queueing it again", job.id)
            job.handle, job.assigned_cpus, job.assigned_gpus, job.start_time = None, [], [], 0
            self._set(job, JobState.PENDING, "", _START_PROPS)
            self.store.save(job)
            self._make_eligible(job)
        elif flags.requeue:
            self._requeue(job)
        else:
            if flags.cancel:
                state, reason = JobState.CANCELLED, Reason.NODE_FAILURE if flags.fence else Reason.CANCELLED
            elif info.malformed:
                state, reason = JobState.FAILED, Reason.LOST
            elif info.oom_killed:
                state, reason = JobState.FAILED, Reason.OOM_KILL
            elif info.signal and (flags.timeout or self._overdue(job)):
                state, reason = JobState.FAILED, Reason.TIMEOUT
            elif info.lost and not info.signal and info.exit_code in (0, 120, 121, 122, 123):
                state, reason = JobState.FAILED, Reason.LOST
            elif info.signal:
                state, reason = JobState.FAILED, Reason.SIGNAL
            elif info.exit_code:
                state, reason = JobState.FAILED, Reason.EXIT_CODE
            else:
                state, reason = JobState.COMPLETED, Reason.SUCCESS
            job.handle = None
            self._end(job, state, reason)
            fut = self.store.save(job, urgent=False)
            fut.add_done_callback(lambda f, jid=job.id, run=job.restarts:
                                  f.exception() or self.executor.forget(jid, run))
        for w in flags.waiters:
            if not w.done():
                w.set_result(None)

    @staticmethod
    def _overdue(job: Job) -> bool:
        """Past its time limit: a kill we did not see coming (the daemon was down when it hit)."""
        deadline = job.deadline()
        return deadline is not None and deadline <= now_usec()

    def _wake_waiters(self, job: Job) -> None:
        for w in self._flags.pop(job.id, _Flags()).waiters:
            if not w.done():
                w.set_result(None)

    def _release(self, job: Job) -> None:
        self._leave_array(job)
        alloc = self._allocs.pop(job.id, None)
        if alloc is not None:
            self.ledger.release(alloc)
            self._manager_changed({"AvailableCPUs", "AvailableMemory", "AvailableGPUs"})

    def _end(self, job: Job, state: JobState, reason: str) -> None:
        job.end_time = now_usec()
        self._set(job, state, reason, _END_PROPS)
        self._dependency_ended(job)

    # -- transitions and events ---------------------------------------------------

    def _set(self, job: Job, state: JobState, reason: str, props: set[str]) -> None:
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
        for l in self.listeners:
            l.job_changed(job, props, old)
        if old != state:
            self._manager_changed({"PendingJobs", "RunningJobs"})

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

    MANAGER_COALESCE = 0.05  # seconds; counters change with every job, clients need not hear each step

    def _manager_changed(self, props: set[str]) -> None:
        if not self._manager_dirty:
            asyncio.get_running_loop().call_later(self.MANAGER_COALESCE, self._flush_manager)
        self._manager_dirty |= props

    def _flush_manager(self) -> None:
        props, self._manager_dirty = self._manager_dirty, set()
        for l in self.listeners:
            l.manager_changed(props)

    SWEEP_INTERVAL = 30.0  # seconds

    async def _sweep_finished(self) -> None:
        """Finished jobs stay in memory (and on the bus) for a while, then live on in the store only.

        A job whose final row is not written yet (the disk is full) stays until it is; one
        failure is logged and the next round tries again: the loop never ends on an error.
        """
        while True:
            await asyncio.sleep(self.SWEEP_INTERVAL)
            try:
                self._sweep_once()
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one bad round
                log.exception("sweeping finished jobs failed; trying again in %gs", self.SWEEP_INTERVAL)

    def _sweep_once(self) -> None:
        horizon = now_usec() - self.config.finished_object_ttl_usec
        old = [j for j in self.jobs.values()
               if j.state.terminal and 0 < j.end_time < horizon and not self.store.unwritten(j.id)]
        for job in old:
            self._drop_finished(job)

    def _drop_finished(self, job: Job) -> None:
        """A finished job leaves memory and the bus (it lives on in the store, or was purged from it)."""
        del self.jobs[job.id]
        self._by_state[job.state] -= 1
        for l in self.listeners:
            try:
                l.job_released(job)
            except Exception:  # noqa: BLE001 - one listener's error must not keep the job (or stop a sweep)
                log.exception("job %d: releasing its object failed", job.id)

    PURGE_BATCH = 500  # rows per purge transaction: the group committer never waits long behind one

    @staticmethod
    def purge_interval(keep_usec: int) -> float:
        """Seconds between purges: a tenth of keep_finished, from 1 s to an hour."""
        return min(3600.0, max(1.0, keep_usec / 1e7))

    async def _purge_finished(self) -> None:
        """Finished jobs older than [jobs] keep_finished leave the store, in small batches off the loop."""
        while True:
            keep = self.config.keep_finished_usec
            await asyncio.sleep(self.purge_interval(keep) if keep else 3600.0)
            if keep:
                try:
                    await self.purge_once(now_usec() - keep)
                except Exception:  # noqa: BLE001 - a failed purge is retried at the next interval
                    log.exception("purging finished jobs failed; retrying in %.0f s", self.purge_interval(keep))

    async def purge_once(self, ended_before_usec: int) -> int:
        """Delete every finished job that ended before the horizon; how many were deleted."""
        total = 0
        while True:
            ids = await self.store.background(self.store.purge_finished, ended_before_usec, self.PURGE_BATCH)
            if not ids:
                break
            total += len(ids)
            self._purged_max_id = max(self._purged_max_id, max(ids))
            for jid in ids:
                job = self.jobs.get(jid)
                if job is not None and job.state.terminal:  # gone from the store: gone from the bus too
                    self._drop_finished(job)
            if len(ids) < self.PURGE_BATCH:
                break
            await asyncio.sleep(0)
        if total:
            log.info("purged %d finished jobs that ended more than %s ago (keep_finished)", total,
                     format_duration(max(0, now_usec() - ended_before_usec)))
        return total

    # -- federation ---------------------------------------------------------------
    # Jobs of ours placed on a peer are records here (mirrored from there); jobs run here
    # for a peer are ordinary local jobs that carry their origin.

    def allocate_id(self) -> int:
        jid = self._next_id
        self._next_id += 1
        return jid

    async def add_record(self, job: Job) -> None:
        """A job of ours that is not queued here (forwarded, or waiting for a node): durable, then announced."""
        self.jobs[job.id] = job
        self._by_state[job.state] += 1
        if job.state.queued:
            self.quotas.enter(job.uid, exec_bytes(job.spec))
        try:
            await self.store.save(job, retry=False)
        except Exception as e:
            self.jobs.pop(job.id, None)
            self._by_state[job.state] -= 1
            if job.state.queued:
                self.quotas.leave(job.uid, exec_bytes(job.spec))
            raise self.store.write_error(e.__cause__ or e) from e
        for l in self.listeners:
            l.job_added(job)
        self._transition_log(job, "submitted" if not job.remote_id else f"submitted, runs on {job.remote_node}")
        self._manager_changed({"PendingJobs", "RunningJobs"})

    def mirror(self, job: Job, state: JobState, reason: str, fields: dict[str, Any]) -> None:
        """A transition of a forwarded job, as its node reported it."""
        props = {"Node"}
        for key, prop in (("exit_code", "ExitCode"), ("start_time", "StartTime"), ("end_time", "EndTime"),
                          ("cpu_time_usec", "CPUTimeUSec"), ("memory_peak", "MemoryPeak"),
                          ("assigned_cpus", "AssignedCPUs"), ("assigned_gpus", "AssignedGPUs"),
                          ("stdout_path", "StdoutPath"), ("stderr_path", "StderrPath")):
            if key in fields:
                target = job.spec if key.endswith("_path") else job
                if getattr(target, key) != fields[key]:
                    setattr(target, key, fields[key])
                    props.add(prop)
        if state != job.state or reason != job.reason:
            self._set(job, state, reason, props | {"State", "Reason"})
            if state.terminal:
                self._dependency_ended(job)
        elif props != {"Node"}:
            for l in self.listeners:
                l.job_changed(job, props, job.state)
        self.store.save(job)

    def placed_remote(self, job: Job, node: str, remote_id: int, fields: dict[str, Any]) -> None:
        """A waiting (or requeued) job of ours was forwarded to node."""
        job.remote_node, job.remote_id, job.node = node, remote_id, node
        self.mirror(job, job.state, job.reason, fields)

    def place_here(self, job: Job) -> None:
        """A waiting (or requeued) job of ours runs on this node after all."""
        job.remote_node, job.remote_id, job.node = "", 0, self.config.node_name
        for l in self.listeners:
            l.job_changed(job, {"Node"}, job.state)
        self.store.save(job)
        if job.state == JobState.PENDING:
            self._make_eligible(job)
            self.kick()

    def requeue_away(self, job: Job, failed_node: str, *, requeue: bool) -> None:
        """The node running a job of ours went down: back to PENDING (to be placed elsewhere), or FAILED."""
        job.node_failures += 1
        if not requeue:
            job.end_time = now_usec()
            self._set(job, JobState.FAILED, Reason.NODE_FAILURE, _END_PROPS | {"Node"})
            self._dependency_ended(job)
        else:
            job.restarts += 1
            job.exit_code = job.start_time = job.end_time = job.cpu_time_usec = job.memory_peak = 0
            job.assigned_cpus, job.assigned_gpus = [], []
            job.remote_node, job.remote_id, job.node = AWAITING_NODE, 0, ""
            held = job.state == JobState.HELD
            self._set(job, JobState.HELD if held else JobState.PENDING, Reason.HELD if held else Reason.REQUEUED,
                      _END_PROPS | _START_PROPS | {"Restarts"})
        log.warning("job %d: node %s went down under it; %s", job.id, failed_node,
                    "requeued elsewhere" if requeue else "failed (node-failure)")
        self.store.save(job)

    async def hold_record(self, job: Job, hold: bool) -> None:
        """Hold or release a job of ours that waits for a node (no node has a copy to ask)."""
        job.spec.hold = hold
        self._set(job, JobState.HELD if hold else JobState.PENDING, Reason.HELD if hold else "", {"State", "Reason"})
        await self.store.save(job)

    def end_record(self, job: Job, state: JobState, reason: str) -> None:
        """End a job of ours that is not running anywhere (waiting for a node) or whose node is gone."""
        self._end(job, state, reason)
        self.store.save(job)

    async def fence(self, job_id: int) -> Job:
        """Stop a copy run here for a peer that has placed the job elsewhere since (no job runs twice)."""
        job = self.get(job_id)
        if job.state.terminal or job.id not in self.jobs:
            return job
        if job.state.queued and job.id not in self._starting:
            self._unqueue(job)
            self._end(job, JobState.CANCELLED, Reason.NODE_FAILURE)
            await self.store.save(job)
            return job
        self._flags[job.id].fence = True
        await self._stop_and_wait(job, cancel=True)
        return job

    async def shutdown(self) -> None:
        """Stop watching; running jobs go on in their scopes and are re-adopted at the next start."""
        if getattr(self, "_sweeper", None):
            self._sweeper.cancel()
        if getattr(self, "_purger", None):
            self._purger.cancel()
        await self.store.drain()
        if self.executor is not None:
            await self.executor.close()
