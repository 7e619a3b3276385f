"""An in-memory executor (Nomad's ``drivers/mock``): runs nothing, records every call, and lets a test
decide when and how each job ends, so the engine's run paths are tested without processes or root.

A `FakeHost` is the machine the jobs "run" on; it outlives an executor, so a test can shut an
engine down, change what happened meanwhile (a job ended, a unit appeared) and recover a new
engine on the same host. A `FakeExecutor` is one daemon's view of that host.

    host = FakeHost()
    ex = FakeExecutor(engine.on_exit, host)
    ex.delay_starts()          # starts wait in the executor until ex.let_start(job_id)
    ex.exit(job_id, 3)         # the job's program exits with status 3
    ex.kill(job_id, SIGKILL)   # ... or is killed, OOM-killed (ex.oom), lost (ex.lose), ...
    ex.gate_fails(job_id)      # ... or its supervisor fails before the program runs

What the fake does on its own, like a real executor: `stop` ends a running job as killed by
SIGTERM (soon after, from the event loop) unless told to ignore stops; SIGSTOP/SIGCONT mark a
job suspended/resumed; `recover` re-attaches to a job whose unit still runs, or reports how it
ended while the daemon was down (lost, when nothing was recorded).
"""

from __future__ import annotations

import asyncio
import signal as _signal
from dataclasses import dataclass, field
from typing import Awaitable

from schedd.core.ledger import Allocation
from schedd.core.model import Job
from schedd.executor.base import Executor
from schedd.executor.exits import ExecutorError, ExitCallback, ExitInfo


@dataclass(slots=True)
class Unit:
    """A job's processes as the host sees them."""

    job_id: int
    cpus: tuple[int, ...] = ()
    handle: dict = field(default_factory=dict)
    suspended: bool = False
    signals: list[int] = field(default_factory=list)
    run: int = 0  # the job's restart count when it started: its exit is recorded for that run only


@dataclass(frozen=True, slots=True)
class Call:
    """One call the engine made: the method, the job it was about (0: none), and the rest of its arguments."""

    name: str
    job_id: int = 0
    args: tuple = ()


class FakeHost:
    """What survives a daemon restart: the units that run, and the exits recorded for jobs."""

    def __init__(self) -> None:
        self.units: dict[int, Unit] = {}
        # job id -> (run, how it ended), until the daemon forgets it; like the gates' exits/<id>.<run>,
        # a record belongs to one run and a requeued job never reads its previous run's.
        self.recorded: dict[int, tuple[int, ExitInfo]] = {}
        self.ran: list[int] = []  # job ids, each time the job's program was let run
        self.max_running = 0  # the most units that ever ran at once
        self._next_pid = 1000

    def add_unit(self, job_id: int, cpus: tuple[int, ...] | list[int] = (), run: int = 0) -> Unit:
        """A unit runs for job_id without the daemon having started it (a crash before its record, a stranger)."""
        self._next_pid += 1
        unit = Unit(job_id, tuple(cpus), {"pid": self._next_pid, "fake": True}, run=run)
        self.units[job_id] = unit
        self.max_running = max(self.max_running, len(self.units))
        return unit

    def end(self, job_id: int, info: ExitInfo) -> None:
        """The job's processes end while no daemon watches: its exit is recorded for the next one."""
        unit = self.units.pop(job_id, None)
        self.recorded[job_id] = (unit.run if unit is not None else 0, info)

    def record_of(self, job: Job) -> ExitInfo | None:
        """The exit recorded for the job's current run, if any."""
        entry = self.recorded.get(job.id)
        return entry[1] if entry is not None and entry[0] == job.restarts else None


