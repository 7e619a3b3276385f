"""Runs: from a scheduling pass to the recorded end.

A pass (kick, once per loop turn however many events asked) hands the scheduler's picks to
the executor; a start completes only once the job's record is durable and nobody cancelled
it meanwhile (_go). The executor reports each end (on_exit); _finish turns it into the job's
next state -- queued again, requeued, or ended with the reason _outcome reads from the exit.
"""

from __future__ import annotations

import asyncio
import logging
import os

from schedd import faults
from schedd.core.engine.events import END_FIELDS, RESOURCES, START_FIELDS
from schedd.core.engine.table import _Flags
from schedd.core.ledger import Allocation, Ledger
from schedd.core.model import Job, JobState, Reason, now_usec
from schedd.core.scheduler import Running, Scheduler
from schedd.executor import Executor, ExecutorError, ExitInfo, StartWithdrawn

log = logging.getLogger("schedd.core.engine")


class _StartDeferred(StartWithdrawn):
    """A copy's origin could not be asked for its start: it waits, pending, until it can."""


class _Lazy:
    """An awaitable that makes its coroutine only when awaited (an executor whose start fails early
    never awaits it, and an unawaited coroutine would warn)."""

    __slots__ = ("_make",)

    def __init__(self, make) -> None:
        self._make = make

    def __await__(self):
        return self._make().__await__()


class _Ready(_Lazy):
    """The start's `ready`, with its local work (the job's output directory: a mkdir, its ownership) as
    prepare(): an executor calls it once the scope's StartTransientUnit is on the wire, so the work
    runs while systemd makes the scope, off the start's critical path. It runs inline on the loop
    (~0.1 ms): a worker thread for it cost more in GIL and wakeup hand-offs on a busy machine than the
    work itself, and delayed the commit thread running beside it. Its error fails the start when
    awaited, before the program could run; without prepare(), awaiting does the work first."""

    __slots__ = ("_prepare", "_started", "_error")

    def __init__(self, make, prepare) -> None:
        super().__init__(make)
        self._prepare, self._started, self._error = prepare, False, None

    def prepare(self) -> None:
        if not self._started:
            self._started = True
            try:
                self._prepare()
            except Exception as e:  # noqa: BLE001 - raised by check(), when the start awaits it
                self._error = e

    async def check(self) -> None:
        if not self._started:
            self._started = True
            self._prepare()
        elif self._error is not None:
            raise self._error


def _outcome(info: ExitInfo, flags: _Flags, overdue: bool) -> tuple[JobState, str]:
    """How a run that ended (not aborted, not requeued) is recorded: its final state and reason."""
    if flags.cancel:
        return flags.stopped()
    if info.malformed:
        return JobState.FAILED, Reason.LOST
    if info.oom_killed:
        return JobState.FAILED, Reason.OOM_KILL
    if flags.timeout or (info.signal and overdue):
        # Stopped at its limit, however it then ended (a program that traps SIGTERM, or podman
        # passing on its container's 143): TIMEOUT, as in Slurm.
        return JobState.FAILED, Reason.TIMEOUT
    if info.lost and not info.signal and (info.gate_failed or not info.exit_code):
        return JobState.FAILED, Reason.LOST
    if info.signal:
        return JobState.FAILED, Reason.SIGNAL
    if info.exit_code:
        return JobState.FAILED, Reason.EXIT_CODE
    return JobState.COMPLETED, Reason.SUCCESS


def _wake(waiters: list[asyncio.Future]) -> None:
    """Answer the verbs that wait on a run's end (a waiter already cancelled is skipped)."""
    for w in waiters:
        if not w.done():
            w.set_result(None)


