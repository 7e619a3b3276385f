"""Federation: peers over HTTP, no central controller. Each node owns its jobs and its SQLite.

- Heartbeats are pushed to every peer each interval; a peer silent for 3 intervals is
  down, and up again as soon as it is heard from.
- A job placed on a peer is forwarded with (origin node, origin id): the peer's unique
  index turns a retried forward into the first copy. The origin keeps a record whose
  state the peer pushes back on every transition; on reconnect the origin pulls the
  peer's copies again (reconcile) and fences any copy it has since placed elsewhere.
- When a peer goes down, the origin requeues what ran there for it (once, unless
  `Requeue` is false: then FAILED `node-failure`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from schedd.config import Config
from schedd.core.engine import Engine
from schedd.errors import BY_DBUS_NAME, AccessDenied, InvalidState, SchedError
from schedd.core.model import AWAITING_NODE, TERMINAL_STATES, Job, JobSpec, JobState, Reason, now_usec
from schedd.cluster.wire import DEFAULT_OUTPUT, PeerError, PeerRefused, job_state_json, mirrored_fields, spec_to_json
from schedd.core.placement import ANY, Need, NodeView, choose, ledger_load
from schedd.api.http.web import Web

log = logging.getLogger(__name__)

API = "/api/v1"
MAX_NODE_REQUEUES = 1  # a job is requeued after a node failure once (Requeue=false: never)
FORWARD_TRIES = 3


@dataclass
class Peer:
    name: str
    url: str
    up: bool = False
    view: NodeView | None = None
    last_seen_usec: int = 0
    last_seen: float = 0.0  # monotonic
    down_handled: bool = False  # its jobs were requeued since it was last heard from
    refused: bool = False  # it answered our heartbeat with 4xx (logged once, not every beat)
    # States of our copies of its jobs that it has not heard yet, in order: one per transition (a
    # change that is not a transition replaces the job's last one), so it sees RUNNING even of short jobs.
    outbox: list[dict[str, Any]] = field(default_factory=list)
    last: dict[int, dict[str, Any]] = field(default_factory=dict)  # job id -> its latest entry in outbox
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Federation:
    def __init__(self, engine: Engine, cfg: Config, web: Web) -> None:
        self.engine = engine
        self.cfg = cfg
        self.web = web
        self.name = cfg.node_name
        self.interval = cfg.http.heartbeat_interval_usec / 1e6
        self.peers: dict[str, Peer] = {p.name: Peer(p.name, p.url) for p in cfg.peers}
        self.waiting: dict[int, Job] = {}  # our jobs no node has taken yet
        self._avoid: dict[int, set[str]] = {}  # nodes a requeued job must not go back to
        self._placing: set[int] = set()
        self._place_soon = False
        self._inflight: dict[tuple[str, int], asyncio.Future] = {}  # forwards being recorded here
        self._by_origin: dict[tuple[str, int], int] = {}  # (origin node, its id) -> our copy's id
        self._load: tuple[float, int, int] = (-1.0, 0, 0)  # (when, pending, running): counted at most every 0.1 s
        self._started = time.monotonic()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self.forwards = 0  # counted for the journal and tests (forward_retries)
        self.forward_retries = 0
        self.node_listeners: list[Callable[[], None]] = []  # told when a peer's state or load changes

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.web.token}"},
            connector=aiohttp.TCPConnector(ssl=self.web.client_ssl() or True, limit=64),
        )
        self.engine.federation = self
        self.engine.listeners.append(self)
        self._started = time.monotonic()
        for job in self.engine.jobs.values():
            if job.origin_node:
                self._by_origin[(job.origin_node, job.origin_id)] = job.id
            if job.awaiting_node and not job.state.terminal:
                self.waiting[job.id] = job
            if job.origin_node in self.peers and job.origin_id:
                self._dirty(job)  # the origin hears our state again
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._keep("heartbeats", self._heartbeats)),
                       loop.create_task(self._keep("liveness", self._watch))]
        self._loops += [loop.create_task(self._keep(f"pushes to {p.name}", self._pusher, p)) for p in self.peers.values()]
        log.info("federation: node %s, peers %s, heartbeat every %gs", self.name,
                 ", ".join(f"{p.name} ({p.url})" for p in self.peers.values()), self.interval)

    async def _keep(self, what: str, loop_fn, *args) -> None:
        """Run one of the loops for ever: a bug in a pass is logged, and never ends heartbeats for good."""
        while True:
            try:
                await loop_fn(*args)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("federation: %s failed; starting it again", what)
                await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        for t in self._loops + list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro) -> None:
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
        now = time.monotonic()
        if now - when > 0.1:
            pending = sum(1 for j in e.jobs.values() if j.state.queued and not j.remote)
            running = sum(1 for j in e.jobs.values() if j.state.active and not j.remote)
            self._load = (now, pending, running)
        return ledger_load(l, pending, running)

    def views(self) -> list[NodeView]:
        """This node and every peer, as placement sees them (for metrics too). What jobs queued here
        ask for is not free for a newcomer: a burst of `any` jobs spills over instead of queueing here."""
        local = NodeView.of_load(self.name, True, self.local_load(), local=True)
        cpus = memory = gpus = 0
        for job in self.engine.scheduler.queued():
            cpus, memory, gpus = cpus + job.spec.cpus, memory + job.spec.memory, gpus + job.spec.gpus
        if cpus:
            local = dataclasses.replace(local, free_cpus=max(0, local.free_cpus - cpus),
                                        free_memory=max(0, local.free_memory - memory),
                                        free_gpus=max(0, local.free_gpus - gpus))
        out = [local]
        for p in self.peers.values():
            out.append(dataclasses.replace(p.view, up=p.up) if p.view else NodeView(p.name, False, known=False))
        return out

    def node_rows(self) -> list[dict[str, Any]]:
        """ListNodes: DESIGN's keys, this node first."""
        rows = [{"Name": self.name, "State": "up", "URL": self._own_url(), "Local": True, **self.local_load(),
                 "LastSeenUSec": now_usec()}]
        for p in self.peers.values():
            v = p.view or NodeView(p.name, False, known=False)
            rows.append({
                "Name": p.name, "State": "up" if p.up else "down", "URL": p.url, "Local": False, **v.load(),
                "LastSeenUSec": p.last_seen_usec,
            })
        return rows

    def _own_url(self) -> str:
        listen = self.cfg.http.listen
        if listen is None:
            return ""
        host = f"[{listen[0]}]" if ":" in listen[0] else listen[0]
        return f"{'https' if self.cfg.http.tls_cert else 'http'}://{host}:{listen[1]}"

    # -- HTTP client ---------------------------------------------------------------------

    async def _request(self, peer: Peer, method: str, path: str, *, json: Any = None, params: dict | None = None,
                       timeout: float = 10.0, raw: bool = False) -> Any:
        assert self._session is not None
        try:
            async with self._session.request(method, peer.url + API + path, json=json, params=params,
                                             timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                if r.status >= 500:
                    raise PeerError(f"node {peer.name} answered {r.status}: {(await r.text())[:200]}")
                if r.status >= 400:
                    try:
                        body = await r.json()
                        cls = BY_DBUS_NAME.get(body.get("dbus_error", ""), SchedError)
                        message = body.get("message", "")
                    except (aiohttp.ContentTypeError, ValueError, AttributeError):
                        cls, message = SchedError, await r.text()
                    if r.status == 401:
                        message = f"{message} (is http.token_file the same on every node?)"
                    raise PeerRefused(cls(f"node {peer.name}: {message}"))
                return await r.read() if raw else await r.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            raise PeerError(f"node {peer.name} ({peer.url}) unreachable: {e or type(e).__name__}") from None

    # -- heartbeats and liveness -----------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            body = {"Name": self.name, "URL": self._own_url(), **self.local_load()}
            for p in self.peers.values():
                self._spawn(self._beat(p, body))
            await asyncio.sleep(self.interval)

    async def _beat(self, peer: Peer, body: dict) -> None:
        try:
            await self._request(peer, "POST", "/heartbeat", json=body, timeout=max(0.5, self.interval))
            if peer.refused:
                peer.refused = False
                log.info("heartbeats to %s are accepted again", peer.name)
        except PeerRefused as e:
            if not peer.refused:
                peer.refused = True
                log.warning("heartbeat to %s refused: %s", peer.name, e)
        except PeerError:
            pass  # our silence is what tells *it* we are down; its state is told by its own beats

    def heard(self, name: str, load: dict[str, int]) -> None:
        """A heartbeat arrived from a peer (validated by the API)."""
        peer = self.peers[name]
        peer.view = NodeView.of_load(name, True, load)
        peer.last_seen = time.monotonic()
        peer.last_seen_usec = now_usec()
        peer.down_handled = False
        self._nodes_changed()
        if not peer.up:
            peer.up = True
            log.info("node %s is up", name)
            self._spawn(self._reconnected(peer))
        elif self.waiting:
            self._place_waiting()

    async def _watch(self) -> None:
        """Mark peers down after 3 silent intervals (checked four times an interval). A peer not heard
        from since this daemon started counts as down as well once 3 intervals have passed: the jobs it
        ran for us before a restart of ours must not wait for it for ever."""
        while True:
            await asyncio.sleep(self.interval / 4)
            now = time.monotonic()
            for p in self.peers.values():
                silent = now - max(p.last_seen, self._started)
                if silent <= 3 * self.interval or (not p.up and p.down_handled):
                    continue
                if p.up:
                    log.warning("node %s is down: no heartbeat for %.1fs", p.name, silent)
                else:
                    log.warning("node %s has not been heard from since this node started", p.name)
                p.up = False
                p.down_handled = True
                self._nodes_changed()
                self._node_down(p)

    def _nodes_changed(self) -> None:
        for listener in self.node_listeners:
            listener()

    # -- placement and forwarding --------------------------------------------------------------

    def _adjust(self, name: str, need: Need) -> None:
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

    async def submit(self, spec: JobSpec) -> Job | None:
        """Place a new job with a Node: None means here (the engine queues it as usual)."""
        need = Need(spec.cpus, spec.memory, spec.gpus)
        target = choose(spec.node, need, self.views())
        if target == self.name:
            return None
        if spec.uid == 0:
            if spec.node == ANY:
                self.require_local_fit(spec, "jobs of root run only on the node they are submitted to")
                return None  # root's jobs are never run for others: this node it is
            raise AccessDenied(f"Node: jobs of root are not run on other nodes; submit as a user that exists on "
                               f"{spec.node}")
        e = self.engine
        job = Job(id=e.allocate_id(), spec=spec, submit_time=now_usec(),
                  state=JobState.HELD if spec.hold else JobState.PENDING,
                  reason=Reason.HELD if spec.hold else "", remote_node=AWAITING_NODE)
        await e.add_record(job)  # durable before any node runs it: a forward never outlives its origin's record
        if target is None:
            self.waiting[job.id] = job
            log.info("job %d waits for a node (%s)", job.id, "none fits now" if spec.node == ANY else f"{spec.node} is down")
            return job
        try:
            await self._forward(job, target)
        except PeerRefused as err:
            e.end_record(job, JobState.FAILED, Reason.RESOURCES)
            raise err.error from None
        except PeerError as err:
            log.warning("job %d: %s; it waits for a node", job.id, err)
            self.waiting[job.id] = job
        return job

    def require_local_fit(self, spec: JobSpec, why: str) -> None:
        """Unsatisfiable unless this node could ever hold the job (it cannot go anywhere else)."""
        from schedd.core.placement import check_satisfiable

        try:
            check_satisfiable("", Need(spec.cpus, spec.memory, spec.gpus), self.views())
        except SchedError as e:
            raise type(e)(f"{e.message} ({why})") from None

    async def _forward(self, job: Job, target: str) -> None:
        """Send the job to target (retrying: the peer's idempotency makes that safe) and mirror its answer."""
        peer = self.peers[target]
        body = {"Origin": self.name, "OriginId": job.id, "Spec": spec_to_json(job.spec)}
        self._adjust(target, Need(job.spec.cpus, job.spec.memory, job.spec.gpus))
        delay = 0.1
        # A forward is one durable insert there: milliseconds. Waiting longer than two heartbeats keeps a
        # Submit hanging on a node that is going down; a retry after a lost answer finds the first copy.
        timeout = max(1.5, 2 * self.interval)
        for attempt in range(FORWARD_TRIES):
            try:
                rec = await self._request(peer, "POST", "/jobs", json=body, timeout=timeout)
                break
            except PeerError:
                if attempt == FORWARD_TRIES - 1 or not peer.up:
                    raise
                self.forward_retries += 1
                await asyncio.sleep(delay)
                delay *= 3
        self.forwards += 1
        self.waiting.pop(job.id, None)
        if job.remote_node == target and job.remote_id == rec["Id"]:
            return  # the peer's first state push came first (and is newer than this answer)
        if job.state.terminal or not job.awaiting_node:  # cancelled or placed elsewhere meanwhile
            self._spawn(self._fence(peer, rec["Id"]))
            return
        self.engine.placed_remote(job, target, rec["Id"], mirrored_fields(rec))
        self._apply(job, rec)

    def _apply(self, job: Job, rec: dict[str, Any]) -> None:
        state = JobState(rec["State"])
        self.engine.mirror(job, state, rec["Reason"], mirrored_fields(rec))

    def _place_waiting(self) -> None:
        views = self.views()
        for job in sorted(self.waiting.values(), key=lambda j: (-j.spec.priority, j.id)):
            if job.id in self._placing or job.state != JobState.PENDING:
                continue
            avoid = self._avoid.get(job.id, set())
            target_name = job.spec.node or ANY
            if target_name in avoid:
                target_name = ANY
            try:
                target = choose(target_name, Need(job.spec.cpus, job.spec.memory, job.spec.gpus), views,
                                frozenset(avoid))
            except SchedError:
                target = None
            if target is None:
                continue
            if target == self.name:
                del self.waiting[job.id]
                self._fill_paths(job)
                self.engine.place_here(job)
                continue
            if job.uid == 0:
                continue
            self._placing.add(job.id)
            self._spawn(self._place_remote(job, target))
            views = self.views()

    def _fill_paths(self, job: Job) -> None:
        """A job placed here after all: a default path another node chose for it is ours again."""
        s = job.spec
        if DEFAULT_OUTPUT.search(s.stdout_path):
            s.stdout_path = ""
        if DEFAULT_OUTPUT.search(s.stderr_path):
            s.stderr_path = ""
        s.expand_paths(job.id, str(self.engine.jobs_dir))

    async def _place_remote(self, job: Job, target: str) -> None:
        try:
            await self._forward(job, target)
        except PeerRefused as e:
            log.warning("job %d: %s", job.id, e)
            self.waiting.pop(job.id, None)
            self.engine.end_record(job, JobState.FAILED, Reason.RESOURCES)
        except PeerError as e:
            log.warning("job %d: %s; still waiting", job.id, e)
        finally:
            self._placing.discard(job.id)

    def local_changed(self) -> None:
        """Something ended or started here: waiting jobs may fit now (placed after the transition is done)."""
        if self.waiting and not self._place_soon:
            self._place_soon = True
            asyncio.get_running_loop().call_soon(self._place_later)

    def _place_later(self) -> None:
        self._place_soon = False
        if self.waiting:
            self._place_waiting()

    # -- node failure ------------------------------------------------------------------------

    def _node_down(self, peer: Peer) -> None:
        for job in list(self.engine.jobs.values()):
            if job.remote_node != peer.name or job.state.terminal:
                continue
            ran = job.state.active or job.start_time > 0
            allowed = not ran or (job.spec.requeue and job.node_failures < MAX_NODE_REQUEUES)
            self.engine.requeue_away(job, peer.name, requeue=allowed)
            if allowed:
                if not ran:
                    job.node_failures -= 1  # it never started there: placing it again costs it nothing
                self._avoid.setdefault(job.id, set()).add(peer.name)
                self.waiting[job.id] = job
        if self.waiting:
            self._place_waiting()

    async def _reconnected(self, peer: Peer) -> None:
        """Pull its copies of our jobs: mirror what matches, fence what we placed elsewhere meanwhile."""
        for job in self.engine.jobs.values():
            if job.origin_node == peer.name:
                self._dirty(job)
        try:
            recs = await self._request(peer, "GET", "/jobs", params={"origin": self.name})
        except (PeerError, PeerRefused) as e:
            log.warning("reconcile with %s: %s", peer.name, e)
            return
        stale = self.receive_mirror(peer.name, recs.get("Jobs", []))
        for rid in stale:
            await self._fence(peer, rid)
        if self.waiting:
            self._place_waiting()

    async def _fence(self, peer: Peer, remote_id: int) -> None:
        try:
            await self._request(peer, "POST", f"/jobs/{remote_id}/fence", json={"Origin": self.name})
            log.info("fenced job %d on %s (this node placed it elsewhere)", remote_id, peer.name)
        except (PeerError, PeerRefused) as e:
            log.warning("fencing job %d on %s: %s (retried at the next reconnect)", remote_id, peer.name, e)

    def receive_mirror(self, node: str, recs: list[dict[str, Any]]) -> list[int]:
        """States a peer reports for our jobs; returns its job ids that must stop (stale copies)."""
        stale: list[int] = []
        for rec in recs:
            job = self.engine.jobs.get(rec["OriginId"]) or self.engine.store.get(rec["OriginId"])
            copy_done = rec["State"] in TERMINAL_STATES
            # (Never from a node that failed under it: after a restart of ours, which node that was is
            # forgotten, so a job requeued before adopts nothing.)
            if (job is not None and job.awaiting_node and not job.state.terminal and job.id in self.engine.jobs
                    and node not in self._avoid.get(job.id, ()) and (job.id in self._avoid or not job.node_failures)):
                # Forwarded there, but the answer was lost (or has not arrived yet): that copy is the one.
                self.waiting.pop(job.id, None)
                self.engine.placed_remote(job, node, rec["Id"], mirrored_fields(rec))
                log.info("job %d: adopted its copy %d on %s", job.id, rec["Id"], node)
            if job is None or job.remote_node != node or job.remote_id != rec["Id"] or job.state.terminal:
                if not copy_done and rec["Id"] not in stale:
                    stale.append(rec["Id"])
                continue
            if job.id in self.engine.jobs:
                self._apply(job, rec)
        return stale

    # -- the run-node side: mirror pushes ----------------------------------------------------------

    def job_added(self, job: Job) -> None:
        if job.origin_node:
            self._by_origin[(job.origin_node, job.origin_id)] = job.id
        self._dirty(job)

    def job_changed(self, job: Job, fields: frozenset[str], old_state: JobState) -> None:
        self._dirty(job)
        if job.state != old_state and not job.remote and self.waiting:
            self.local_changed()

    def job_released(self, job: Job) -> None:
        if job.origin_node:
            self._by_origin.pop((job.origin_node, job.origin_id), None)

    def manager_changed(self, facts: frozenset[str]) -> None:
        pass

    def _dirty(self, job: Job) -> None:
        peer = self.peers.get(job.origin_node) if job.origin_node else None
        if peer is None:
            return
        snap = job_state_json(job)
        last = peer.last.get(job.id)
        if last is not None and last["State"] == snap["State"]:
            last.update(snap)  # same state, newer details
        else:
            peer.outbox.append(snap)
            peer.last[job.id] = snap
        peer.wake.set()

    async def _pusher(self, peer: Peer) -> None:
        """Push our copies' states to their origin, batched; kept and retried while it is unreachable."""
        while True:
            await peer.wake.wait()
            peer.wake.clear()
            if not peer.outbox:
                continue
            batch, peer.outbox, peer.last = peer.outbox, [], {}
            try:
                answer = await self._request(peer, "POST", "/mirror", json={"Node": self.name, "Jobs": batch})
            except (PeerError, PeerRefused) as e:
                peer.outbox = batch + peer.outbox  # in order, before what happened since
                peer.last = {rec["Id"]: rec for rec in peer.outbox}
                log.debug("mirror to %s: %s", peer.name, e)
                await asyncio.sleep(self.interval)
                peer.wake.set()
                continue
            sent = {rec["Id"] for rec in batch}
            for rid in set(answer.get("Stale", [])):
                if rid in sent:
                    self._spawn(self.fence_local(rid, peer.name))

    async def fence_local(self, job_id: int, origin: str) -> dict[str, Any]:
        job = self.engine.get(job_id)
        if job.origin_node != origin:
            raise AccessDenied(f"job {job_id} was not forwarded here by {origin}")
        if not job.state.terminal:
            log.warning("job %d (job %d of %s): its origin placed it elsewhere; stopping this copy", job.id,
                        job.origin_id, origin)
        job = await self.engine.fence(job_id)
        return job_state_json(job)

    # -- requests on forwarded jobs, from the origin side ------------------------------------------

    async def action(self, job: Job, name: str) -> None:
        """cancel/hold/release/suspend/resume/requeue of a job of ours that another node runs."""
        if job.awaiting_node:
            if job.state.terminal:
                raise InvalidState(f"job {job.id} is already {job.state.value}")
            if name == "cancel":
                self.waiting.pop(job.id, None)
                self.engine.end_record(job, JobState.CANCELLED, Reason.CANCELLED)
                await self.engine.store.drain()
            elif name in ("hold", "release") and job.id not in self._placing:
                want = JobState.HELD if name == "hold" else JobState.PENDING
                if job.state != want:
                    await self.engine.hold_record(job, name == "hold")
                    if want == JobState.PENDING:
                        self._place_waiting()
            else:
                raise InvalidState(f"job {job.id} is {job.state.value} and waits for a node to take it; it can be "
                                   f"held, released or cancelled now")
            return
        if job.state.terminal:
            raise InvalidState(f"job {job.id} is already {job.state.value}; only pending, held or running jobs "
                               f"can be changed")
        peer = self.peers.get(job.remote_node)
        if peer is None:
            raise SchedError(f"job {job.id} runs on {job.remote_node}, which is no longer a peer of this node")
        try:
            rec = await self._request(peer, "POST", f"/jobs/{job.remote_id}/{name}", json={"Origin": self.name},
                                      timeout=60)
        except PeerRefused as e:
            raise e.error from None
        except PeerError as e:
            if name == "cancel":  # ours to decide: the copy is fenced when the node is back
                log.warning("job %d: cancelled while %s is unreachable; its copy is stopped when it is back", job.id,
                            job.remote_node)
                self.engine.end_record(job, JobState.CANCELLED, Reason.CANCELLED)
                await self.engine.store.drain()
                return
            raise SchedError(str(e)) from None
        self._apply(job, rec)
        await self.engine.store.drain()

    async def read_output(self, job: Job, stderr: bool, offset: int) -> bytes:
        peer = self.peers.get(job.remote_node)
        if peer is None:
            return b""  # not running anywhere yet
        try:
            return await self._request(peer, "GET", f"/jobs/{job.remote_id}/output",
                                       params={"stream": "stderr" if stderr else "stdout", "offset": str(offset),
                                               "origin": self.name}, raw=True)
        except PeerRefused as e:
            raise e.error from None
        except PeerError as e:
            raise SchedError(f"job {job.id} runs on {job.remote_node}: {e}") from None

    async def list_cluster(self, states: list[str] | None, user_name: str | None, after: int,
                           limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Jobs owned by every up node (each job once: by its origin), as (node, plain record)."""
        params: dict[str, str] = {"own": "1", "after": str(after), "limit": str(limit)}
        if states is not None:
            params["states"] = ",".join(states)
        if user_name is not None:
            params["user"] = user_name
        ups = [p for p in self.peers.values() if p.up]
        answers = await asyncio.gather(*(self._request(p, "GET", "/jobs", params=params) for p in ups),
                                       return_exceptions=True)
        out = []
        for p, a in zip(ups, answers):
            if isinstance(a, BaseException):
                log.warning("listing jobs of %s: %s", p.name, a)
                continue
            out.extend((p.name, rec) for rec in a.get("Jobs", []))
        return out

    # -- the run-node side: forwards arriving ------------------------------------------------------

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
            from schedd.core.engine import Caller

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
