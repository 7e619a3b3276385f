"""N real federated nodes in one process, for bench/federation_sim.py, on the fault harness's nodes.

The nodes are tests/unit/fedsim.py's `SimNode`s (a real Engine on a FakeExecutor, Store, Federation
and FederationApi on loopback aiohttp) inside a fault-free `Sim`; what this module adds is what the
benchmark needs and the tests do not: a heartbeat interval chosen per N, a first node too small for
the jobs placed (so a `Node=any` job has to be forwarded), and counters:

- bytes at the request seam (`SimNode._request`, every request a node makes): the JSON bodies of
  the request and of its answer, by path;
- bytes on the wire: every write of every socket transport of the process's loop (all of it is
  the nodes' loopback HTTP: request and status lines, headers and bodies, both ways);
- when each copy of a job was recorded on its node (an engine listener).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import sys
from asyncio import selector_events
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests" / "unit"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import aiohttp  # noqa: E402
import fedsim  # noqa: E402
import schedd.cluster.peers as peers_mod  # noqa: E402
from fedsim import Sim, SimNode, until  # noqa: E402
from schedd.core.model import Job, JobState  # noqa: E402


class Wire:
    """Bytes written to sockets by this process (each byte sent on loopback is also received once)."""

    total = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        cls._installed = True
        t = selector_events._SelectorSocketTransport
        write = t.write

        def counted_write(self, data) -> None:  # type: ignore[no-untyped-def]
            Wire.total += len(data)
            write(self, data)

        t.write = counted_write
        if "writelines" in t.__dict__:  # Python >= 3.12 writes some bodies without write()
            writelines = t.writelines

            def counted_writelines(self, chunks) -> None:  # type: ignore[no-untyped-def]
                chunks = list(chunks)
                Wire.total += sum(len(c) for c in chunks)
                writelines(self, chunks)

            t.writelines = counted_writelines


class Counters:
    """JSON body bytes at the request seam, by 'METHOD /path' (ids folded), and requests by the same."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = defaultdict(int)
        self.requests: dict[str, int] = defaultdict(int)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        return dict(self.bytes), dict(self.requests)


def _kind(method: str, path: str) -> str:
    head = path.split("?")[0].strip("/").split("/")
    return f"{method} /{head[0] if head else ''}"


def _size(obj: Any, raw: bool = False) -> int:
    if obj is None:
        return 0
    if raw and isinstance(obj, (bytes, bytearray)):
        return len(obj)
    return len(json.dumps(obj))  # aiohttp's json= serialises with json.dumps, as here


