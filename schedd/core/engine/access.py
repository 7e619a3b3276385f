"""Who may act on a job: the Caller a front end vouches for, and the one authorization rule.

A job is its owner's and root's; polkit (authorize_other) may let others act on it
(MANAGE_ACTION) or submit above max_user_priority (PRIORITY_ACTION, checked in submit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from schedd.core.model import Job
from schedd.errors import AccessDenied

log = logging.getLogger("schedd.core.engine")

MANAGE_ACTION = "org.schedd.Schedd1.manage-jobs"  # polkit action for other users' jobs
PRIORITY_ACTION = "org.schedd.Schedd1.set-priority"  # polkit action for a Priority above max_user_priority


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: the uid the bus vouches for, and the bus name (for polkit)."""

    uid: int
    sender: str | None = None
    interactive: bool = False  # the call allows interactive authorization (a polkit agent may ask)


class Access:
    """The engine's authorization (a mixin of Engine): reads user_mode and authorize_other."""

    user_mode: bool
    authorize_other: Any  # async (Caller, action) -> bool, e.g. polkit; None: no one else may

    def _check_owner(self, job: Job, caller: Caller) -> None:
        if caller.uid == 0 or caller.uid == job.uid or self.user_mode:
            return
        raise AccessDenied(f"job {job.id} belongs to {job.spec.owner}; only its owner or root may change it "
                           f"(or a user polkit allows {MANAGE_ACTION})")

    async def authorize(self, job: Job, caller: Caller) -> None:
        """AccessDenied unless the caller owns the job, is root, or polkit allows it (e.g. to read its output)."""
        try:
            self._check_owner(job, caller)
        except AccessDenied:
            if self.authorize_other is not None and await self.authorize_other(caller, MANAGE_ACTION):
                log.info("uid %d acts on job %d of uid %d: allowed by polkit", caller.uid, job.id, job.uid)
                return
            raise

    async def _owned(self, job_id: int, caller: Caller) -> Job:
        """The job (live or archived), if it exists and the caller may change it; one kept on disk
        (loading.py) is loaded first, so the change is made to the live job."""
        live = None if job_id in self._unannounced else self.jobs.get(job_id) or self._load_now(job_id)
        job = live or self.get(job_id)  # NotFound, in its words
        await self.authorize(job, caller)
        return job
