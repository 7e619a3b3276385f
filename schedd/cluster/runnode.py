"""The run node's side: jobs other nodes forwarded here, and their states pushed back to them.

A forward is accepted once per (origin node, origin id, attempt), however often it is retried;
every transition of such a copy is pushed to its origin in order; a copy its origin placed
elsewhere meanwhile is fenced (stopped) when the origin says so.

No copy's program starts without its origin's grant (`may_start`, asked in batches through
POST /starts just before the program is released): the origin owns the job and answers only for
the copy it currently has placed here, recording the grant durably first -- so a copy the origin
has given up on (this node was judged down, the job placed elsewhere or cancelled) never starts,
whatever the timing. An origin is asked only while it is *ready*: it answers our heartbeats and,
since it last did not (or since this node was itself away, or started), it has heard all our
copies' states again and we have fenced what it called stale. Until then its copies wait parked.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from schedd.cluster.peers import Peer, Peers
from schedd.cluster.wire import PeerError, PeerRefused, job_state_json
from schedd.core.cluster import StartVerdict
from schedd.core.engine import Caller, Engine
from schedd.core.model import Job
from schedd.core.model import now_usec
from schedd.errors import AccessDenied

log = logging.getLogger(__name__)


@dataclass
class OriginLink:
    """This node's standing with one origin: whether its copies may ask it for start grants."""

    ready: bool = False  # it answers us and has heard every copy's state since it last did not
    resync: bool = True  # push every live copy's state before asking it anything again
    asks: list[tuple[Job, asyncio.Future]] = field(default_factory=list)  # grants to ask in the next batch
    flushing: bool = False


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
        self.links: dict[str, OriginLink] = {name: OriginLink() for name in net.peers}
        self._inflight: dict[tuple[str, int, int], asyncio.Future] = {}  # forwards being recorded here
        self._by_origin: dict[tuple[str, int, int], int] = {}  # (origin node, its id, attempt) -> our copy's id
        self.grants_asked = 0  # copies whose start was put to their origin (tests read it)
        self._pushers: dict[str, asyncio.Task] = {}

    def recover(self) -> None:
        """After a restart: index our copies by origin, and tell each origin their states again."""
        for job in self.engine.jobs.values():
            if job.origin_node:
                self._by_origin[(job.origin_node, job.origin_id, job.attempt)] = job.id
            if job.origin_node in self.net.peers and job.origin_id:
                self.dirty(job)

    def start_loops(self) -> None:
        for p in self.net.peers.values():
            self.peer_added(p)  # once per peer (those learned on joining have theirs already)

    def peer_added(self, peer: Peer) -> None:
        """A member joined: its copies' states have an outbox and a pusher, as a [[peers]] entry's do."""
        self.outboxes.setdefault(peer.name, Outbox())
        self.links.setdefault(peer.name, OriginLink())
        if peer.name not in self._pushers:
            self._pushers[peer.name] = self.net.keep(f"pushes to {peer.name}", self._pusher, peer)

    def peer_removed(self, peer: Peer) -> None:
        """A member was forgotten: its copies here run on (their ends go nowhere); nothing is pushed to it."""
        task = self._pushers.pop(peer.name, None)
        if task is not None:
            task.cancel()
        self.outboxes.pop(peer.name, None)
        link = self.links.pop(peer.name, None)
        for _, fut in link.asks if link else []:
            if not fut.done():
                fut.set_result("later")

    def resend(self, origin: str) -> None:
        """The origin is back: it hears our copies' states again."""
        for job in self.engine.jobs.values():
            if job.origin_node == origin:
                self.dirty(job)

    # -- the engine's events -----------------------------------------------------------------

    def job_added(self, job: Job) -> None:
        if job.origin_node:
            self._by_origin[(job.origin_node, job.origin_id, job.attempt)] = job.id
        self.dirty(job)

    def job_released(self, job: Job) -> None:
        if job.origin_node:
            self._by_origin.pop((job.origin_node, job.origin_id, job.attempt), None)

    # -- standing with each origin --------------------------------------------------------------

    def origin_ready(self, origin: str) -> bool:
        link = self.links.get(origin)
        return link is not None and link.ready

    def answered(self, peer: Peer, ok: bool) -> None:
        """Our heartbeat to peer was answered, or not: its copies may ask it again once it has
        heard their states; until then they wait, parked."""
        link = self.links.get(peer.name)
        if link is None:
            return  # removed meanwhile
        if not ok:
            self._lapse(peer.name)
        elif not link.ready and link.resync:
            self.outboxes[peer.name].wake.set()  # the pusher resyncs, then makes it ready

    def away(self) -> None:
        """This node was itself away: every origin may have given up on us meanwhile."""
        for name in self.links:
            self._lapse(name)

    def _lapse(self, origin: str) -> None:
        link = self.links.get(origin)
        if link is None:
            return
        link.resync = True
        if link.ready:
            link.ready = False
            log.info("origin %s does not answer: its copies here wait until it does and has heard them again",
                     origin)
            self.engine.origin_lost(origin)

    async def may_start(self, job: Job) -> StartVerdict:
        """The engine is about to release a copy's program: ask its origin (batched with the others
        starting now). go: granted; fenced: the origin placed it elsewhere or ended it; failed: it
        counts this run as failed; later: it cannot be asked now (the copy waits, parked, until it can)."""
        link = self.links.get(job.origin_node)
        if link is None or not link.ready:
            return "later"
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        link.asks.append((job, fut))
        if not link.flushing:
            link.flushing = True
            self.net.spawn(self._ask(job.origin_node))
        return await fut

    async def _ask(self, origin: str) -> None:
        """One POST /starts for every grant asked since the last one went out."""
        link, peer = self.links[origin], self.net.peers[origin]
        try:
            while link.asks and link.ready:
                asks, link.asks = link.asks, []
                self.grants_asked += len(asks)
                verdicts = await self._grants(peer, [job for job, _ in asks])
                for (job, fut), verdict in zip(asks, verdicts):
                    if not fut.done():
                        fut.set_result(verdict)
        finally:
            link.flushing = False
            for _, fut in link.asks:  # asked while the last batch failed: ask again later
                if not fut.done():
                    fut.set_result("later")
            link.asks = []

    async def _grants(self, peer: Peer, jobs: list[Job]) -> list[StartVerdict]:
        try:
            answer = await self.net.request(peer, "POST", "/starts",
                                            json={"Node": self.name, "Jobs": [job_state_json(j) for j in jobs]},
                                            timeout=self.net.call_timeout)
        except (PeerError, PeerRefused) as e:
            log.warning("start grants from %s: %s; its copies wait", peer.name, e)
            self._lapse(peer.name)
            return ["later"] * len(jobs)
        granted, stale, failed = (set(answer.get(k, [])) for k in ("Granted", "Stale", "Failed"))
        verdicts: list[StartVerdict] = ["go" if j.id in granted else "failed" if j.id in failed
                                        else "fenced" if j.id in stale else "later" for j in jobs]
        if "later" in verdicts:  # it answers, but not for these yet (its record lags): ask again in a while
            asyncio.get_running_loop().call_later(self.net.interval, self._ask_again, peer.name)
        return verdicts

    def _ask_again(self, origin: str) -> None:
        link = self.links.get(origin)
        if link is not None and link.ready:
            self.engine.origin_back(origin)

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
        box, link = self.outboxes[peer.name], self.links[peer.name]
        while True:
            await box.wake.wait()
            box.wake.clear()
            resync = link.resync and peer.answering
            if resync:
                for job in list(self.engine.jobs.values()):
                    if job.origin_node == peer.name and not job.state.terminal:
                        self.dirty(job)
                box.wake.clear()
            if not box.entries:
                if resync:
                    self._ready(peer.name, 0)
                continue
            batch, box.entries, box.last = box.entries, [], {}
            try:
                answer = await self.net.request(peer, "POST", "/mirror", json={"Node": self.name, "Jobs": batch})
            except (PeerError, PeerRefused) as e:
                box.entries = batch + box.entries  # in order, before what happened since
                box.last = {rec["Id"]: rec for rec in box.entries}
                log.debug("mirror to %s: %s", peer.name, e)
                await self.net.sleep(self.net.interval)
                box.wake.set()
                continue
            sent = {rec["Id"] for rec in batch}
            stale = [rid for rid in set(answer.get("Stale", [])) if rid in sent]
            failed = set(answer.get("Failed", []))
            if not resync:
                for rid in stale:
                    self.net.spawn(self.fence_local(rid, peer.name, rid in failed))
                continue
            # Every copy it no longer counts on is stopped before any other of its copies may start.
            done = await asyncio.gather(*(self.fence_local(rid, peer.name, rid in failed) for rid in stale),
                                        return_exceptions=True)
            errors = [d for d in done if isinstance(d, BaseException)]
            if errors:
                log.error("fencing stale copies of %s's jobs: %s; asked again at its next answer", peer.name,
                          errors[0])
                continue
            if link.resync and peer.answering:
                self._ready(peer.name, len(stale))

    def _ready(self, origin: str, fenced: int) -> None:
        link = self.links.get(origin)
        if link is None:
            return
        link.resync, link.ready = False, True
        log.info("origin %s has heard every copy's state again%s: its copies may start", origin,
                 f" ({fenced} stale ones stopped)" if fenced else "")
        self.engine.origin_back(origin)

    async def fence_local(self, job_id: int, origin: str, failed: bool = False) -> dict[str, Any]:
        """Stop a copy its origin no longer counts on: placed elsewhere or ended (CANCELLED), or its run
        given up for failed (failed: FAILED, as the origin recorded it); reason node-failure either way."""
        job = self.engine.get(job_id)
        if job.origin_node != origin:
            raise AccessDenied(f"job {job_id} was not forwarded here by {origin}")
        if not job.state.terminal:
            log.warning("job %d (job %d of %s): %s; stopping this copy", job.id, job.origin_id, origin,
                        "its origin counts this run as failed" if failed else "its origin placed it elsewhere")
        job = await self.engine.fence(job_id, failed=failed)
        return job_state_json(job)

    # -- forwards arriving ---------------------------------------------------------------------

    async def accept(self, origin: str, origin_id: int, attempt: int, props: dict) -> Job:
        """A peer forwards one of its jobs: run it here, once, however often the forward is retried."""
        key = (origin, origin_id, attempt)
        existing = self._find_origin(key)
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

    def _find_origin(self, key: tuple[str, int, int]) -> Job | None:
        jid = self._by_origin.get(key)
        if jid is not None and jid in self.engine.jobs:
            return self.engine.jobs[jid]
        return self.engine.store.find_origin(*key)

    def copies_for(self, origin: str) -> list[Job]:
        """Our copies of origin's jobs: live ones from memory, older ones from the store."""
        mem = {j.id: j for j in self.engine.jobs.values() if j.origin_node == origin}
        since = now_usec() - self.engine.config.finished_object_ttl_usec
        for j in self.engine.store.by_origin(origin, since):
            mem.setdefault(j.id, j)
        return [mem[i] for i in sorted(mem)]
