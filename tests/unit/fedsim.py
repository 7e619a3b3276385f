"""A fault-injection harness for the federation protocol: real nodes in one process, faults at the seams.

Each `SimNode` is a real Engine (on a FakeExecutor), Store, Federation (Origin, RunNode, Peers) and
FederationApi on loopback aiohttp, heartbeats every 100 ms. Time is real (the Store's commit thread
and real sockets rule out a virtual clock cheaply); faults are injected where the federation meets
the world:

- links: every request a node makes (`fed.net.request`) goes through `Sim.send`, which may drop it
  before it leaves (PeerError, after a while), drop its answer (the peer did the work; PeerError
  here), or delay it before or after the peer handles it (so a state push, a forward's answer or
  a reconcile's snapshot arrives after later messages), per directed link by a seeded schedule;
- stalls (a SIGSTOP of the daemon): the node's federation sleeps (`Peers.sleep`) do not return, its
  incoming requests (a middleware) and its outgoing ones wait until it thaws, its executor neither
  starts programs nor reports ends meanwhile; its clock (`Peers.clock`) keeps going, so after the
  thaw its liveness sees the gap.

What actually ran is counted at the executor: every program start of a job, by (origin, origin id)
(`Sim.starts`), never from the states the daemons report. `check` states the issue's rules.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import random
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from dbus_fast import Variant

from schedd.api.http.web import Web
from schedd.cluster.api import FederationApi
from schedd.cluster.federation import Federation
from schedd.cluster.peers import Peer
from schedd.cluster.wire import PeerError
from schedd.config import Config, FederationConfig, HttpConfig, PeerConfig
from schedd.core.engine import Caller, Engine
from schedd.core.model import Job, JobState
from schedd.core.store import Store
from schedd.errors import SchedError
from schedd.executor.exits import ExitInfo
from schedd.executor.fake import FakeExecutor, FakeHost

TOKEN = "fedsim-token-0123456789abcdef"
ANY_ACCOUNT = FederationConfig(uid_min=1, uid_max=2**32 - 2, deny_groups=())
INTERVAL = 0.1  # the smallest heartbeat interval the config allows
THRESHOLD = 3 * INTERVAL  # a peer silent this long (of the judge's waking time) is down
MIB = 1 << 20


def user_uid() -> int:
    for pw in pwd.getpwall():
        if pw.pw_uid not in (0, 65534):
            return pw.pw_uid
    raise AssertionError("no non-root user in /etc/passwd: the federation runs no job of root elsewhere")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Key = tuple[str, int]  # (origin node, origin id): one job, wherever its copies run


@dataclass
class Start:
    t: float
    node: str  # where the program ran
    local_id: int
    key: Key
    attempt: int
    restarts: int


@dataclass
class Down:
    t: float
    judge: str
    peer: str
    granted: set[int]  # the judge's jobs that may have run on peer then (granted, started or active)


# -- the fault plan ----------------------------------------------------------------------------

@dataclass
class Episode:
    """One fault from `at` to `at + length` seconds after the scenario starts."""

    at: float
    length: float
    kind: str  # stall | cut | delay | lose-answer
    node: str = ""  # stall: the node
    src: str = ""  # cut, delay, lose-answer: requests made by src ...
    dst: str = ""  # ... to dst
    p: float = 1.0  # cut/lose-answer: chance a message is dropped; delay: chance it is delayed
    max_delay: float = 0.0
    paths: tuple[str, ...] = ()  # only requests whose path starts with one of these ("" = all)

    @property
    def end(self) -> float:
        return self.at + self.length

    def matches(self, src: str, dst: str, method: str, path: str) -> bool:
        if (self.src, self.dst) != (src, dst):
            return False
        return not self.paths or any(f"{method} {path}".startswith(p) for p in self.paths)

    def __str__(self) -> str:
        span = f"{self.at:.2f}+{self.length:.2f}s"
        if self.kind in ("stall", "restart"):
            return f"{self.kind}({self.node} {span})"
        what = f"{self.src}->{self.dst}"
        paths = f" {'|'.join(self.paths)}" if self.paths else ""
        extra = f" <= {self.max_delay:.2f}s" if self.kind == "delay" else ""
        return f"{self.kind}({what}{paths} p={self.p:.2f}{extra} {span})"


def random_plan(rng: random.Random, names: list[str]) -> list[Episode]:
    """2-4 faults within the first 2.3 s: stalls of an origin or a run node, cut links (one way or
    both), delays that reorder messages, lost answers of forwards."""
    plan: list[Episode] = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(["stall", "stall", "cut", "cut2", "delay", "delay", "lose-answer", "restart"])
        at, length = rng.uniform(0.2, 1.0), rng.uniform(0.5, 1.3)
        src, dst = rng.sample(names, 2)
        if kind in ("stall", "restart"):
            plan.append(Episode(at, length if kind == "stall" else rng.uniform(0.1, 0.8), kind,
                                node=rng.choice(names)))
        elif kind in ("cut", "cut2"):
            p = rng.choice([1.0, 1.0, 0.7])
            paths = rng.choice([(), (), ("POST /mirror",), ("POST /heartbeat",)])
            plan.append(Episode(at, length, "cut", src=src, dst=dst, p=p, paths=paths))
            if kind == "cut2":
                plan.append(Episode(at, length, "cut", src=dst, dst=src, p=p, paths=paths))
        elif kind == "delay":
            paths = rng.choice([(), ("POST /mirror", "GET /jobs"), ("POST /jobs",), ("POST /starts",)])
            plan.append(Episode(at, length, "delay", src=src, dst=dst, p=rng.uniform(0.3, 1.0),
                                max_delay=rng.uniform(0.1, 0.45), paths=paths))
        else:
            plan.append(Episode(at, length, "lose-answer", src=src, dst=dst, p=rng.uniform(0.5, 1.0),
                                paths=rng.choice([("POST /jobs",), ("POST /starts",), ("POST /mirror",)])))
    return sorted(plan, key=lambda e: e.at)


# -- one node ----------------------------------------------------------------------------------

class SimExecutor(FakeExecutor):
    """The fake executor, counting every program start, frozen while its daemon is."""

    def __init__(self, node: "SimNode", host: FakeHost) -> None:
        super().__init__(node.engine.on_exit, host)
        self.node = node

    async def _start(self, job: Job, alloc, ready):
        async def thaw_then_ready() -> None:
            await self.node.thawed()  # nothing after the grant: the program is released right after _go
            if ready is not None:
                await ready

        handle = await super()._start(job, alloc, thaw_then_ready())
        self.node.started(job)
        return handle

    def end(self, job_id: int, info) -> None:
        super().end(job_id, info)
        self.node.sim.ends[(self.node.name, job_id)] = self.node.sim.now()


class SimNode:
    def __init__(self, sim: "Sim", name: str, port: int, peers: dict[str, int], cpus: int,
                 host: FakeHost | None = None) -> None:
        self.sim, self.name, self.port, self.peer_ports, self.cpus = sim, name, port, peers, cpus
        self.host = host if host is not None else FakeHost()  # the machine: its programs outlive a daemon
        d = sim.tmp / name
        d.mkdir(exist_ok=True)
        tok = d / "token"
        tok.write_text(TOKEN)
        os.chmod(tok, 0o600)
        self.cfg = Config(node_name=name, cpu_ids=list(range(cpus)), memory=1 << 30, state_dir=d,
                          http=HttpConfig(listen=("127.0.0.1", port), token_file=tok,
                                          heartbeat_interval_usec=int(INTERVAL * 1e6)),
                          peers=[PeerConfig(p, f"http://127.0.0.1:{pp}") for p, pp in peers.items()],
                          federation=ANY_ACCOUNT)
        self.store = Store(d / "schedd.db")
        self.engine = Engine(self.cfg, self.store)
        self.ex = SimExecutor(self, self.host)
        self.web = Web(self.cfg.http)
        self.fed = Federation(self.engine, self.cfg, self.web)
        FederationApi(self.fed, self.web)
        self.web.app.middlewares.append(self._frozen_middleware)
        self._stalled = False
        self.down = False
        self._held: list[asyncio.Future] = []  # what waits for the thaw: sleeps, requests, starts, ends
        # The seams: requests, sleeps, node-down judgments.
        self._request = self.fed.net.request
        self.fed.net.request = self._send
        real_sleep = self.fed.net.sleep

        async def sleep(delay: float) -> None:
            await real_sleep(delay)
            await self.thawed()

        self.fed.net.sleep = sleep
        down = self.fed.net.on_down

        def on_down(peer: Peer) -> None:
            granted = {j.id for j in self.engine.jobs.values()
                       if j.remote_node == peer.name and not j.state.terminal
                       and (j.start_granted or j.start_time > 0 or j.state.active)}
            sim.downs.append(Down(sim.now(), self.name, peer.name, granted))
            sim.log(f"{self.name} judges {peer.name} down (granted there: {sorted(granted)})")
            down(peer)

        self.fed.net.on_down = on_down

    # -- stalls -----------------------------------------------------------------------

    @property
    def stalled(self) -> bool:
        return self._stalled

    async def thawed(self) -> None:
        if self._stalled:
            fut = asyncio.get_running_loop().create_future()
            self._held.append(fut)
            await fut

    def stall(self) -> None:
        self.sim.log(f"{self.name} stalls")
        self._stalled = True

    def thaw(self) -> None:
        """Everything that waited goes on, in a seeded random order: after a SIGCONT, which of the
        timers, sockets and child exits the daemon reads first is not ours to choose."""
        if not self._stalled:
            return
        self._stalled = False
        held, self._held = self._held, []
        self.sim.rng.shuffle(held)
        self.sim.log(f"{self.name} thaws ({len(held)} waiting)")
        for fut in held:
            if not fut.done():
                fut.set_result(None)

    @web.middleware
    async def _frozen_middleware(self, request: web.Request, handler):
        await self.thawed()  # a stopped daemon reads nothing; what was sent waits in its socket
        response = await handler(request)
        await self.thawed()
        return response

    async def _send(self, peer: Peer, method: str, path: str, **kw: Any) -> Any:
        await self.thawed()
        answer = await self.sim.send(self, peer, method, path, kw)
        await self.thawed()  # an answer that came while we were stopped is read after the thaw
        return answer

    # -- runs -------------------------------------------------------------------------

    def key_of(self, job: Job) -> Key:
        return (job.origin_node, job.origin_id) if job.origin_node else (self.name, job.id)

    def started(self, job: Job) -> None:
        """A program was let run: count it, and let it end after its runtime."""
        key = self.key_of(job)
        self.sim.starts[key].append(Start(self.sim.now(), self.name, job.id, key, job.attempt, job.restarts))
        self.sim.log(f"start {key} on {self.name} as {job.id} (attempt {job.attempt})")
        run = job.restarts
        loop = asyncio.get_running_loop()
        loop.call_later(self.sim.runtime(key), self._end, job.id, run)

    def _end(self, job_id: int, run: int) -> None:
        """The program ends on the machine; the daemon running there now (if any) hears of it."""
        node = self.sim.nodes[self.name]  # after a restart: the new daemon
        if node.stalled:
            fut = asyncio.get_running_loop().create_future()
            fut.add_done_callback(lambda _: node._end(job_id, run))
            node._held.append(fut)
            return
        unit = self.host.units.get(job_id)
        if unit is None or unit.run != run:
            return
        if job_id in node.ex.watched and not node.down:
            node.ex.exit(job_id, 0)
        else:
            self.host.end(job_id, ExitInfo(exit_code=0))  # recorded for the daemon that recovers it
            self.sim.ends[(self.name, job_id)] = self.sim.now()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self.ex.open()
        await self.engine.recover(self.ex)
        await self.web.start()
        await self.fed.start()

    async def stop(self) -> None:
        if self.down:
            return
        self.down = True
        self.thaw()
        await self.fed.stop()
        await self.web.stop()
        await self.engine.shutdown()
        self.store.close()

    async def crash(self) -> None:
        """kill -9: nothing more of this daemon runs (starts under way never finish); its programs go on.
        (Its store is drained, not cut off: rows already handed to the committer land, as most would.)"""
        self.sim.log(f"{self.name} is killed")
        self.down = True
        self.ex.crash()
        for t in self.fed.net.loops + list(self.fed.net._tasks) + list(self.engine._tasks):
            t.cancel()
        self.thaw()
        await self.fed.stop()
        await self.web.stop()
        await self.engine.shutdown()
        self.store.close()

    async def restarted(self) -> "SimNode":
        """A new daemon on the same machine and state directory."""
        node = SimNode(self.sim, self.name, self.port, self.peer_ports, self.cpus, self.host)
        self.sim.nodes[self.name] = node
        await node.start()
        self.sim.log(f"{self.name} restarted")
        return node


# -- the simulation ----------------------------------------------------------------------------

@dataclass
class Submitted:
    key: Key
    node: str  # Node= as submitted
    requeue: bool


@dataclass
class Sim:
    tmp: Path
    seed: int
    names: list[str] = field(default_factory=lambda: ["a", "b", "c"])
    cpus: int = 2
    plan: list[Episode] = field(default_factory=list)
    quiet: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.msg_rng = random.Random(self.seed * 7919 + 1)  # per message: drops and delays
        self.nodes: dict[str, SimNode] = {}
        self.starts: dict[Key, list[Start]] = defaultdict(list)
        self.ends: dict[tuple[str, int], float] = {}  # (node, local id) -> when that program ended
        self.downs: list[Down] = []
        self.jobs: dict[Key, Submitted] = {}
        self.refused: list[str] = []
        self.events: list[str] = []
        self.runtimes: dict[Key, float] = {}
        self.t0 = 0.0
        self.fault_counts: dict[str, int] = defaultdict(int)
        self.lose_once: dict[tuple[str, str, str], int] = defaultdict(int)  # (src, dst, "METHOD path") -> answers to lose

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    def log(self, what: str) -> None:
        self.events.append(f"{self.now():7.3f} {what}")

    def runtime(self, key: Key) -> float:
        return self.runtimes.setdefault(key, self.rng.uniform(0.05, 0.45))

    # -- nodes ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.t0 = asyncio.get_running_loop().time()
        ports = {n: free_port() for n in self.names}
        for n in self.names:
            self.nodes[n] = SimNode(self, n, ports[n], {p: ports[p] for p in self.names if p != n}, self.cpus)
        for node in self.nodes.values():
            await node.start()
        await until(lambda: all(p.up and p.answering for n in self.nodes.values() for p in n.fed.peers.values())
                    and all(n.fed.runnode.links[p].ready for n in self.nodes.values() for p in n.fed.peers),
                    "every node up, answering and ready at every other", 5.0)

    async def stop(self) -> None:
        for node in self.nodes.values():
            node.thaw()
        for node in self.nodes.values():
            await node.stop()

    # -- faults ---------------------------------------------------------------------------

    def active(self, kind: str, src: str, dst: str, method: str, path: str) -> list[Episode]:
        t = self.now()
        return [e for e in self.plan if e.kind == kind and e.at <= t < e.end and e.matches(src, dst, method, path)]

    async def send(self, node: SimNode, peer: Peer, method: str, path: str, kw: dict[str, Any]) -> Any:
        """One request from node to peer through the faults of that link now."""
        loop = asyncio.get_running_loop()
        timeout = kw.get("timeout", 10.0)
        deadline = loop.time() + timeout
        src, dst, what = node.name, peer.name, f"{method} {path}"
        r = self.msg_rng
        if any(r.random() < e.p for e in self.active("cut", src, dst, method, path)):
            self.fault_counts["dropped"] += 1
            await asyncio.sleep(min(timeout, r.uniform(0.0, 0.3)))  # a timeout or a reset, after a while
            raise PeerError(f"fedsim: {src}->{dst} {what} dropped")
        before = after = 0.0
        for e in self.active("delay", src, dst, method, path):
            if r.random() < e.p:
                d = r.uniform(0.0, e.max_delay)
                if r.random() < 0.5:
                    before += d
                else:
                    after += d
        if before or after:
            self.fault_counts["delayed"] += 1
        if before:
            await asyncio.sleep(min(before, timeout))
            if before >= timeout:
                raise PeerError(f"fedsim: {src}->{dst} {what} timed out (delayed {before:.2f}s)")
        kw = dict(kw, timeout=max(0.05, deadline - loop.time()))
        answer = await node._request(peer, method, path, **kw)
        lose = any(r.random() < e.p for e in self.active("lose-answer", src, dst, method, path))
        if not lose and self.lose_once[(src, dst, what)] > 0:
            self.lose_once[(src, dst, what)] -= 1
            lose = True
        if lose:
            self.fault_counts["answers lost"] += 1
            self.log(f"answer of {src}->{dst} {what} lost")
            raise PeerError(f"fedsim: the answer of {dst} to {what} was lost")
        if after:
            left = deadline - loop.time()
            await asyncio.sleep(min(after, max(0.0, left)))
            if after >= left:
                raise PeerError(f"fedsim: {src}->{dst} {what}: the answer came after the timeout")
        return answer

    async def run_plan(self) -> None:
        """Stalls and restarts start and end as planned (link faults are read by `send` as time goes)."""
        loop = asyncio.get_running_loop()
        timed = [e for e in self.plan if e.kind in ("stall", "restart")]
        marks = sorted([(e.at, 1, e) for e in timed] + [(e.end, 0, e) for e in timed], key=lambda m: (m[0], m[1]))
        depth: dict[str, int] = defaultdict(int)
        for at, begin, e in marks:
            await asyncio.sleep(max(0.0, at - self.now()))
            node = self.nodes[e.node]
            if e.kind == "restart":
                if begin and not node.down:
                    await node.crash()
                elif not begin and node.down:
                    await node.restarted()
                continue
            if begin:
                depth[e.node] += 1
                if depth[e.node] == 1:
                    node.stall()
            else:
                depth[e.node] -= 1
                if depth[e.node] == 0:
                    node.thaw()
        end = max((e.end for e in self.plan), default=0.0)
        await asyncio.sleep(max(0.0, end - self.now()))
        self.log("healed")
        del loop

    def stalls(self, name: str) -> list[tuple[float, float]]:
        return [(e.at, e.end) for e in self.plan if e.kind == "stall" and e.node == name]

    # -- jobs -----------------------------------------------------------------------------

    async def submit(self, origin: str, node: str, requeue: bool, uid: int) -> None:
        await until(lambda: not self.nodes[origin].down, f"{origin} running again", 10.0)
        o = self.nodes[origin]
        await o.thawed()  # a stopped daemon answers no D-Bus call until it runs again
        props = {"Command": Variant("as", ["true"]), "Memory": Variant("t", 64 * MIB),
                 "Node": Variant("s", node), "Requeue": Variant("b", requeue)}
        try:
            job = await asyncio.wait_for(o.engine.submit(props, Caller(uid=uid)), 10.0)
        except Exception as e:  # noqa: BLE001 - a refused submission is not acknowledged: not a job to check
            self.refused.append(f"{origin} Node={node}: {type(e).__name__}: {e}")
            return
        key = (origin, job.id)
        self.jobs[key] = Submitted(key, node, requeue)
        self.log(f"submitted {key} Node={node} Requeue={requeue}")

    async def submit_random(self, count: int, within: float) -> None:
        uid = user_uid()
        tasks = []
        for _ in range(count):
            await asyncio.sleep(self.rng.uniform(0, 2 * within / count))
            origin = self.rng.choice(["a", "a", "a", "b", "c"])
            node = self.rng.choice(["any", "any"] + [n for n in self.names if n != origin])
            tasks.append(asyncio.ensure_future(self.submit(origin, node, self.rng.random() < 0.6, uid)))
        await asyncio.gather(*tasks)

    # -- what must hold -------------------------------------------------------------------

    def record(self, key: Key) -> Job:
        return self.nodes[key[0]].engine.get(key[1])

    def terminal(self) -> bool:
        return all(self.record(k).state.terminal for k in self.jobs)

    def copy_of(self, job: Job) -> Job | None:
        """The copy the origin's record names (None: it ran, or never ran, at the origin)."""
        node = self.nodes.get(job.remote_node)
        if node is None or not job.remote_id:
            return None
        return node.engine.get(job.remote_id)

    def agreed(self) -> bool:
        for k in self.jobs:
            job = self.record(k)
            copy = self.copy_of(job)
            if not job.state.terminal or (copy is not None and copy.state != job.state):
                return False
        return True

    async def settle(self, timeout: float) -> None:
        """Until every job has ended at its origin and on its node (or the deadlines pass: then `check`
        says which did not)."""
        for pred, limit in ((self.terminal, timeout), (self.agreed, 3.0)):
            try:
                await until(pred, "", limit)
            except AssertionError:
                return

    def check(self) -> list[str]:
        """The issue's rules; returns what broke (empty: all held)."""
        bad: list[str] = []
        # A submission that raised (its daemon was killed under it) may still have left a job: it is
        # not owed an end, but it may not run twice either.
        unacked = {k for k in self.starts if k not in self.jobs}
        for k in sorted(self.jobs.keys() | unacked):
            try:
                job = self.record(k)
            except SchedError:
                bad.append(f"{k}: its program ran, but its origin has no record of it")
                continue
            copy = self.copy_of(job)
            starts = self.starts.get(k, [])
            if k in unacked:
                if len(starts) > 1 and self.why_twice(k, starts, job) is not None:
                    bad.append(f"(unacknowledged) {self.why_twice(k, starts, job)}")
                continue
            if not job.state.terminal:
                bad.append(f"{k} lost: still {job.state.value} at its origin")
            elif copy is not None and copy.state != job.state:
                bad.append(f"{k} ended {job.state.value} ({job.reason}) at its origin but {copy.state.value} "
                           f"({copy.reason}) on {job.remote_node}, which ran its current copy")
            if job.state == JobState.COMPLETED and not starts:
                bad.append(f"{k} COMPLETED without its program ever starting")
            if len(starts) > 1:
                why = self.why_twice(k, starts, job)
                if why is not None:
                    bad.append(why)
            for where, done in (("its origin", self.completed_origin.get(k)), ("a node", self.completed_any.get(k))):
                late = [s for s in starts if done is not None and s.t > done]
                if late and (where == "its origin" or self.why_twice(k, starts, job) is not None):
                    bad.append(f"{k} started again on {late[0].node} at {late[0].t:.3f}s after {where} had its "
                               f"completion at {done:.3f}s")
        bad.extend(self.own_stall_downs())
        bad.extend(self.stale_first())
        return bad

    def stale_first(self) -> list[str]:
        """After an origin judged a node down, that node starts no other job of that origin's while a
        copy the origin gave up on (running there at the judgment) still runs."""
        bad = []
        for d in self.downs:
            stale = [s for k, ss in self.starts.items() if k[0] == d.judge and k[1] in d.granted
                     for s in ss if s.node == d.peer and s.t <= d.t]
            for s in stale:
                ended = self.ends.get((s.node, s.local_id), float("inf"))
                if ended <= d.t:
                    continue
                later = [n for k, ss in self.starts.items() if k[0] == d.judge for n in ss
                         if n.node == d.peer and d.t < n.t < ended]
                if later:
                    bad.append(f"{d.peer} started {later[0].key} at {later[0].t:.3f}s while its stale copy of "
                               f"{s.key} (given up on by {d.judge} at {d.t:.3f}s) ran until {ended:.3f}s")
        return bad

    def why_twice(self, key: Key, starts: list[Start], job: Job) -> str | None:
        """A second run is allowed only after the node that ran (granted) the first was judged down by
        the origin, Requeue=true, and then Restarts says so. None: allowed."""
        for first, second in zip(starts, starts[1:]):
            downs = [d for d in self.downs if d.judge == key[0] and d.peer == first.node
                     and key[1] in d.granted and first.t <= d.t + 0.05 and d.t <= second.t]
            if not downs or not job.spec.requeue or job.restarts < 1:
                return (f"{key} ran twice: on {first.node} at {first.t:.3f}s and on {second.node} at "
                        f"{second.t:.3f}s (Requeue={job.spec.requeue}, Restarts={job.restarts}, "
                        f"{first.node} judged down by the origin with it granted: {bool(downs)})")
        return None

    def own_stall_downs(self) -> list[str]:
        """A node that was itself stalled must not judge a peer down for the silence it slept through:
        a down right after the judge's thaw of a peer that was neither stalled nor behind a faulty link."""
        bad = []
        for d in self.downs:
            for at, end in self.stalls(d.judge):
                if not end <= d.t <= end + THRESHOLD + 0.1:
                    continue
                peer_faulty = any(
                    (e.kind in ("stall", "restart") and e.node == d.peer)
                    or (e.kind in ("cut", "delay") and e.matches(d.peer, d.judge, "POST", "/heartbeat"))
                    for e in self.plan if e.at < d.t and e.end > at - THRESHOLD)
                if not peer_faulty:
                    bad.append(f"{d.judge} judged {d.peer} down at {d.t:.3f}s, {d.t - end:.3f}s after its own stall "
                               f"({at:.2f}-{end:.2f}s) ended; {d.peer} was healthy")
        return bad

    # -- the listener that notes when an origin hears a completion ------------------------

    def watch_completions(self) -> None:
        self.completed_any: dict[Key, float] = {}  # when the first copy (or the origin's record) completed
        self.completed_origin: dict[Key, float] = {}  # when the origin's record did
        sim = self

        class Watch:
            def __init__(self, node: SimNode) -> None:
                self.node = node

            def job_added(self, job: Job) -> None: pass
            def job_released(self, job: Job) -> None: pass
            def job_loaded(self, job: Job) -> None: pass
            def job_unloaded(self, job: Job) -> None: pass
            def manager_changed(self, facts) -> None: pass

            def job_changed(self, job: Job, fields, old_state: JobState) -> None:
                if job.state == JobState.COMPLETED and old_state != job.state:
                    key = self.node.key_of(job)
                    sim.completed_any.setdefault(key, sim.now())
                    if not job.origin_node:
                        sim.completed_origin.setdefault(key, sim.now())
                    sim.log(f"{key} COMPLETED on {self.node.name}'s record {job.id}")

        for node in self.nodes.values():
            node.engine.listeners.append(Watch(node))

    # -- reports --------------------------------------------------------------------------

    def summary(self) -> str:
        runs = sum(len(s) for s in self.starts.values())
        twice = {k: s for k, s in self.starts.items() if len(s) > 1}
        def why(k: Key, s: list[Start]) -> str:
            try:
                allowed = self.why_twice(k, s, self.record(k)) is None
            except SchedError:
                allowed = False
            return f"{k[0]}{k[1]}: {s[0].node} {'judged down' if allowed else 'NOT judged down with it granted'} -> {s[1].node}"

        why = ", ".join(why(k, s) for k, s in sorted(twice.items()))
        states = defaultdict(int)
        for k in self.jobs:
            states[self.record(k).state.value] += 1
        faults = ", ".join(f"{n} {c}" for n, c in sorted(self.fault_counts.items()))
        return (f"fedsim seed={self.seed}: {len(self.jobs)} jobs ({dict(sorted(states.items()))}), {runs} starts, "
                f"{len(twice)} double{' (' + why + ')' if twice else ''}, {len(self.downs)} downs, "
                f"{len(self.refused)} refused; faults: {faults or 'none'}; plan: "
                f"{'; '.join(map(str, self.plan)) or 'none'}")

    def describe(self) -> str:
        lines = [self.summary()]
        for k in sorted(self.jobs):
            job = self.record(k)
            copy = self.copy_of(job)
            lines.append(f"  {k}: {job.state.value}/{job.reason} attempt={job.attempt} restarts={job.restarts} "
                         f"remote={job.remote_node}:{job.remote_id} copy={copy.state.value if copy else '-'} "
                         f"starts={[(s.node, round(s.t, 3)) for s in self.starts.get(k, [])]}")
        lines.extend(self.refused)
        lines.extend(self.events[-80:])
        return "\n".join(lines)


async def until(pred: Callable[[], bool], what: str, timeout: float, describe: Callable[[], str] | None = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{describe()}" if describe else ""))
        await asyncio.sleep(0.01)
