"""Start-up: the store's live jobs back into memory, and what kept running re-adopted.

Runs once, before the bus name is taken (no one calls in meanwhile). It rebuilds the ledger
from the recorded allocations, asks the executor which runs survived, stops units nobody
owns, and reads how the runs that ended while the daemon was down ended.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os

from schedd import unit_name
from schedd.core.ledger import Allocation, LedgerConflict
from schedd.core.model import Job, JobState, now_usec
from schedd.executor import Executor

log = logging.getLogger("schedd.core.engine")


class Recovery:
    async def recover(self, executor: Executor) -> None:
        """Load the store and re-adopt what kept running; before the bus name is taken.

        A PENDING job may have run meanwhile: its RUNNING row is saved lazily (urgent=False),
        so the daemon can die after the gate was released but before that row landed. Its
        gate's status file then tells how the run ended. Each run has its own status file,
        named by the job's restart count (the gates' status_path): a requeue bumps the count
        in the same row that makes the job PENDING, so whatever the moment of a crash, the
        PENDING row names a file only its next run writes. The alternative, removing the old
        file before the PENDING row commits, leaves a window (file gone, RUNNING row still
        the durable one: the run would read as lost); this one has none. Every way back to
        PENDING follows from it: Requeue and a node failure elsewhere (requeue_away) bump
        the count; a run that never started (aborted) keeps it, and its file says aborted,
        which queues it again; place_here gives back a job that has not run here at its count.

        The state directory and jobs/ are 0711: users traverse to their own jobs/<id>
        (0700, theirs) but list nothing; the database and exits/ are root's alone.
        """
        self.executor = executor
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config.state_dir, 0o711)
        os.chmod(self.jobs_dir, 0o711)
        self._next_id = self.store.max_id() + 1
        self._purged_max_id = self.store.purged_max_id()
        since = now_usec() - self.config.finished_object_ttl_usec
        adopted = lost = 0
        # Loading makes ~10 objects per job and frees none: every collection the growth triggers
        # would walk all of them again (seconds at 100,000 jobs) and find nothing. Jobs hold no
        # cycles; the daemon freezes what is loaded right after (gc.freeze) anyway.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            loaded = self.store.load_live(since)
        finally:
            if was_enabled:
                gc.enable()
        self._insert_loaded(loaded)
        self._count_deferred()  # the rest of the queue: loading.py reads it once the daemon answers
        for job in loaded:
            if job.state.active and not job.remote:
                alloc = Allocation(tuple(job.assigned_cpus), job.spec.memory, tuple(job.assigned_gpus))
                try:
                    self.ledger.claim(alloc)
                except LedgerConflict as e:
                    log.error("job %d: its recorded allocation overlaps another (%s); trusting it anyway", job.id, e)
                self._allocs[job.id] = alloc
                if job.array_job_id and job.spec.array_max_running:
                    self._admitted[job.array_job_id].add(job.id)
        for job in list(self.jobs.values()):
            if job.state.active and not job.remote:
                try:
                    running = await executor.recover(job)
                except Exception:
                    log.exception("job %d: cannot re-attach to it", job.id)
                    self._fail_lost(job)
                    running = False
                if running:
                    adopted += 1
                    self._arm_limit(job)
                else:
                    lost += 1
        # Units of jobs we do not track as running: a crash between start and its record, or strangers.
        active = {j.id for j in self.jobs.values() if j.state.active and not j.remote}
        for jid in await executor.orphans(active):
            job = self.jobs.get(jid) or self._load_now(jid, queue=False)
            if job is not None and job.state == JobState.PENDING and not job.remote:
                try:
                    await self._adopt_unrecorded(job)
                except Exception:
                    log.exception("job %d: cannot adopt its running unit", job.id)
                    self._fail_lost(job)
                adopted += 1
            else:
                what = f"{job.state.value.lower()} job" if job else "job unknown to the store"
                log.warning("%s belongs to a %s; stopping it", unit_name(jid), what)
                await executor.reap_orphan(jid)
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.state == JobState.PENDING and job.id not in self._allocs and not job.remote:
                self._revive_pending(job)
        log.info("recovered %d live jobs (next id %d): %d running re-adopted, %d ended while down; "
                 "%d queued jobs load from now on", len(self.jobs), self._next_id, adopted, lost, self._deferred.total())
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_finished())
        self._purger = asyncio.get_running_loop().create_task(self._purge_finished())
        self._start_loading()
        self.kick()

    def _revive_pending(self, job: Job) -> None:
        """A pending job back from the store: it may have run meanwhile (its gate's status file
        says how it ended), else it queues again."""
        try:
            info = self.executor.recorded_exit(job)
            if info is not None:
                self._finish(job, info)
            else:
                self._make_eligible(job)
        except Exception:
            log.exception("job %d: cannot recover it", job.id)
            self._fail_lost(job)

    async def _adopt_unrecorded(self, job: Job) -> None:
        """A PENDING job whose unit runs: the daemon died after starting it, before its RUNNING row."""
        found = await self.executor.find_unrecorded(job.id)
        if found is None:
            return
        handle, pinned = found
        cpus = tuple(c for c in pinned if c in self.ledger.cpu_ids)
        alloc = Allocation(cpus, job.spec.memory, ())
        try:
            self.ledger.claim(alloc)
        except LedgerConflict as e:
            log.error("job %d: adopted allocation overlaps another (%s)", job.id, e)
        self._allocs[job.id] = alloc
        job.assigned_cpus, job.handle = list(cpus), handle
        job.start_time = job.start_time or now_usec()
        self._set(job, JobState.RUNNING, "", {"assigned_cpus", "handle", "start_time"})
        log.warning("job %d was running without a record (daemon died while starting it); adopted", job.id)
        if not await self.executor.recover(job):
            return
        self.store.save(job)
