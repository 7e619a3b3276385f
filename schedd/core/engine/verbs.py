"""The user's verbs on a job: cancel, hold, release, suspend, resume, requeue.

Each one checks who asks (access.py), hands a job placed on a peer to the federation, checks
the state it acts from, and then makes the transition or asks the executor. A verb that must
wait for the job's processes to end (cancel or requeue of a running job) sets a flag the end
acts on (running.py) and returns once the end is recorded.
"""

from __future__ import annotations

import asyncio

from schedd.core.engine.access import Caller
from schedd.core.model import Job, JobState, Reason, now_usec
from schedd.errors import InvalidState, SchedError
from schedd.executor import ExecutorError


class Verbs:
    """The verbs; they read the table, the starting set and the flags, and write through _set."""

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
        job.spec.hold = True
        self._set(job, JobState.HELD, Reason.HELD, {"spec.hold"})
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
        self._set(job, JobState.PENDING, "", {"spec.hold"})
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
        self._set(job, JobState.SUSPENDED, "", {"suspend_time"})
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
        self._set(job, JobState.RUNNING, "", self._end_suspension(job))
        await self.store.save(job)
        self._arm_limit(job)

    @staticmethod
    def _end_suspension(job: Job) -> frozenset[str]:
        """Add the suspension that is ending to the run's suspended time; the fields that changed."""
        if not job.suspend_time:
            return frozenset()
        job.suspended_usec += max(0, now_usec() - job.suspend_time)
        job.suspend_time = 0
        return frozenset({"suspended_usec", "suspend_time"})

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
        if job.id not in self.jobs:  # archived: back into memory and on the bus
            self._insert(job)
            self._announce(job)
        self._requeue(job)
        await self.store.drain(job.id)

    def _requeue(self, job: Job) -> None:
        """Back to PENDING as its next run (restarts + 1): see recover() for why the count names the run."""
        last_run = job.restarts
        job.restarts += 1
        self._set(job, JobState.PENDING, Reason.REQUEUED, self._clear_run(job) | {"restarts"})
        fut = self.store.save(job)
        fut.add_done_callback(lambda f, jid=job.id: f.exception() or self.executor.forget(jid, last_run))
        self._make_eligible(job)
        self.kick()