async def poll(pred: Callable[[], bool], what: str, timeout: float, every: float) -> None:
    """fedsim.until at a chosen pace: a predicate over N² links is not free at 100 Hz."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


class _ShortKeepalive:
    """aiohttp as schedd.cluster.peers sees it, but idle connections close after `keepalive` s."""

    def __init__(self, keepalive: float) -> None:
        self._keepalive = keepalive

    def __getattr__(self, name: str) -> Any:
        return getattr(aiohttp, name)

    def TCPConnector(self, **kw: Any) -> aiohttp.TCPConnector:  # noqa: N802 - the name peers.py calls
        return aiohttp.TCPConnector(keepalive_timeout=self._keepalive, **kw)


def distinct_ports(n: int) -> list[int]:
    """n free ports, all different (fedsim.free_port, called n times, may give one twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def fd_budget(n: int) -> bool:
    """Whether N nodes' keep-alive connections (both ends of N(N-1) links) fit this process's fd limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 2 * n * (n - 1) + 16 * n < 0.8 * soft


class Cluster:
    """N nodes n000..; the first has `small_cpus` (a job asking for more has to go elsewhere)."""

    def __init__(self, tmp: Path, n: int, interval: float, cpus: int = 2, small_cpus: int = 1) -> None:
        self.n, self.interval = n, interval
        self.names = [f"n{i:03d}" for i in range(n)]
        self.sim = Sim(tmp, seed=1, names=self.names, cpus=cpus)
        self.cpus, self.small_cpus = cpus, small_cpus
        self.counters = Counters()
        # One process holds both ends of every link: past its fd limit, idle links close after a
        # quarter interval (so each heartbeat opens its own connection), as they would not on N machines.
        self.reconnects = not fd_budget(n)
        peers_mod.aiohttp = _ShortKeepalive(interval / 4) if self.reconnects else aiohttp
        self.added: dict[tuple[str, int], tuple[str, float]] = {}  # (origin, origin id) -> (node, when recorded)
        Wire.install()

    @property
    def nodes(self) -> dict[str, SimNode]:
        return self.sim.nodes

    def _node(self, name: str, port: int, ports: dict[str, int]) -> SimNode:
        node = SimNode(self.sim, name, port, {p: pp for p, pp in ports.items() if p != name},
                       self.small_cpus if name == self.names[0] else self.cpus)
        # The interval is read from the Peers (heartbeats, liveness, timeouts), which reads it from
        # the config only when built: set both, before the node starts (its liveness is made then).
        node.cfg.http.heartbeat_interval_usec = int(self.interval * 1e6)
        node.fed.net.interval = self.interval
        request = node._request
        counters = self.counters

        async def counted(peer, method: str, path: str, **kw: Any) -> Any:  # type: ignore[no-untyped-def]
            kind = _kind(method, path)
            counters.requests[kind] += 1
            counters.bytes[kind] += _size(kw.get("json"))
            answer = await request(peer, method, path, **kw)
            counters.bytes[kind] += _size(answer, kw.get("raw", False))
            return answer

        node._request = counted
        cluster = self

        class Added:
            def job_added(self, job: Job) -> None:
                if job.origin_node:
                    cluster.added.setdefault((job.origin_node, job.origin_id), (name, cluster.sim.now()))

            def job_released(self, job: Job) -> None: pass
            def manager_changed(self, facts) -> None: pass  # type: ignore[no-untyped-def]
            def job_changed(self, job: Job, fields, old_state: JobState) -> None: pass  # type: ignore[no-untyped-def]

        node.engine.listeners.append(Added())
        return node

    async def start(self) -> float:
        """Start every node; returns seconds until every node had every other up, answering and ready."""
        sim = self.sim
        sim.t0 = asyncio.get_running_loop().time()
        ports = dict(zip(self.names, distinct_ports(self.n)))
        for name in self.names:
            sim.nodes[name] = self._node(name, ports[name], ports)
        # SimNode.start in two passes: every listener is bound before any node connects anywhere
        # (a port picked free could otherwise be taken meanwhile as the local end of a connection).
        for node in sim.nodes.values():
            await node.ex.open()
            await node.engine.recover(node.ex)
            await node.web.start()
        # Their heartbeats spread over an interval, as on separate machines (started together, every
        # node's beats would come in one burst an interval).
        for node in sim.nodes.values():
            await node.fed.start()
            await asyncio.sleep(self.interval / self.n)
        started = sim.now()
        await poll(self.all_ready, "every node up, answering and ready at every other", 20 + 4 * self.interval,
                   every=min(0.5, self.interval / 10))
        return sim.now() - started

    def ready_links(self) -> int:
        return sum(p.up and p.answering and n.fed.runnode.links[p.name].ready
                   for n in self.nodes.values() for p in n.fed.peers.values())

    def all_ready(self) -> bool:
        return all(p.up and p.answering and n.fed.runnode.links[p.name].ready
                   for n in self.nodes.values() for p in n.fed.peers.values())

    def aways(self) -> int:
        """How often a node found its own loop had not run for over an interval (the process fell behind)."""
        return sum(n.fed.net.liveness.stalls for n in self.nodes.values())

    async def stop(self) -> None:
        await self.sim.stop()


__all__ = ["Cluster", "Wire", "fedsim", "poll", "until"]
