"""What the executors that run each job under a gate (systemd, plain) share: the gate's bookkeeping.

Both start the job through the same gate (see `schedd.executor.gate`), so exit statuses,
accounting and setup errors look the same whichever one runs. The gate records each run's end in
its own status file: that file answers recorded_exit after a restart and is dropped by forget once
the end is durable; a job found running without a record is adopted from its gate's process.
"""

from __future__ import annotations

import os
from pathlib import Path

from schedd.core.model import Job
from schedd.executor.base import Executor
from schedd.executor.exits import ExitCallback, ExitInfo
from schedd.executor.gate import GateRunner, proc_start_time


class GatedExecutor(Executor):
    """An executor whose jobs run under a gate; `gates` spawns and watches them."""

    def __init__(self, on_exit: ExitCallback, *, status_dir: Path, accounting: bool) -> None:
        super().__init__(on_exit)
        self.gates = GateRunner(status_dir, accounting=accounting)

    async def open(self) -> None:
        self.gates.open_pool()

    async def close(self) -> None:
        self.gates.unwatch_all()
        self.gates.close_pool()

    async def adopt_pids(self, job_id: int) -> list[int]:
        """Processes of a job unit found running without a record of its start."""
        return []

    async def find_unrecorded(self, job_id: int) -> tuple[dict, list[int]] | None:
        """A job found running without a record of its start: (its handle, the CPUs its gate is pinned to)."""
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
        if not self.gates.status_path(job.id, job.restarts).exists():
            return None
        info = self.gates.read_status(job.id, run=job.restarts)
        return None if info.lost and not info.malformed else info

    def forget(self, job_id: int, run: int = 0) -> None:
        self.gates.forget(job_id, run)
