"""The executor seam (Nomad's task-driver interface): start, stop, exit events, recover.

Nothing outside ``schedd.executor`` knows which implementation runs. This module imports no
executor: the ones that run jobs under a gate share `schedd.executor.gated`, the fake one
(`schedd.executor.fake`) implements the seam alone.
"""

from __future__ import annotations

import abc
import signal as _signal
from typing import Awaitable

from schedd.core.ledger import Allocation
from schedd.core.model import Job, JobSpec
from schedd.errors import InvalidArgument
from schedd.executor.exits import ExecutorError, ExitCallback, ExitInfo


class Executor(abc.ABC):
    """One way of running jobs. ``on_exit(job_id, info)`` is called once per started job."""

    name: str = "?"
    # What this node can run beyond plain commands, advertised to peers ("container": Container jobs).
    features: frozenset[str] = frozenset()

    def __init__(self, on_exit: ExitCallback) -> None:
        self.on_exit = on_exit

    async def check_specs(self, specs: list[JobSpec]) -> None:
        """At submit, what only the executor can tell about jobs that will run here (InvalidArgument if
        one cannot run): an executor without a container runtime refuses every Container."""
        for s in specs:
            if s.container:
                raise InvalidArgument(f"Container: this node ({self.name} executor) has no container runtime; "
                                      f"it cannot run image {s.container!r} (install podman, or submit to a "
                                      "node that can with Node=any)")

    async def open(self) -> None:
        """Connect to whatever runs the jobs."""

    async def close(self) -> None:
        """Stop watching (jobs keep running: they are re-adopted by the next daemon)."""

    @abc.abstractmethod
    async def start(self, job: Job, alloc: Allocation, ready: Awaitable | None = None) -> dict:
        """Start the job inside its allocation; returns JSON-able recovery data (the handle).

        Everything up to letting the job's program run may overlap with `ready`
        (the job's record being committed); the program runs only once it is done. Where `ready`
        has a prepare() (the engine's local work for the start), an executor may call it early,
        while it waits on something else; awaiting `ready` does it otherwise.
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

    async def find_unrecorded(self, job_id: int) -> tuple[dict, list[int]] | None:
        """A job found running without a record of its start: (its handle, the CPUs it is pinned to)."""
        return None

    def recorded_exit(self, job: Job) -> ExitInfo | None:
        """How the job's current run ended, if the executor recorded it (it ran while its RUNNING record was
        still in flight); never an earlier run's end."""
        return None

    def forget(self, job_id: int, run: int = 0) -> None:
        """That run's end is durable (or superseded by a requeue): drop what the executor kept to report it."""
