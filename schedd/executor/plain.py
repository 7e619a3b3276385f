"""The plain executor, for machines where no systemd is reachable.

Same gate, same statuses; the job gets its own session (setsid), its CPUs by
sched_setaffinity and its memory as RLIMIT_AS (a virtual-memory cap, weaker
than a cgroup's MemoryMax: it counts mappings, not resident pages). Stopping
signals the job's process group: a job that makes its own session escapes it,
which is exactly what cgroups exist to prevent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from pathlib import Path
from typing import Awaitable

from schedd.core.ledger import Allocation
from schedd.core.model import Job
from schedd.executor.exits import ExecutorError, ExitCallback, ExitInfo
from schedd.executor.gated import GatedExecutor

log = logging.getLogger(__name__)


class PlainExecutor(GatedExecutor):
    name = "plain"

    def __init__(self, on_exit: ExitCallback, *, status_dir: Path, kill_wait_usec: int) -> None:
        super().__init__(on_exit, status_dir=status_dir, accounting=False)
        self.kill_wait = kill_wait_usec / 1e6
        self._pids: dict[int, int] = {}
        self._ended: dict[int, asyncio.Event] = {}

    async def start(self, job: Job, alloc: Allocation, ready: Awaitable | None = None) -> dict:
        gate = self.gates.spawn(job, alloc.cpus)
        try:
            os.sched_setaffinity(gate.pid, alloc.cpus)
            resource.prlimit(gate.pid, resource.RLIMIT_AS, (alloc.memory, alloc.memory))
            if ready is not None:
                await ready
            gate.release()
        except BaseException as e:
            gate.abort()
            self.gates.start_done()
            if isinstance(e, OSError):
                raise ExecutorError(f"cannot start job {job.id}: {e}") from e
            raise
        self._track(job.id, gate.pid, None, job.restarts)
        return gate.handle()

    def _track(self, job_id: int, pid: int, start: int | None, run: int) -> bool:
        if not self.gates.watch(job_id, pid, start, self._gate_ended, run):
            return False
        self._pids[job_id] = pid
        self._ended[job_id] = asyncio.Event()
        return True

    def _gate_ended(self, job_id: int, info: ExitInfo) -> None:
        pid = self._pids.pop(job_id, None)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)  # whatever the job left in its session
            except (ProcessLookupError, PermissionError):
                pass
        ev = self._ended.pop(job_id, None)
        if ev is not None:
            ev.set()
        self.on_exit(job_id, info)

    async def stop(self, job: Job) -> None:
        pid, ev = self._pids.get(job.id), self._ended.get(job.id)
        if pid is None or ev is None:
            return
        await self.signal(job, signal.SIGTERM)
        try:
            await asyncio.wait_for(ev.wait(), self.kill_wait)
        except asyncio.TimeoutError:
            await self.signal(job, signal.SIGKILL)

    async def signal(self, job: Job, signo: int) -> None:
        pid = self._pids.get(job.id)
        if pid is None:
            return
        try:
            os.killpg(pid, signo)
        except ProcessLookupError:
            pass
        except PermissionError as e:
            raise ExecutorError(f"cannot signal job {job.id}: {e}") from e

    async def recover(self, job: Job) -> bool:
        h = job.handle or {}
        if "pid" in h and self._track(job.id, h["pid"], h.get("start"), job.restarts):
            return True
        self.on_exit(job.id, self.gates.read_status(job.id, run=job.restarts))
        return False
