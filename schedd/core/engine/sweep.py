"""Finished jobs leaving: from memory (and the bus) after finished_object_ttl, from the store
after [jobs] keep_finished.

Both run as background loops started by recover() and never end on an error: a failed round
is logged and the next one tries again.
"""

from __future__ import annotations

import asyncio
import logging

from schedd.core.model import Job, now_usec
from schedd.protocol import format_duration

log = logging.getLogger("schedd.core.engine")


class Sweep:
    SWEEP_INTERVAL = 30.0  # seconds
    PURGE_BATCH = 500  # rows per purge transaction: the group committer never waits long behind one

    async def _sweep_finished(self) -> None:
        """Finished jobs stay in memory (and on the bus) for a while, then live on in the store only.

        A job whose final row is not written yet (the disk is full) stays until it is; one
        failure is logged and the next round tries again: the loop never ends on an error.
        """
        while True:
            await asyncio.sleep(self.SWEEP_INTERVAL)
            try:
                self._sweep_once()
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one bad round
                log.exception("sweeping finished jobs failed; trying again in %gs", self.SWEEP_INTERVAL)

    def _sweep_once(self) -> None:
        horizon = now_usec() - self.config.finished_object_ttl_usec
        old = [j for j in self.jobs.values()
               if j.state.terminal and 0 < j.end_time < horizon and not self.store.unwritten(j.id)]
        for job in old:
            self._drop_finished(job)

    def _drop_finished(self, job: Job) -> None:
        """A finished job leaves memory and the bus (it lives on in the store, or was purged from it)."""
        del self.jobs[job.id]
        self._by_state[job.state] -= 1
        for l in self.listeners:
            try:
                l.job_released(job)
            except Exception:  # noqa: BLE001 - one listener's error must not keep the job (or stop a sweep)
                log.exception("job %d: releasing its object failed", job.id)

    @staticmethod
    def purge_interval(keep_usec: int) -> float:
        """Seconds between purges: a tenth of keep_finished, from 1 s to an hour."""
        return min(3600.0, max(1.0, keep_usec / 1e7))

    async def _purge_finished(self) -> None:
        """Finished jobs older than [jobs] keep_finished leave the store, in small batches off the loop."""
        while True:
            keep = self.config.keep_finished_usec
            await asyncio.sleep(self.purge_interval(keep) if keep else 3600.0)
            if keep:
                try:
                    await self.purge_once(now_usec() - keep)
                except Exception:  # noqa: BLE001 - a failed purge is retried at the next interval
                    log.exception("purging finished jobs failed; retrying in %.0f s", self.purge_interval(keep))

    async def purge_once(self, ended_before_usec: int) -> int:
        """Delete every finished job that ended before the horizon; how many were deleted."""
        total = 0
        while True:
            ids = await self.store.background(self.store.purge_finished, ended_before_usec, self.PURGE_BATCH)
            if not ids:
                break
            total += len(ids)
            self._purged_max_id = max(self._purged_max_id, max(ids))
            for jid in ids:
                job = self.jobs.get(jid)
                if job is not None and job.state.terminal:  # gone from the store: gone from the bus too
                    self._drop_finished(job)
            if len(ids) < self.PURGE_BATCH:
                break
            await asyncio.sleep(0)
        if total:
            log.info("purged %d finished jobs that ended more than %s ago (keep_finished)", total,
                     format_duration(max(0, now_usec() - ended_before_usec)))
        return total