class FakeExecutor(Executor):
    """One daemon's executor on a FakeHost; see the module docstring."""

    name = "fake"

    def __init__(self, on_exit: ExitCallback, host: FakeHost | None = None) -> None:
        super().__init__(on_exit)
        self.host = host if host is not None else FakeHost()
        self.calls: list[Call] = []
        self.watched: set[int] = set()  # units whose end this executor reports
        self.stop_ends_job = True  # False: stop() is recorded only (a job that ignores SIGTERM)
        self._delay_all = False
        self._delayed: set[int] = set()
        self._gates: dict[int, asyncio.Event] = {}  # starts waiting for let_start
        self._fail_start: dict[int | None, Exception] = {}  # None: the next start, whichever job
        self._fail_stop: dict[int, Exception] = {}
        self._fail_signal: dict[int, Exception] = {}
        self._fail_recover: dict[int, Exception] = {}
        self._crashed = False
        self._in_start: set[int] = set()

    # -- what the test inspects -------------------------------------------------------

    def called(self, name: str) -> list[int]:
        """Job ids of the calls named `name`, in order."""
        return [c.job_id for c in self.calls if c.name == name]

    def running(self) -> list[int]:
        return sorted(self.host.units)

    def starting(self) -> list[int]:
        """Jobs whose start waits for let_start."""
        return sorted(j for j, ev in self._gates.items() if not ev.is_set())

    def in_start(self) -> list[int]:
        """Jobs whose start was called and has not returned or raised yet (delayed or not)."""
        return sorted(self._in_start)

    # -- what the test decides --------------------------------------------------------

    def delay_starts(self, *job_ids: int) -> None:
        """Starts of these jobs (of every job, without ids) wait until let_start; the program has not run."""
        if job_ids:
            self._delayed.update(job_ids)
        else:
            self._delay_all = True

    def let_start(self, *job_ids: int) -> None:
        """Let delayed starts go on (all of them, without ids); later starts are no longer delayed."""
        ids = job_ids or tuple(self._gates)
        for jid in ids:
            self._delayed.discard(jid)
            ev = self._gates.get(jid)
            if ev is not None:
                ev.set()
        if not job_ids:
            self._delay_all = False

    def fail_start(self, job_id: int | None = None, error: Exception | None = None) -> None:
        """The start of job_id (or the next start) raises, as when a scope cannot be created."""
        self._fail_start[job_id] = error or ExecutorError("fake: cannot start the job")

    def fail_stop(self, job_id: int, error: Exception | None = None) -> None:
        """Stopping job_id raises (until cleared with clear_failures)."""
        self._fail_stop[job_id] = error or ExecutorError(f"fake: cannot stop job {job_id}")

    def fail_signal(self, job_id: int, error: Exception | None = None) -> None:
        self._fail_signal[job_id] = error or ExecutorError(f"fake: cannot signal job {job_id}")

    def fail_recover(self, job_id: int, error: Exception | None = None) -> None:
        """Looking at job_id's unit at recovery raises (systemd does not answer about it)."""
        self._fail_recover[job_id] = error or RuntimeError(f"fake: the unit of job {job_id} cannot be looked at")

    def crash(self) -> None:
        """The daemon dies: starts under way never finish (no unit, no program), nothing more is reported."""
        self._crashed = True
        self.watched.clear()
        for ev in self._gates.values():
            ev.set()

    def clear_failures(self) -> None:
        self._fail_start.clear()
        self._fail_stop.clear()
        self._fail_signal.clear()
        self._fail_recover.clear()

    def end(self, job_id: int, info: ExitInfo) -> None:
        """The job's main process ends as `info` says; reported to the engine now."""
        if job_id not in self.host.units:
            raise AssertionError(f"fake: job {job_id} is not running")
        self.host.end(job_id, info)
        self.watched.discard(job_id)
        self.on_exit(job_id, info)

    def exit(self, job_id: int, code: int = 0, *, cpu_usec: int = 0, memory_peak: int = 0) -> None:
        self.end(job_id, ExitInfo(exit_code=code, cpu_usec=cpu_usec, memory_peak=memory_peak))

    def kill(self, job_id: int, signo: int = _signal.SIGKILL) -> None:
        self.end(job_id, ExitInfo(exit_code=128 + signo, signal=signo))

    def oom(self, job_id: int) -> None:
        self.end(job_id, ExitInfo(exit_code=128 + _signal.SIGKILL, signal=_signal.SIGKILL, oom_killed=True))

    def lose(self, job_id: int) -> None:
        """The supervisor itself vanished: nothing was recorded."""
        self.end(job_id, ExitInfo(lost=True))

    def abort(self, job_id: int) -> None:
        """The program never started (the gate was never released): safe to run again."""
        self.end(job_id, ExitInfo(lost=True, aborted=True))

    def gate_fails(self, job_id: int, code: int = 123, error: str = "gate could not fork") -> None:
        """The supervisor failed before the program ran or its end was recorded; `code` is its own exit code."""
        self.end(job_id, ExitInfo(exit_code=code, lost=True, gate_failed=True, error=error))

    def malformed(self, job_id: int, why: str = "not a status file a gate writes") -> None:
        self.end(job_id, ExitInfo(lost=True, malformed=why))

    # -- the seam ---------------------------------------------------------------------

    def _record(self, name: str, job_id: int = 0, *args) -> None:
        self.calls.append(Call(name, job_id, args))

    async def open(self) -> None:
        self._record("open")

    async def close(self) -> None:
        """Stop watching; the units go on running on the host (the next daemon re-adopts them)."""
        self._record("close")
        self.watched.clear()

    async def start(self, job: Job, alloc: Allocation, ready: Awaitable | None = None) -> dict:
        self._record("start", job.id, alloc)
        self._in_start.add(job.id)
        try:
            return await self._start(job, alloc, ready)
        finally:
            self._in_start.discard(job.id)

    async def _start(self, job: Job, alloc: Allocation, ready: Awaitable | None) -> dict:
        if self._delay_all or job.id in self._delayed:
            ev = self._gates[job.id] = asyncio.Event()
            await ev.wait()
            del self._gates[job.id]
        if self._crashed:
            raise asyncio.CancelledError  # the process is gone: no code of it runs on
        err = self._fail_start.pop(job.id, None) or self._fail_start.pop(None, None)
        if err is not None:
            raise err  # after any delay: a slow start that fails in the end
        if ready is not None:
            await ready  # the record is durable: only now may the program run
        unit = self.host.add_unit(job.id, alloc.cpus, run=job.restarts)
        self.host.ran.append(job.id)
        self.watched.add(job.id)
        return dict(unit.handle)

    async def stop(self, job: Job) -> None:
        self._record("stop", job.id)
        err = self._fail_stop.get(job.id)
        if err is not None:
            raise err
        if self.stop_ends_job and job.id in self.host.units:
            self._end_soon(job.id, _signal.SIGTERM)

    async def signal(self, job: Job, signo: int) -> None:
        self._record("signal", job.id, signo)
        err = self._fail_signal.get(job.id)
        if err is not None:
            raise err
        unit = self.host.units.get(job.id)
        if unit is None:
            return
        unit.signals.append(signo)
        if signo == _signal.SIGSTOP:
            unit.suspended = True
        elif signo == _signal.SIGCONT:
            unit.suspended = False
        elif signo in (_signal.SIGTERM, _signal.SIGKILL, _signal.SIGINT):
            self._end_soon(job.id, signo)

    def _end_soon(self, job_id: int, signo: int) -> None:
        """Killed by signo, reported from the event loop (as a real exit is: after the call that caused it)."""
        def report() -> None:
            if job_id in self.host.units and job_id in self.watched:
                self.kill(job_id, signo)

        asyncio.get_running_loop().call_soon(report)

    async def recover(self, job: Job) -> bool:
        self._record("recover", job.id)
        err = self._fail_recover.get(job.id)
        if err is not None:
            raise err
        if job.id in self.host.units:
            self.watched.add(job.id)
            return True
        self.on_exit(job.id, self.host.record_of(job) or ExitInfo(lost=True))
        return False

    async def orphans(self, known: set[int]) -> list[int]:
        self._record("orphans", 0, frozenset(known))
        return sorted(j for j in self.host.units if j not in known)

    async def reap_orphan(self, job_id: int) -> None:
        self._record("reap_orphan", job_id)
        self.host.units.pop(job_id, None)

    async def find_unrecorded(self, job_id: int) -> tuple[dict, list[int]] | None:
        self._record("find_unrecorded", job_id)
        unit = self.host.units.get(job_id)
        if unit is None:
            return None
        return dict(unit.handle), list(unit.cpus)

    def recorded_exit(self, job: Job) -> ExitInfo | None:
        self._record("recorded_exit", job.id)
        info = self.host.record_of(job)
        return None if info is None or (info.lost and not info.malformed) else info

    def forget(self, job_id: int, run: int = 0) -> None:
        self._record("forget", job_id, run)
        entry = self.host.recorded.get(job_id)
        if entry is not None and entry[0] == run:
            del self.host.recorded[job_id]
