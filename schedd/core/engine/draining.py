"""A drain of this node (`schedctl drain`): it starts nothing new, and what runs finishes.

While drained the scheduler starts no job here (local or forwarded); queued jobs that may go elsewhere
are handed to the federation (`Records.send_away`), the rest wait with reason `drained`. The node is
`draining` while jobs still run here, `drained` once none do; `resume` undoes it. The drain is durable
(the store's node_drain) so a restart keeps it. Who drained it and why are shown by ListNodes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

from schedd.core.model import JobState, Reason, now_usec

log = logging.getLogger("schedd.core.engine")

DRAIN_MARK_DELAY = 0.5  # jobs queued during a drain get their `drained` reason within this long


@dataclass(frozen=True, slots=True)
class Drain:
    reason: str
    by: str  # who set it: "root on NODE" or the user's name
    since: int  # µs since the epoch


class Draining:
    """The engine's drain (a mixin of Engine)."""

    def _init_draining(self) -> None:
        row = self.store.load_drain(self.config.node_name)
        self.drain: Drain | None = Drain(*row) if row else None
        self.drain_listeners: list[Callable[[], None]] = []  # told when the drain state changes
        self._mark_soon = False
        self._was_drained = False

    def drain_state(self) -> str:
        """'' (takes jobs), 'draining' (jobs still run here) or 'drained'."""
        if self.drain is None:
            return ""
        return "draining" if self._allocs else "drained"

    async def set_drain(self, reason: str, by: str) -> None:
        if self.drain is not None:
            self.drain = Drain(reason or self.drain.reason, self.drain.by, self.drain.since)
        else:
            self.drain = Drain(reason, by, now_usec())
        await self.store.put_drain(self.config.node_name, (self.drain.reason, self.drain.by, self.drain.since))
        log.warning("node %s drains (by %s%s): it starts no new jobs; %d running here finish", self.config.node_name,
                    self.drain.by, f", reason: {self.drain.reason}" if self.drain.reason else "", len(self._allocs))
        self._mark_drained()
        self._drain_changed()

    async def clear_drain(self, by: str) -> None:
        if self.drain is None:
            return
        self.drain = None
        await self.store.put_drain(self.config.node_name, None)
        log.warning("node %s resumes (by %s): it takes jobs again", self.config.node_name, by)
        # Every job that waits for the drain, queued or not yet (an array's task waiting on a dependency
        # was made a job with its reason `drained`): a resume is rare, the table is walked once.
        for job in [j for j in self.jobs.values()
                    if j.state == JobState.PENDING and j.reason == Reason.DRAINED and not j.remote]:
            self._set(job, JobState.PENDING, Reason.DEPENDENCY if job.id in self._blocked else "")
            self.store.save(job)
        self._drain_changed()
        self.kick()

    def _drain_changed(self) -> None:
        self._was_drained = self.drain_state() == "drained"
        if self._was_drained:
            log.warning("node %s is drained: no job runs here", self.config.node_name)
        for listener in self.drain_listeners:
            listener()

    def _drain_tick(self) -> None:
        """A job's allocation came back: the node may be drained now."""
        if self.drain is not None and not self._was_drained and not self._allocs:
            self._drain_changed()

    def _drain_blocks(self) -> bool:
        """Called by each scheduling pass: True when drained (and jobs queued since get their reason)."""
        if self.drain is None:
            return False
        if not self._mark_soon:
            self._mark_soon = True
            asyncio.get_running_loop().call_later(DRAIN_MARK_DELAY, self._mark_drained)
        return True

    def _mark_drained(self) -> None:
        """Queued jobs here: the federation takes those that may run elsewhere; the others wait, `drained`."""
        self._mark_soon = False
        if self.drain is None:
            return
        fed = self.federation
        for job in list(self.scheduler.queued()):
            if job.state != JobState.PENDING:
                continue
            if fed is not None and fed.drained_job(job):
                continue
            if job.reason != Reason.DRAINED:
                self._set(job, JobState.PENDING, Reason.DRAINED)
                self.store.save(job)
