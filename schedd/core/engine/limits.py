"""Time limits (RuntimeMaxUSec): one loop timer per running job.

The engine keeps each job's clock, not systemd: a scope's RuntimeMaxUSec cannot be changed
once it runs (systemd 252 refuses), and a suspended job's limit must pause (Job.deadline
leaves out the time suspended). A timer that fires marks the job `timeout` and stops it; the
end is then recorded as FAILED timeout (running.py).
"""

from __future__ import annotations

import asyncio
import logging

from schedd.core.model import Job, JobState, now_usec
from schedd.executor import Executor, ExecutorError
from schedd.protocol import format_duration

log = logging.getLogger("schedd.core.engine")


class TimeLimits:
    """The armed timers, by job id."""

    jobs: dict[int, Job]
    executor: Executor | None

    def _init_limits(self) -> None:
        self._limit_timers: dict[int, asyncio.TimerHandle] = {}

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

    @staticmethod
    def _overdue(job: Job) -> bool:
        """Past its time limit: a kill we did not see coming (the daemon was down when it hit)."""
        deadline = job.deadline()
        return deadline is not None and deadline <= now_usec()
