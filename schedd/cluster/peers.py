"""The peer table: HTTP requests to peers, heartbeats, liveness, and every node as placement sees it.

Heartbeats are pushed to every peer each interval; a peer silent for 3 intervals of this node's own
waking time is down (schedd.cluster.liveness: a stall of ours is not our peers' death), and up again
as soon as it is heard from. A heartbeat's answer is the other half: a peer that answers ours can
take our requests (the run node asks its origins for start grants only then). What that means for
jobs is the origin's and the run node's business: they are told through `on_up`, `on_down`,
`on_heard`, `on_answer` and `on_away`.

The table grows and shrinks at run time (schedd.cluster.membership): `admit` takes a newcomer's claim
(a join, or a heartbeat from a node not known yet), `merge` what a member's heartbeat answer lists,
`remove` forgets a node for good. Each beat also carries the sender's drain state (schedctl drain).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine

import aiohttp

from schedd.api.http.web import Web
from schedd.cluster.liveness import Liveness, boottime
from schedd.cluster.membership import (MAX_MEMBERS, MAX_TOMBSTONES, ClaimRefused, Member, digest, members_json,
                                       parse_members)
from schedd.cluster.wire import API, PeerError, PeerRefused, refusal
from schedd.config import Config
from schedd.core.engine import Engine
from schedd.core.model import now_usec
from schedd.core.placement import Need, NodeView, ledger_load
from schedd.protocol import node_row

log = logging.getLogger(__name__)


@dataclass
class Peer:
    name: str
    url: str
    up: bool = False
    view: NodeView | None = None
    last_seen_usec: int = 0
    answering: bool = False  # its answer to our last heartbeat came back
    refused: bool = False  # it answered our heartbeat with 4xx (logged once, not every beat)
    # Not a schedd: what carries out its requests, polls it and judges it up or down
    # (schedd.cluster.slurm.bridge.SlurmBridge for `kind = "slurm"`); None for a schedd peer.
    bridge: Any = None
    static: bool = True  # from [[peers]] (else learned: a join or a member's word, kept in the store)
    drain: tuple[str, str, str] = ("", "", "")  # its drain as its beats tell: (state, reason, who)
    left: bool = False  # it said it was shutting down (it is down until heard again)


class Peers:
    """The nodes this one knows and the connection to them; also owns the federation's tasks."""

    def __init__(self, engine: Engine, cfg: Config, web: Web) -> None:
        self.engine = engine
        self.cfg = cfg
        self.web = web
        self.name = cfg.node_name
        self.interval = cfg.http.heartbeat_interval_usec / 1e6
        self.peers: dict[str, Peer] = {p.name: Peer(p.name, p.url) for p in cfg.peers}
        self.members: dict[str, Member] = {}  # learned members and tombstones (schedd.cluster.membership)
        for name, url, since, removed in engine.store.load_members():
            self.members[name] = Member(name, url, since, removed)
            if not removed and name not in self.peers and name != self.name:
                self.peers[name] = Peer(name, url, static=False)
        self.on_added: Callable[[Peer], None] | None = None  # a member joined (or was learned)
        self.on_removed: Callable[[Peer], None] | None = None  # a member was forgotten
        self.on_drain: Callable[[Peer], None] | None = None  # a peer started draining
        self.on_left: Callable[[Peer], None] | None = None  # a peer said it shuts down
        self.node_listeners: list[Callable[[], None]] = []  # told when a peer's state or load changes
        # What a peer's state means for jobs (set by the Federation that composes the sides):
        self.on_up: Callable[[Peer], Awaitable[None]] | None = None  # heard again after silence
        self.on_down: Callable[[Peer], None] | None = None  # silent for 3 intervals
        self.on_heard: Callable[[], None] | None = None  # a beat of a peer that was up: its load changed
        # Our heartbeat to a peer was answered (True, with the time we sent it) or not (False):
        self.on_answer: Callable[[Peer, bool, dict], None] | None = None
        self.on_away: Callable[[], None] | None = None  # this node found its own loop had stalled
        # The federation's time: what it reads and how it waits (a fault-injection test drives both).
        self.clock = boottime
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.loops: list[asyncio.Task] = []
        self._load: tuple[float, int, int] = (-1.0, 0, 0)  # (when, pending, running): counted at most every 0.1 s
        self.liveness = self._new_liveness()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.web.token}"},
            connector=aiohttp.TCPConnector(ssl=self.web.client_ssl() or True, limit=64),
        )
        self.liveness = self._new_liveness()

    @property
    def call_timeout(self) -> float:
        """How long one request of the federation's own (a forward, a grant, a fence) may take: one
        durable write there, milliseconds; two heartbeats at least, never so long a node going down
        keeps its caller hanging."""
        return max(1.5, 2 * self.interval)

    def _new_liveness(self) -> Liveness:
        # Checked four times an interval; a tick a whole interval late means this node was away.
        # Only schedd peers heartbeat (and count for a majority); a bridged peer is judged by its bridge.
        # Learned members (from the store, or joined since) are judged too, provisional until they answer.
        names = [p.name for p in self.cfg.peers if p.kind == "schedd"]
        learned = [n for n, p in self.peers.items() if not p.static and p.bridge is None and n not in names]
        live = Liveness(names, threshold=3 * self.interval, stall=self.interval, now=self.clock())
        for name in learned:
            live.add(name, live.now, provisional=True)
        return live

    def start_loops(self) -> None:
        self.keep("heartbeats", self._heartbeats)
        self.keep("liveness", self._watch)

    def keep(self, what: str, loop_fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> asyncio.Task:
        """Run one of the loops for ever, until stop() (or until the task is cancelled)."""
        task = asyncio.get_running_loop().create_task(self._keep(what, loop_fn, *args))
        self.loops.append(task)
        return task

    async def _keep(self, what: str, loop_fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """A bug in a pass is logged, and never ends heartbeats for good."""
        while True:
            try:
                await loop_fn(*args)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("federation: %s failed; starting it again", what)
                await self.sleep(self.interval)

    async def stop(self) -> None:
        for t in self.loops + list(self._tasks):
            t.cancel()
        await asyncio.gather(*self.loops, *self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("federation task failed", exc_info=task.exception())

    # -- node views --------------------------------------------------------------------

    def local_load(self) -> dict[str, int]:
        """What this node itself runs and queues (records of jobs placed elsewhere do not count)."""
        e, l = self.engine, self.engine.ledger
        when, pending, running = self._load
        now = self.clock()
        if now - when > 0.1:
            pending = sum(1 for j in e.jobs.values() if j.state.queued and not j.remote)
            running = sum(1 for j in e.jobs.values() if j.state.active and not j.remote)
            self._load = (now, pending, running)
        return ledger_load(l, pending, running)

    def features(self) -> frozenset[str]:
        """What this node runs beyond plain commands: its executor says (e.g. "container")."""
        ex = self.engine.executor
        return ex.features if ex is not None else frozenset()

    def views(self) -> list[NodeView]:
        """This node and every peer, as placement sees them (for metrics too). What jobs queued here
        ask for is not free for a newcomer: a burst of `any` jobs spills over instead of queueing here."""
        local = NodeView.of_load(self.name, True, self.local_load(), local=True, features=self.features())
        cpus = memory = gpus = 0
        for job in self.engine.scheduler.queued():
            cpus, memory, gpus = cpus + job.spec.cpus, memory + job.spec.memory, gpus + job.spec.gpus
        if cpus:
            local = dataclasses.replace(local, free_cpus=max(0, local.free_cpus - cpus),
                                        free_memory=max(0, local.free_memory - memory),
                                        free_gpus=max(0, local.free_gpus - gpus))
        if self.engine.drain is not None:
            local = dataclasses.replace(local, drained=True)
        out = [local]
        for p in self.peers.values():
            out.append(dataclasses.replace(p.view, up=p.up, drained=bool(p.drain[0])) if p.view
                       else NodeView(p.name, False, known=False))
        return out

    def count_sent(self, name: str, need: Need) -> None:
        """Count a job just sent to a peer against its last view until its next heartbeat."""
        p = self.peers[name]
        if p.view is not None:
            v = p.view
            fits = v.fits_now(dataclasses.replace(need)) if p.up else False
            p.view = dataclasses.replace(
                v, free_cpus=max(0, v.free_cpus - need.cpus) if fits else v.free_cpus,
                free_memory=max(0, v.free_memory - need.memory) if fits else v.free_memory,
                free_gpus=max(0, v.free_gpus - need.gpus) if fits else v.free_gpus,
                pending=v.pending + (0 if fits else 1), running=v.running + (1 if fits else 0))

    def node_rows(self) -> list[dict[str, Any]]:
        """ListNodes: DESIGN's keys, this node first."""
        rows = [node_row(self.name, True, self._own_url(), True, self.local_load(), now_usec(), self.own_drain())]
        for p in self.peers.values():
            v = p.view or NodeView(p.name, False, known=False)
            rows.append(node_row(p.name, p.up, p.url, False, v.load(), p.last_seen_usec, p.drain))
        return rows

    def own_drain(self) -> tuple[str, str, str]:
        d = self.engine.drain
        return (self.engine.drain_state(), d.reason, d.by) if d is not None else ("", "", "")

    def _own_url(self) -> str:
        if self.cfg.federation.url:
            return self.cfg.federation.url
        listen = self.cfg.http.listen
        if listen is None:
            return ""
        host = f"[{listen[0]}]" if ":" in listen[0] else listen[0]
        return f"{'https' if self.cfg.http.tls_cert else 'http'}://{host}:{listen[1]}"

    # -- HTTP client ---------------------------------------------------------------------

    async def request(self, peer: Peer, method: str, path: str, *, json: Any = None, params: dict | None = None,
                      timeout: float = 10.0, raw: bool = False) -> Any:
        """One call of a peer's API: its answer; PeerRefused for a 4xx, PeerError for the rest."""
        if peer.bridge is not None:
            return await peer.bridge.request(method, path, json=json, params=params, timeout=timeout, raw=raw)
        assert self._session is not None
        try:
            async with self._session.request(method, peer.url + API + path, json=json, params=params,
                                             timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                if r.status >= 500:
                    raise PeerError(f"node {peer.name} answered {r.status}: {(await r.text())[:200]}")
                if r.status >= 400:
                    raise refusal(peer.name, r.status, await r.text())
                return await r.read() if raw else await r.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            raise PeerError(f"node {peer.name} ({peer.url}) unreachable: {str(e) or type(e).__name__}") from None

    # -- heartbeats and liveness -----------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            state, reason, by = self.own_drain()
            body = {"Name": self.name, "URL": self._own_url(), **self.local_load(), "Digest": self.digest(),
                    "Features": sorted(self.features())}
            if state:
                body.update(Drain=state, DrainReason=reason, DrainedBy=by)
            for p in list(self.peers.values()):
                if p.bridge is None:
                    self.spawn(self._beat(p, body))
            await self.sleep(self.interval)

    async def _beat(self, peer: Peer, body: dict) -> None:
        try:
            answer = await self.request(peer, "POST", "/heartbeat", json=body, timeout=max(0.5, self.interval))
            if peer.refused:
                peer.refused = False
                log.info("heartbeats to %s are accepted again", peer.name)
        except PeerRefused as e:
            if not peer.refused:
                peer.refused = True
                log.warning("heartbeat to %s refused: %s", peer.name, e)
            self._answered(peer, False, {})
        except PeerError:
            # Our silence is what tells *it* we are down; its state is told by its own beats. That it
            # cannot take our requests now is ours to know.
            self._answered(peer, False, {})
        else:
            answer = answer if isinstance(answer, dict) else {}
            if "Members" in answer and peer.name in self.peers:
                self.merge(*parse_members(answer, self.cfg.http.allow_insecure_peers, peer.url))
            self._answered(peer, True, answer)

    def _answered(self, peer: Peer, ok: bool, answer: dict) -> None:
        if ok:
            self.liveness.confirm(peer.name)
        changed = peer.answering != ok
        peer.answering = ok
        if self.on_answer is not None and (changed or ok):
            self.on_answer(peer, ok, answer)

    def heard(self, name: str, load: dict[str, int], drain: tuple[str, str, str] = ("", "", ""),
              features: frozenset[str] = frozenset()) -> None:
        """A heartbeat arrived from a peer (validated by the API)."""
        peer = self.peers[name]
        if peer.bridge is not None:
            return  # not a schedd: nothing speaks for it but its bridge
        peer.view = NodeView.of_load(name, True, load, features=features)
        peer.last_seen_usec = now_usec()
        peer.left = False
        if drain != peer.drain:
            was = peer.drain[0]
            peer.drain = drain
            if drain[0] and not was:
                log.warning("node %s drains (by %s%s)", name, drain[2], f", reason: {drain[1]}" if drain[1] else "")
                if self.on_drain is not None:
                    self.on_drain(peer)
            elif not drain[0]:
                log.info("node %s resumed: it takes jobs again", name)
            elif drain[0] == "drained":
                log.info("node %s is drained", name)
        was_down = self.liveness.heard(name, self.clock())
        self._nodes_changed()
        if was_down or not peer.up:
            peer.up = True
            log.info("node %s is up", name)
            if self.on_up is not None:
                self.spawn(self.on_up(peer))
        elif self.on_heard is not None:
            self.on_heard()

    async def _watch(self) -> None:
        """Mark peers down after 3 silent intervals of our own waking time (checked four times an
        interval). A peer not heard from since this daemon started counts as down as well once 3
        intervals have passed: the jobs it ran for us before a restart of ours must not wait for it
        for ever. A stall of ours restarts every count (schedd.cluster.liveness)."""
        while True:
            await self.sleep(self.interval / 4)
            now = self.clock()
            quorate = self.liveness.quorate
            away, down = self.liveness.tick(now)
            if quorate != self.liveness.quorate:
                if quorate:
                    log.warning("this node hears no majority of its cluster: it judges no peer down until it does "
                                "(its own link is the likelier fault)")
                else:
                    log.info("this node hears a majority of its cluster again")
            if away:
                log.warning("this node was away (its loop did not run for over %.1fs): it hears its peers again "
                            "before it judges any of them", self.interval)
                for p in self.peers.values():
                    p.answering = False
                if self.on_away is not None:
                    self.on_away()
            for name in down:
                p = self.peers[name]
                if p.up:
                    log.warning("node %s is down: no heartbeat for %.1fs", p.name, self.liveness.silence(name, now))
                elif p.left:
                    log.warning("node %s, which shut down, is not back after %.1fs: its jobs follow the node-failure "
                                "rules", p.name, self.liveness.silence(name, now))
                else:
                    log.warning("node %s has not been heard from since this node started", p.name)
                p.up = False
                self._nodes_changed()
                if self.on_down is not None:
                    self.on_down(p)

    def _nodes_changed(self) -> None:
        for listener in self.node_listeners:
            listener()

    # -- membership (schedd.cluster.membership) --------------------------------------------------

    def digest(self) -> str:
        """Of this node's member list: computed again only when the list changes (every beat compares it)."""
        names = (self.name, *(n for n, p in self.peers.items() if p.bridge is None))
        if getattr(self, "_digest_of", None) != names:
            self._digest_of, self._digest = names, digest(names)
        return self._digest

    def members_answer(self) -> dict[str, Any]:
        """This node's member list (and tombstones), for a joiner or a member whose digest differs."""
        schedds = ((p.name, p.url) for p in self.peers.values() if p.bridge is None)
        return members_json((self.name, self._own_url()), schedds,
                            (m.name for m in self.members.values() if m.removed))

    def admit(self, name: str, url: str) -> Peer:
        """A node claims `name` at `url` itself (a join, or a heartbeat of a node not known yet): the peer,
        added if new; ClaimRefused when the name is this node's, a [[peers]] entry's at another URL, or a
        member's at another URL, up or down: a token holder must not take over the name of a node that is
        briefly down (its jobs' forwards, fences and output reads would go to the taker, and the node itself
        would be locked out on its return). A node that really moved is removed first (`schedctl node
        remove`), then joins again. Refused too when the table is full (MAX_MEMBERS)."""
        if name == self.name:
            raise ClaimRefused(f"node name {name!r} is node {self.name}'s own (at {self._own_url()}); give the "
                               f"newcomer a name of its own ([node] name)")
        p = self.peers.get(name)
        if p is None:
            if name in self.members:
                log.info("node %s, removed before, joins again", name)
            return self.add(name, url, how="joined")
        if p.bridge is not None:
            raise ClaimRefused(f"node name {name!r} is a Slurm cluster configured here ([[peers]] kind = "
                               f"\"slurm\"); a node at {url} cannot take it")
        if p.url == url:
            return p
        if p.static:
            raise ClaimRefused(f"node name {name!r} is configured here at {p.url} ([[peers]]); a node at {url} "
                               f"cannot take it")
        if p.up:
            raise ClaimRefused(f"node name {name!r} is taken by a live node at {p.url}; a second node (at {url}) "
                               f"cannot join under it: give it a name of its own ([node] name)")
        raise ClaimRefused(f"node name {name!r} is a member at {p.url} (down now); a node at {url} cannot take "
                           f"it over. If {name} really moved, run `schedctl node remove {name}` on a member first")

    def full(self) -> bool:
        return len(self.peers) >= MAX_MEMBERS

    def add(self, name: str, url: str, *, how: str) -> Peer:
        """A new learned member; ClaimRefused when the table is full (a flood of joins stops there)."""
        if self.full():
            raise ClaimRefused(f"node {self.name} knows {len(self.peers)} nodes, its most ({MAX_MEMBERS}); "
                               f"remove nodes that are gone (schedctl node remove) before {name} can join")
        peer = Peer(name, url, static=False)
        self.peers[name] = peer
        self.liveness.add(name, self.clock(), provisional=True)
        self._persist(Member(name, url, now_usec()))
        log.warning("node %s (%s) %s the cluster", name, url, how)
        if self.on_added is not None:
            self.on_added(peer)
        self._nodes_changed()
        return peer

    def merge(self, members: list[tuple[str, str]], removed: list[str]) -> None:
        """What a member lists: nodes not known here are learned (never a tombstoned one: only its own claim
        brings it back); nodes it removed are forgotten here too when they are down and were learned."""
        for name, url in members:
            gone = name in self.members and self.members[name].removed
            if name != self.name and name not in self.peers and not gone:
                if self.full():
                    log.warning("node %s is not learned from a member: this node knows its most (%d) nodes",
                                name, MAX_MEMBERS)
                    break
                self.add(name, url, how="was learned from a member; it is in")
        for name in removed:
            p = self.peers.get(name)
            if p is not None and not p.static and not self.heard_lately(name):
                self.remove(name)

    def remove(self, name: str) -> Peer:
        """Forget a node for good (a tombstone stays, so gossip does not bring it back)."""
        peer = self.peers.pop(name)
        self.liveness.remove(name)
        self._persist(Member(name, peer.url, now_usec(), removed=now_usec()))
        self._forget_oldest_tombstones()
        log.warning("node %s (%s) was removed from the cluster", name, peer.url)
        if self.on_removed is not None:
            self.on_removed(peer)
        self._nodes_changed()
        return peer

    def heard_lately(self, name: str) -> bool:
        """Heard within the down threshold: `up` for `node remove`. (A node without a majority judges
        nobody down, but a member silent that long is gone enough to be removed by an operator.)"""
        p = self.peers[name]
        return p.up and self.liveness.silence(name, self.clock()) <= self.liveness.threshold

    def _forget_oldest_tombstones(self) -> None:
        """At most MAX_TOMBSTONES removed names are kept (and answered to members): the oldest go first."""
        gone = sorted((m.removed, m.name) for m in self.members.values() if m.removed)
        for _, name in gone[:max(0, len(gone) - MAX_TOMBSTONES)]:
            del self.members[name]
            self.engine.store.forget_member(name)

    def _persist(self, m: Member) -> None:
        self.members[m.name] = m
        fut = self.engine.store.put_member(m.name, m.url, m.since, m.removed)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception() is None
                              or log.error("membership of %s not stored: %s", m.name, f.exception()))

    def left(self, name: str) -> None:
        """A peer says it shuts down: down at once (nothing new is sent there, its queued copies are placed
        again); what runs there waits out the usual silence, as a restart keeps its jobs running."""
        p = self.peers[name]
        if p.left:
            return
        p.left = True
        log.warning("node %s is shutting down: down until it is heard again", name)
        if p.up:
            p.up = False
            if self.on_left is not None:
                self.on_left(p)
        self._nodes_changed()

    async def leave(self) -> None:
        """This node shuts down: it tells its peers so (best effort, briefly), so they need not wait out
        the down timeout to stop sending it work."""
        ups = [p for p in self.peers.values() if p.answering and p.bridge is None]
        if not ups or self._session is None:
            return
        await asyncio.gather(*(self.request(p, "POST", "/leave", json={"Name": self.name}, timeout=0.5)
                               for p in ups), return_exceptions=True)
