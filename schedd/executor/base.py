"""The executor seam (Nomad's task-driver interface): start, stop, exit events, recover.

Nothing outside ``schedd.executor`` knows which implementation runs. Both
implementations start the job through the same gate (``gate.c``, or its twin ``gate.pl``), so exit
statuses, accounting and setup errors look the same whichever one runs.
"""

from __future__ import annotations

import abc
import os
import signal as _signal
from dataclasses import dataclass
from typing import Awaitable, Callable

from schedd.core.ledger import Allocation
from schedd.core.model import Job


class ExecutorError(Exception):
    """The job could not be started (the caller marks it failed and logs why)."""


class StartWithdrawn(Exception):
    """Raised by the awaitable start() is given: the job must not run after all (cancelled while it
    was being started). The executor undoes what it did so far and lets it through."""


@dataclass(slots=True)
class ExitInfo:
    """How a job's main process ended, as recorded inside its scope."""

    exit_code: int = 0  # the exit code, or 128+N when killed by signal N (the shell's convention)
    signal: int = 0
    oom_killed: bool = False
    cpu_usec: int = 0
    memory_peak: int = 0
    error: str = ""  # a setup failure (chdir, open output, exec), in words
    lost: bool = False  # no status was recorded (the supervisor itself was killed)
    stragglers: int = 0  # processes left in the job's cgroup after its main process ended
    aborted: bool = False  # the program never started (the gate was never released): safe to run again
    malformed: str = ""  # the status file is not one a gate writes (what is wrong, in words): the result is lost



ExitCallback = Callable[[int, ExitInfo], None]


class Executor(abc.ABC):
    """One way of running jobs. ``on_exit(job_id, info)`` is called once per started job."""

    name: str = "?"

    def __init__(self, on_exit: ExitCallback) -> None:
        self.on_exit = on_exit

    async def open(self) -> None:
        """Connect to whatever runs the jobs."""

    async def close(self) -> None:
        """Stop watching (jobs keep running: they are re-adopted by the next daemon)."""

    @abc.abstractmethod
    async def start(self, job: Job, alloc: Allocation, ready: Awaitable | None = None) -> dict:
        """Start the job inside its allocation; returns JSON-able recovery data (the handle).

        Everything up to letting the job's program run may overlap with `ready`
        (the job's record being committed); the program runs only once it is done.
        """

    @abc.abstractmethod
    async def stop(self, job: Job) -> None:
        """Kill every process of the job; returns once they are gone or the kill is under way."""

    @abc.abstractmethod
    async def recover(self, job: Job) -> bool:
        """Re-attach to a job that kept running while the daemon was down.

        Returns True if it still runs (its exit will be reported later), or False
        after reporting through on_exit how it ended meanwhile.
        """

    async def signal(self, job: Job, signo: int) -> None:
        """Send a signal to every process of the job (suspend/resume)."""
        raise ExecutorError(f"{self.name} executor cannot signal jobs")

    async def suspend(self, job: Job) -> None:
        """Stop every process of the job where it stands, keeping its memory (Slurm's suspend: SIGSTOP)."""
        await self.signal(job, _signal.SIGSTOP)

    async def resume(self, job: Job) -> None:
        await self.signal(job, _signal.SIGCONT)

    async def orphans(self, known: set[int]) -> list[int]:
        """Ids of job units running that the daemon does not track as active."""
        return []

    async def reap_orphan(self, job_id: int) -> None:
        """Stop a job unit the daemon does not track."""

    async def adopt_pids(self, job_id: int) -> list[int]:
        """Processes of a job unit found running without a record of its start."""
        return []

    async def find_unrecorded(self, job_id: int) -> tuple[dict, list[int]] | None:
        """A job found running without a record of its start: (its handle, the CPUs its gate is pinned to)."""
        from schedd.executor.gate import proc_start_time

        starts = sorted((proc_start_time(p) or 0, p) for p in await self.adopt_pids(job_id))
        if not starts:
            return None
        start, pid = starts[0]  # the gate entered the scope first
        try:
            cpus = sorted(os.sched_getaffinity(pid))
        except OSError:
            cpus = []
        return {"pid": pid, "start": start}, cpus

    def recorded_exit(self, job: Job) -> ExitInfo | None:
        """How the job's current run ended, if its gate recorded it (it ran while its RUNNING record was
        still in flight); never an earlier run's end: each run has its own status file."""
        gates = getattr(self, "gates", None)
        if gates is None or not gates.status_path(job.id, job.restarts).exists():
            return None
        info = gates.read_status(job.id, run=job.restarts)
        return None if info.lost and not info.malformed else info

    def forget(self, job_id: int, run: int = 0) -> None:
        """That run's end is durable (or superseded by a requeue): drop what the executor kept to report it."""
