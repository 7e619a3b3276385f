"""Federation: peers over HTTP, no central controller. Each node owns its jobs and its SQLite.

This class composes the three sides and is what the rest of the daemon holds (it is the engine's
`schedd.core.cluster.Cluster` and one of its listeners):
- `schedd.cluster.peers`: the peer table, requests, heartbeats, liveness, node views and rows;
- `schedd.cluster.origin`: jobs of ours placed on peers or waiting for a node;
- `schedd.cluster.runnode`: jobs peers forwarded here, their states pushed back, fencing.
Membership (join through seeds, leave, remove) and drains (schedctl drain) are composed here too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from schedd.api.http.web import Web
from schedd.cluster.origin import Origin
from schedd.cluster.membership import parse_members
from schedd.cluster.peers import Peer, Peers
from schedd.cluster.runnode import RunNode
from schedd.cluster.wire import PeerError, PeerRefused
from schedd.config import Config, ConfigError
from schedd.core.cluster import RemoteAction, StartVerdict
from schedd.core.engine import Engine
from schedd.core.model import Job, JobSpec, JobState
from schedd.core.placement import NodeView
from schedd.errors import InvalidArgument, InvalidState, NotFound, SchedError

log = logging.getLogger(__name__)


class Federation:
    def __init__(self, engine: Engine, cfg: Config, web: Web) -> None:
        self.engine = engine
        self.cfg = cfg
        self.web = web
        self.name = cfg.node_name
        self.net = Peers(engine, cfg, web)
        self.origin = Origin(engine, self.net)
        self.runnode = RunNode(engine, self.net)
        self.net.on_up = self._reconnected
        self.net.on_down = self.origin.node_down
        self.net.on_heard = self.origin.peer_heard
        self.net.on_answer = lambda peer, ok, answer: self.runnode.answered(peer, ok)
        self.net.on_away = self.runnode.away
        self.net.on_added = self._added
        self.net.on_removed = self.runnode.peer_removed
        self.net.on_drain = lambda peer: self.origin.recall_from(peer, only_any=True)
        self.net.on_left = lambda peer: self.origin.recall_from(peer, only_any=False)
        engine.drain_listeners.append(self._drain_changed)
        self.peers: dict[str, Peer] = self.net.peers
        self.waiting: dict[int, Job] = self.origin.waiting
        # Told when a peer's state or load changes:
        self.node_listeners: list[Callable[[], None]] = self.net.node_listeners
        from schedd.cluster.slurm.bridge import attach  # Slurm clusters as peers: `[[peers]] kind = "slurm"`

        self.bridges = attach(self)
        self.array_nodes = frozenset(b.name for b in self.bridges)  # they take arrays (a job per task)

    async def start(self) -> None:
        self.net.open()
        self.engine.federation = self
        self.engine.listeners.append(self)
        self.runnode.recover()
        self.origin.recover()
        if self.cfg.federation.seeds and not await self.join():
            self.net.keep("joining", self._join_later)
        self.net.start_loops()
        self.runnode.start_loops()
        for bridge in self.bridges:
            bridge.open()
            self.net.keep(f"Slurm peer {bridge.name}", bridge.poll_loop)
        if self.engine.drain is not None:
            self.engine.kick()  # jobs queued here before the restart get their reason (or leave)
        log.info("federation: node %s, peers %s, heartbeat every %gs", self.name,
                 ", ".join(f"{p.name} ({p.url})" for p in self.peers.values()), self.net.interval)

    async def stop(self) -> None:
        await self.net.leave()
        await self.net.stop()
        for bridge in self.bridges:
            await bridge.close()

    # -- membership --------------------------------------------------------------------------

    async def join(self) -> bool:
        """Announce this node to a seed and learn the members from its answer (True once one answered).
        A seed's refusal (wrong token, a name taken) ends the daemon with its words: waiting cannot fix it."""
        body = {"Name": self.name, "URL": self.net._own_url(), **self.net.local_load(),
                "Features": sorted(self.net.features())}
        state, reason, by = self.net.own_drain()
        if state:  # a drained node that restarts stays drained in its peers' eyes
            body.update(Drain=state, DrainReason=reason, DrainedBy=by)
        seeds = [url for url in self.cfg.federation.seeds if url != body["URL"]]  # one list on every node is fine
        if not seeds:
            return True
        for url in seeds:
            seed = Peer(f"seed {url}", url)
            try:
                answer = await self.net.request(seed, "POST", "/join", json=body, timeout=self.net.call_timeout)
            except PeerRefused as e:
                raise ConfigError(f"joining the cluster through seed {url} was refused: {e}") from None
            except PeerError as e:
                log.warning("joining through seed %s: %s", url, e)
                continue
            # As any member's list: a name removed here (a tombstone) is not brought back, and the names
            # the seed removed are forgotten here too.
            self.net.merge(*parse_members(answer, self.cfg.http.allow_insecure_peers, url))
            log.warning("node %s joined the cluster through %s: members %s", self.name, url,
                        ", ".join(sorted(self.peers)) or "none")
            return True
        return False

    async def _join_later(self) -> None:
        """No seed answered at start: ask again every interval until one does."""
        try:
            while not await self.join():
                await self.net.sleep(self.net.interval)
        except ConfigError as e:  # too late to stop the daemon: it says so, and runs on with whom it knows
            log.error("%s; this node stops trying to join", e)
        await asyncio.Event().wait()  # joined: this loop has nothing more to do

    def _added(self, peer: Peer) -> None:
        self.runnode.peer_added(peer)

    async def remove_node(self, name: str) -> None:
        """Forget a node that is gone for good, here and on every member that answers. Its jobs of ours
        follow the node-failure rules (as if it had been judged down); refused while it is up."""
        if name == self.name:
            raise InvalidArgument(f"node {name} is this node; remove it from another member of the cluster")
        p = self.peers.get(name)
        if p is None:
            raise NotFound(f"no node named {name!r} in this cluster (nodes: {', '.join(sorted(self.peers)) or 'none'})")
        if p.static:
            raise InvalidArgument(f"node {name} is in this node's [[peers]] ({self.cfg.source or 'schedd.toml'}); "
                                  f"remove it there and restart")
        if self.net.heard_lately(name):
            raise InvalidState(f"node {name} is up; drain it and stop its schedd first (a node that is up "
                               f"cannot be removed)")
        self.origin.node_down(p)  # its jobs follow the node-failure rules, whether it was judged down yet or not
        self.net.remove(name)
        await asyncio.gather(*(self.net.request(q, "POST", f"/nodes/{name}/remove", json={"Node": self.name},
                                                timeout=self.net.call_timeout)
                               for q in self.peers.values() if q.up), return_exceptions=True)

    def removed_by_peer(self, name: str, by: str) -> None:
        """A member removed a node: forget it here too (when it is down here and was learned)."""
        p = self.peers.get(name)
        if p is None:
            return
        if p.static or self.net.heard_lately(name):
            log.warning("node %s removed node %s, which is %s here: kept", by, name,
                        "in [[peers]]" if p.static else "up")
            return
        self.origin.node_down(p)
        self.net.remove(name)

    # -- drains --------------------------------------------------------------------------------

    async def drain_node(self, name: str, reason: str, by: str, *, resume: bool = False) -> None:
        """Drain (or resume) this node, or a peer through its API."""
        if name in ("", self.name):
            await (self.engine.clear_drain(by) if resume else self.engine.set_drain(reason, by))
            return
        p = self.peers.get(name)
        if p is None:
            names = ", ".join(sorted([self.name, *self.peers]))
            raise NotFound(f"no node named {name!r} in this cluster (nodes: {names})")
        if p.bridge is not None:
            raise InvalidArgument(f"node {name} is a Slurm cluster: drain its nodes in Slurm "
                                  f"(scontrol update NodeName=... State=DRAIN Reason=...)")
        try:
            await self.net.request(p, "POST", f"/nodes/{name}/{'resume' if resume else 'drain'}",
                                   json={"Reason": reason, "By": by, "Node": self.name},
                                   timeout=self.net.call_timeout)
        except PeerRefused as e:
            raise e.error from None
        except PeerError as e:
            raise SchedError(f"cannot {'resume' if resume else 'drain'} {name}: {e}") from None
        if not resume and not p.drain[0]:
            p.drain = ("draining", reason, by)  # its next beat says more; nothing new goes there meanwhile
            self.origin.recall_from(p, only_any=True)
        elif resume:
            p.drain = ("", "", "")
            self.origin.peer_heard()
        self._nodes_changed()

    def drained_job(self, job: Job) -> bool:
        return self.origin.drained_job(job)

    def _drain_changed(self) -> None:
        self.origin.local_changed()
        self._nodes_changed()

    def _nodes_changed(self) -> None:
        for listener in self.node_listeners:
            listener()

    async def _reconnected(self, peer: Peer) -> None:
        """A peer is heard from again: it hears our copies of its jobs, and we pull its copies of ours."""
        self.runnode.resend(peer.name)
        await self.origin.reconcile(peer)

    # -- the engine's Cluster (schedd.core.cluster) -------------------------------------------

    def views(self) -> list[NodeView]:
        return self.net.views()

    def require_local_fit(self, spec: JobSpec, why: str) -> None:
        self.origin.require_local_fit(spec, why)

    async def submit(self, spec: JobSpec) -> Job | None:
        return await self.origin.submit(spec)

    async def submit_array(self, specs: list[JobSpec]) -> list[Job] | None:
        """An array for a Slurm peer (None: the specs are not that)."""
        from schedd.cluster.slurm.bridge import submit_array

        return await submit_array(self, specs)

    def takes_array(self, node: str) -> bool:
        """Whether node takes an array as a job per task (a Slurm peer)."""
        from schedd.cluster.slurm.bridge import slurm_peer

        return slurm_peer(self, node) is not None

    def takes_after(self, spec: JobSpec) -> bool:
        """Whether a job for spec.node may wait for its After jobs there (a Slurm peer, and they run on it)."""
        from schedd.cluster.slurm.bridge import takes_after

        return takes_after(self, spec)

    async def action(self, job: Job, name: RemoteAction) -> None:
        await self.origin.action(job, name)

    def origin_ready(self, origin: str) -> bool:
        return self.runnode.origin_ready(origin)

    async def may_start(self, job: Job) -> StartVerdict:
        return await self.runnode.may_start(job)

    # -- the engine's listener --------------------------------------------------------------

    def job_added(self, job: Job) -> None:
        self.runnode.job_added(job)

    def job_changed(self, job: Job, fields: frozenset[str], old_state: JobState) -> None:
        self.runnode.dirty(job)
        self.origin.job_changed(job, old_state)

    def job_released(self, job: Job) -> None:
        self.runnode.job_released(job)

    def job_loaded(self, job: Job) -> None:
        pass  # only jobs the federation has no part in leave memory (store.DEFERRED_SQL)

    def job_unloaded(self, job: Job) -> None:
        pass

    def manager_changed(self, facts: frozenset[str]) -> None:
        pass

    # -- for the D-Bus service, metrics and the dashboard --------------------------------------

    def node_rows(self) -> list[dict[str, Any]]:
        return self.net.node_rows()

    async def read_output(self, job: Job, stderr: bool, offset: int) -> bytes:
        return await self.origin.read_output(job, stderr, offset)

    async def list_cluster(self, states: list[str] | None, user_name: str | None, after: int,
                           limit: int) -> list[tuple[str, dict[str, Any]]]:
        return await self.origin.list_cluster(states, user_name, after, limit)