class Runs:
    """Allocations of jobs starting or running, the ids still starting, and the engine's tasks."""

    executor: Executor | None
    ledger: Ledger
    scheduler: Scheduler

    def _init_runs(self) -> None:
        self._allocs: dict[int, Allocation] = {}
        self._starting: set[int] = set()
        self._durable: dict[int, asyncio.Future] = {}  # submitted jobs whose commit is still running
        self._kick_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self.stopping = False  # set when the daemon is told to stop (begin_shutdown): no new starts

    # -- scheduling ---------------------------------------------------------------

    def kick(self) -> None:
        """Something changed (submit, exit, release): run one scheduling pass soon, once (not
        while pending jobs are still being loaded: loading.py kicks when they are)."""
        if not self._kick_scheduled and not self.loading_pending and not self.stopping:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._schedule)

    def schedule_now(self) -> bool:
        """A pass at once, not a loop turn later: whether it started anything. A submit runs it for its
        own jobs before their commit, and yields once if it did, so their StartTransientUnit goes out
        ahead of the commit's worker thread (which would otherwise compete with the start for the
        loop's thread and the CPU, while systemd's part is the longer one). As kick otherwise."""
        if self.loading_pending or self.stopping:
            return False
        try:
            return self._schedule()
        except Exception:  # noqa: BLE001 - a bug in a pass must not fail the submit that asked for it
            log.exception("scheduling pass failed; trying again on the next turn")
            self.kick()
            return False

    def begin_shutdown(self) -> None:
        """The daemon was told to stop: start nothing more; a start cut short leaves its job PENDING."""
        self.stopping = True

    def _schedule(self) -> bool:
        self._kick_scheduled = False
        if self.stopping or self._drain_blocks():
            return False
        started = self.scheduler.schedule(now_usec())
        for job, alloc in started:
            self._allocs[job.id] = alloc
            self._starting.add(job.id)
            self._spawn(self._launch(job, alloc))
        if started:
            self._manager_changed(RESOURCES)
        return bool(started)

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

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- starts -------------------------------------------------------------------

    async def _launch(self, job: Job, alloc: Allocation) -> None:
        job.assigned_cpus, job.assigned_gpus = list(alloc.cpus), list(alloc.gpus)
        grant, backs = None, self._origin_backs[job.origin_node]
        if job.origin_node and self.federation is not None:
            # A copy's grant is asked while its scope is made: the round trip to its origin overlaps the start.
            grant = asyncio.ensure_future(self.federation.may_start(job))
            grant.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            ready = _Ready(lambda: self._go(job, grant, ready), lambda: self._prepare_output(job))
            job.handle = await self.executor.start(job, alloc, ready)
        except Exception as e:
            self._starting.discard(job.id)
            if job.id not in self.jobs:  # its submission was never recorded
                self._release(job)
                self.kick()
                return
            self._release(job)
            flags = self._flags.get(job.id)
            if isinstance(e, _StartDeferred) and not (flags is not None and flags.cancel):
                log.info("%s; it waits", e)
                job.assigned_cpus, job.assigned_gpus = [], []
                self.executor.forget(job.id, job.restarts)
                if self._origin_backs[job.origin_node] != backs:
                    self._enqueue(job)  # its origin said to ask again while this start was on its way
                else:
                    self._park_for_origin(job)
                self.kick()
                return
            if flags is not None and flags.cancel:
                # Cancelled (or fenced) while starting: its program never ran, whatever stopped the start.
                log.info("job %d: cancelled while it was being started; its program did not run", job.id)
                self._end(job, *flags.stopped())
            elif self.stopping:
                # The daemon is stopping: systemd's SIGTERM to schedd.service's cgroup reached the gate
                # still waiting there. The program never ran; the job stays PENDING (its durable row)
                # and starts after the restart, as a start cut by a crash does.
                log.info("job %d: its start was cut by the daemon stopping; it starts after the restart", job.id)
                job.assigned_cpus, job.assigned_gpus = [], []
                self._wake_waiters(job)
                return
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
        self._set(job, JobState.RUNNING, "", START_FIELDS | {"handle"})
        self.store.save(job, urgent=False)
        self._arm_limit(job)
        flags = self._flags.get(job.id)
        if flags is not None and (flags.cancel or flags.requeue):
            try:
                await self.executor.stop(job)  # an executor that had let the program run before it returned
            except ExecutorError as e:
                log.error("job %d: cannot stop: %s", job.id, e)

    async def _go(self, job: Job, grant: asyncio.Future | None = None, ready: _Ready | None = None) -> None:
        """What the executor awaits before it lets the job's program run: its output directory is
        made, the record is durable and nobody cancelled the job meanwhile (the executor releases
        the program right after, with no await in between, so a cancel that came during the start
        never lets it run)."""
        if ready is not None:
            await ready.check()
        durable = self._durable.get(job.id)
        if durable is not None:
            await durable
        flags = self._flags.get(job.id)
        if flags is not None and flags.cancel:
            raise StartWithdrawn(f"job {job.id} was cancelled while it was being started")
        if job.origin_node:  # a copy run for another node: never without its origin's grant
            verdict = await grant if grant is not None else "later"
            flags = self._flags[job.id]
            if verdict in ("fenced", "failed"):
                flags.cancel = flags.fence = True
                flags.failed = verdict == "failed"
            if flags.cancel:
                raise StartWithdrawn(f"job {job.id} was cancelled while it was being started")
            if verdict == "later":
                raise _StartDeferred(f"job {job.id}: its origin {job.origin_node} cannot grant its start now")

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

    # -- ends ---------------------------------------------------------------------

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

    def _finish(self, job: Job, info: ExitInfo) -> None:
        flags = self._flags.pop(job.id, _Flags())
        self._disarm_limit(job.id)
        suspension = self._end_suspension(job)
        self._release(job)
        if info.error:
            log.warning("job %d: %s", job.id, info.error)
        if info.aborted and not flags.cancel:
            # Its program never started (the daemon died between scope and release): queue it again,
            # at the same run number (it did not run).
            log.info("job %d never started; queueing it again", job.id)
            self._set(job, JobState.PENDING, "", self._clear_run(job))
            self.store.save(job)
            self._make_eligible(job)
        elif flags.requeue:
            self._requeue(job)
        else:
            job.exit_code, job.cpu_time_usec, job.memory_peak = info.exit_code, info.cpu_usec, info.memory_peak
            state, reason = _outcome(info, flags, self._overdue(job))
            job.handle = None
            self._end(job, state, reason, END_FIELDS | suspension | {"handle"})
            fut = self.store.save(job, urgent=False)
            fut.add_done_callback(lambda f, jid=job.id, run=job.restarts:
                                  f.exception() or self.executor.forget(jid, run))
        _wake(flags.waiters)

    def _fail_lost(self, job: Job, waiters: list[asyncio.Future] | None = None) -> None:
        """The last resort when a job's end cannot be processed: FAILED lost, its resources
        back, its waiters woken; never left RUNNING holding CPUs, never a crash."""
        try:
            self._disarm_limit(job.id)
            self._unqueue(job)
            self._release(job)
            job.handle = None
            if not job.state.terminal:
                self._end(job, JobState.FAILED, Reason.LOST, {"handle"})
            self.store.save(job)
        except Exception:
            log.exception("job %d: cannot mark it failed", job.id)
        finally:
            _wake([*(waiters or ()), *self._flags.pop(job.id, _Flags()).waiters])

    def _wake_waiters(self, job: Job) -> None:
        _wake(self._flags.pop(job.id, _Flags()).waiters)

    def _release(self, job: Job) -> None:
        """Its allocation back to the ledger, and its place in a capped array to the next task."""
        self._leave_array(job)
        alloc = self._allocs.pop(job.id, None)
        if alloc is not None:
            self.ledger.release(alloc)
            self._manager_changed(RESOURCES)
            self._drain_tick()

