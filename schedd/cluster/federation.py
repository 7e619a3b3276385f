"""Federation: peers over HTTP, no central controller. Each node owns its jobs and its SQLite.

This class composes the three sides and is what the rest of the daemon holds (it is the engine's
`schedd.core.cluster.Cluster` and one of its listeners):
- `schedd.cluster.peers`: the peer table, requests, heartbeats, liveness, node views and rows;
- `schedd.cluster.origin`: jobs of ours placed on peers or waiting for a node;
- `schedd.cluster.runnode`: jobs peers forwarded here, their states pushed back, fencing.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from schedd.api.http.web import Web
from schedd.cluster.origin import Origin
from schedd.cluster.peers import Peer, Peers
from schedd.cluster.runnode import RunNode
from schedd.config import Config
from schedd.core.cluster import RemoteAction, StartVerdict
from schedd.core.engine import Engine
from schedd.core.model import Job, JobSpec, JobState
from schedd.core.placement import NodeView

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
        self.net.start_loops()
        self.runnode.start_loops()
        for bridge in self.bridges:
            bridge.open()
            self.net.keep(f"Slurm peer {bridge.name}", bridge.poll_loop)
        log.info("federation: node %s, peers %s, heartbeat every %gs", self.name,
                 ", ".join(f"{p.name} ({p.url})" for p in self.peers.values()), self.net.interval)

    async def stop(self) -> None:
        await self.net.stop()
        for bridge in self.bridges:
            await bridge.close()

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
