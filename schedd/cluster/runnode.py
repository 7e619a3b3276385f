"""The run node's side: jobs other nodes forwarded here, and their states pushed back to them.

A forward is accepted once per (origin node, origin id), however often it is retried; every
transition of such a copy is pushed to its origin in order; a copy its origin placed elsewhere
meanwhile is fenced (stopped) when the origin says so.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from schedd.cluster.peers import Peer, Peers
from schedd.cluster.wire import PeerError, PeerRefused, job_state_json
from schedd.core.engine import Caller, Engine
from schedd.core.model import Job
from schedd.core.model import now_usec
from schedd.errors import AccessDenied

log = logging.getLogger(__name__)


@dataclass
class Outbox:
    """States of our copies of an origin's jobs that it has not heard yet, in order: one per transition
    (a change that is not a transition replaces the job's last one), so it sees RUNNING even of short jobs."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    last: dict[int, dict[str, Any]] = field(default_factory=dict)  # job id -> its latest entry in entries
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class RunNode:
    def __init__(self, engine: Engine, net: Peers) -> None:
        self.engine = engine
        self.net = net
        self.name = net.name
        self.outboxes: dict[str, Outbox] = {name: Outbox() for name in net.peers}
        self._inflight: dict[tuple[str, int], asyncio.Future] = {}  # forwards being recorded here
        self._by_origin: dict[tuple[str, int], int] = {}  # (origin node, its id) -> our copy's id

    def recover(self) -> None:
        """After a restart: index our copies by origin, and tell each origin their states again."""
        for job in self.engine.jobs.values():
            if job.origin_node:
                self._by_origin[(job.origin_node, job.origin_id)] = job.id
            if job.origin_node in self.net.peers and job.origin_id:
                self.dirty(job)

    def start_loops(self) -> None:
        for p in self.net.peers.values():
            self.net.keep(f"pushes to {p.name}", self._pusher, p)

    def resend(self, origin: str) -> None:
        """The origin is back: it hears our copies' states again."""
        for job in self.engine.jobs.values():
            if job.origin_node == origin:
                self.dirty(job)

    # -- the engine's events -----------------------------------------------------------------

    def job_added(self, job: Job) -> None:
        if job.origin_node:
            self._by_origin[(job.origin_node, job.origin_id)] = job.id
        self.dirty(job)

    def job_released(self, job: Job) -> None:
        if job.origin_node:
            self._by_origin.pop((job.origin_node, job.origin_id), None)

    # -- mirror pushes -------------------------------------------------------------------------

    def dirty(self, job: Job) -> None:
        box = self.outboxes.get(job.origin_node) if job.origin_node else None
        if box is None:
            return
        snap = job_state_json(job)
        last = box.last.get(job.id)
        if last is not None and last["State"] == snap["State"]:
            last.update(snap)  # same state, newer details
        else:
            box.entries.append(snap)
            box.last[job.id] = snap
        box.wake.set()

    async def _pusher(self, peer: Peer) -> None:
        """Push our copies' states to their origin, batched; kept and retried while it is unreachable."""
        box = self.outboxes[peer.name]
        while True:
            await box.wake.wait()
            box.wake.clear()
            if not box.entries:
                continue
            batch, box.entries, box.last = box.entries, [], {}
            try:
                answer = await self.net.request(peer, "POST", "/mirror", json={"Node": self.name, "Jobs": batch})
            except (PeerError, PeerRefused) as e:
                box.entries = batch + box.entries  # in order, before what happened since
                box.last = {rec["Id"]: rec for rec in box.entries}
                log.debug("mirror to %s: %s", peer.name, e)
                await asyncio.sleep(self.net.interval)
                box.wake.set()
                continue
            sent = {rec["Id"] for rec in batch}
            for rid in set(answer.get("Stale", [])):
                if rid in sent:
                    self.net.spawn(self.fence_local(rid, peer.name))

    async def fence_local(self, job_id: int, origin: str) -> dict[str, Any]:
        job = self.engine.get(job_id)
        if job.origin_node != origin:
            raise AccessDenied(f"job {job_id} was not forwarded here by {origin}")
        if not job.state.terminal:
            log.warning("job %d (job %d of %s): its origin placed it elsewhere; stopping this copy", job.id,
                        job.origin_id, origin)
        job = await self.engine.fence(job_id)
        return job_state_json(job)

    # -- forwards arriving ---------------------------------------------------------------------

    async def accept(self, origin: str, origin_id: int, props: dict) -> Job:
        """A peer forwards one of its jobs: run it here, once, however often the forward is retried."""
        key = (origin, origin_id)
        existing = self._find_origin(origin, origin_id)
        if existing is not None:
            return existing
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            (job,) = await self.engine.submit_many([props], Caller(uid=0), origin=key)
            fut.set_result(job)
            return job
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            del self._inflight[key]

    def _find_origin(self, origin: str, origin_id: int) -> Job | None:
        jid = self._by_origin.get((origin, origin_id))
        if jid is not None and jid in self.engine.jobs:
            return self.engine.jobs[jid]
        return self.engine.store.find_origin(origin, origin_id)

    def copies_for(self, origin: str) -> list[Job]:
        """Our copies of origin's jobs: live ones from memory, older ones from the store."""
        mem = {j.id: j for j in self.engine.jobs.values() if j.origin_node == origin}
        since = now_usec() - self.engine.config.finished_object_ttl_usec
        for j in self.engine.store.by_origin(origin, since):
            mem.setdefault(j.id, j)
        return [mem[i] for i in sorted(mem)]
