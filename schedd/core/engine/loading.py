"""Queued jobs kept on disk: the bulk of a long queue, out of memory until needed.

A held job waits for its owner and a pending one for the scheduler; only the second needs
to be in memory. So held jobs of the plain kind (store.DEFERRED_SQL: no federation, no array
cap) leave memory once durable (a million held tasks cost their rows, not a million objects),
and restart reads what the daemon needs before it answers (recovery.py) -- running jobs,
recently finished ones, the queued jobs the federation or an array cap tracks -- then the
plain pending ones in slices on the loop. The scheduler starts nothing until every pending
job is loaded: no job overtakes an older one of its priority that is still on disk.

A job on disk is exact in the store, because nothing changes it without loading it first
(`_load_now`, from every verb): GetJob, its path and ListJobs read it there, and the
Manager's counts and the per-user caps include it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter

from schedd.core.model import Job, JobState
from schedd.core.quota import Quotas
from schedd.core.store import COLUMNS, Store, row_to_job

log = logging.getLogger("schedd.core.engine")

_COMMAND, _ENVIRONMENT, _EXEC_SIZE = (COLUMNS.index(c) for c in ("command", "environment", "exec_size"))


def deferred_bytes(row: tuple) -> int:
    """What a job on disk holds of its owner's byte cap (store.DISK_BYTES_SQL, from its row)."""
    return row[_EXEC_SIZE] or len(row[_COMMAND]) + len(row[_ENVIRONMENT])


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
        self._deferred_owners: Counter[tuple[JobState, str]] = Counter()
        self._loader: asyncio.Task | None = None
        self.loading_pending = False  # pending jobs are still on disk: the scheduler waits for them

    def _count_deferred(self) -> None:
        """Count what stays on disk (one GROUP BY), charged to its owners' caps until loaded."""
        for state, uid, owner, n, nbytes in self.store.deferred_usage():
            self._deferred[JobState[state]] += n
            self._deferred_owners[JobState[state], owner] += n
            self.quotas.to_disk(uid, n, nbytes)
        self.loading_pending = self._deferred[JobState.PENDING] > 0

    async def loaded(self) -> None:
        """Every pending job is in memory (at once but while a start-up's loading runs)."""
        if self._loader is not None:
            await asyncio.shield(self._loader)

    def _start_loading(self) -> None:
        if self.loading_pending:
            self._loader = asyncio.get_running_loop().create_task(self._load_deferred())

    async def _load_deferred(self) -> None:
        try:
            if self._deferred[JobState.PENDING]:
                await self._load_state(JobState.PENDING)
                gc.freeze()  # as the daemon does with what recovery loaded
                log.info("loaded the queue: %d jobs in memory, %d held on disk",
                         len(self.jobs), self._deferred[JobState.HELD])
        except Exception:
            log.exception("loading the queue failed: %d pending jobs stay on disk until the next start",
                          self._deferred[JobState.PENDING])
        finally:
            self.loading_pending = False  # a failed load must not stop the scheduler for the loaded jobs
            self.kick()

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
            for key in [k for k in self._deferred_owners if k[0] == state]:
                del self._deferred_owners[key]

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

    def on_disk(self, job_id: int) -> Job | None:
        """The job if it is live but kept on disk (its path answers from this)."""
        if not +self._deferred or job_id in self.jobs:
            return None
        job = self.store.get(job_id)
        return job if job is not None and job.state.queued else None

    def on_disk_count(self) -> int:
        return sum(n for n in self._deferred.values() if n > 0)

    def on_disk_jobs(self, after: int, limit: int) -> list[Job]:
        """Live jobs kept on disk, by id after `after`: for what lists every live job."""
        states = self._deferred_states()
        return self.store.query(states, None, after, limit, exclude=self.jobs) if states else []

    def on_disk_ids(self) -> list[int]:
        states = self._deferred_states()
        return self.store.live_ids(states, exclude=self.jobs) if states else []

    def on_disk_by_owner(self) -> Counter[tuple[JobState, str]]:
        """(state, owner name) -> jobs on disk: what the metrics add to the jobs in memory."""
        return +self._deferred_owners

    def _deferred_states(self) -> list[str]:
        return [s.value for s, n in self._deferred.items() if n > 0]

    def _adopt_deferred(self, row: tuple, job: Job, queue: bool = True) -> None:
        self._deferred[job.state] -= 1
        self._deferred_owners[job.state, job.spec.owner] -= 1
        self.quotas.from_disk(job.uid, 1, deferred_bytes(row))
        self._insert(job)
        for l in self.listeners:
            l.job_loaded(job)
        if queue and job.state == JobState.PENDING:
            self._revive_pending(job)

    def _unload_held(self, jobs: list[Job], rows: list[tuple]) -> None:
        """Held jobs just made durable leave memory (rows: theirs, as written)."""
        for job, row in zip(jobs, rows):
            if (job.state == JobState.HELD and not job.origin_node and not job.remote_node and not job.spec.node
                    and not (job.array_job_id and job.spec.array_max_running) and job.id in self.jobs):
                self._remove(job)
                self._deferred[JobState.HELD] += 1
                self._deferred_owners[JobState.HELD, job.spec.owner] += 1
                self.quotas.to_disk(job.uid, 1, deferred_bytes(row))
                for l in self.listeners:
                    l.job_unloaded(job)
