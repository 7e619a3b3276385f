"""The bulk of a long queue, loaded after start-up.

Restart reads what the daemon needs before it answers (recovery.py): running jobs, recently
finished ones, and queued jobs the federation or an array cap tracks. The other queued jobs
(store.DEFERRED_SQL: a million held tasks, say) are read afterwards, in slices on the loop,
pending ones first in the scheduler's order. Until a job is loaded the store answers for it:
its row is exact, because nothing changes a deferred job without loading it first (`get`
loads it), so GetJob, a job's path and ListJobs read it there, and the Manager's counts and
the per-user caps include it. The scheduler starts nothing until every pending job is loaded:
no job overtakes an older one of its priority that is still on disk.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter

from schedd.core.model import Job, JobState
from schedd.core.quota import Quotas
from schedd.core.store import Store, row_to_job

log = logging.getLogger("schedd.core.engine")

_COMMAND, _ENVIRONMENT, _UID = 2, 17, 3  # columns of a row (store.COLUMNS) deferred_bytes reads


def deferred_bytes(row: tuple) -> int:
    """What a deferred job holds of its owner's byte cap until it is loaded: the length of its
    argv and environment as JSON, never less than the exact count its loading puts in place."""
    return len(row[_COMMAND]) + len(row[_ENVIRONMENT])


class Loading:
    """The deferred jobs: how many wait on disk, by state, and the task that loads them."""

    store: Store
    quotas: Quotas
    jobs: dict[int, Job]
    # Rows per turn of the loop: ~15 ms of SQLite and Python (read on the loop: a reading thread
    # would fight it for the GIL and stall it longer), what a caller may wait behind it.
    LOAD_ROWS = 500

    def _init_loading(self) -> None:
        self._deferred: Counter[JobState] = Counter()
        self._loader: asyncio.Task | None = None
        self.loading_pending = False  # pending jobs are still on disk: the scheduler waits for them

    def _count_deferred(self) -> None:
        """Count what stays on disk (one GROUP BY), charged to its owners' caps as a reservation
        that each job's loading gives back."""
        for state, uid, n, nbytes in self.store.deferred_usage():
            self._deferred[JobState[state]] += n
            r = self.quotas.reserved[uid]
            r.jobs += n
            r.bytes += nbytes
        self.loading_pending = self._deferred[JobState.PENDING] > 0

    def _start_loading(self) -> None:
        if +self._deferred:
            self._loader = asyncio.get_running_loop().create_task(self._load_deferred())

    async def _load_deferred(self) -> None:
        try:
            for state in (JobState.PENDING, JobState.HELD):
                if self._deferred[state]:
                    await self._load_state(state)
                if state == JobState.PENDING:
                    self.loading_pending = False
                    self.kick()  # before the held ones: they cannot run anyway
        except Exception:
            log.exception("loading the queue failed: %s jobs stay on disk until the next start", self._deferred.total())
        finally:
            self.loading_pending = False  # a failed load must not stop the scheduler for the loaded jobs
            self.kick()
        gc.freeze()  # as the daemon does with what recovery loaded
        log.info("loaded the deferred queue: %d jobs in memory", len(self.jobs))

    async def _load_state(self, state: JobState) -> None:
        reader = self.store.deferred_reader(state.value)
        try:
            while rows := reader.fetch(self.LOAD_ROWS):
                gc.disable()  # loading frees nothing: a collection would walk it all for nothing
                try:
                    for row in rows:
                        if row[0] not in self.jobs:
                            self._adopt_deferred(row, row_to_job(row))
                finally:
                    gc.enable()
                await asyncio.sleep(0)
        finally:
            reader.close()
        if self._deferred[state]:
            log.error("%d %s jobs counted on disk at start were not found there", self._deferred[state], state.value)
            self._deferred[state] = 0

    def _load_now(self, job_id: int, queue: bool = True) -> Job | None:
        """A job not in memory, from the store; a deferred one becomes live here, before anyone
        reads or changes it (queue=False: recovery adopts its running unit instead of queueing it)."""
        row = self.store.get_row(job_id)
        if row is None:
            return None
        job = row_to_job(row)
        if job.state.queued and self._deferred[job.state] > 0 and job_id not in self.jobs:
            self._adopt_deferred(row, job, queue)
        return job

    def _adopt_deferred(self, row: tuple, job: Job, queue: bool = True) -> None:
        self._deferred[job.state] -= 1
        self.quotas.unreserve(job.uid, 1, deferred_bytes(row))
        self._insert(job)
        if queue and job.state == JobState.PENDING:
            self._revive_pending(job)
