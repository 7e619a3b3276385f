"""The origin's side: jobs of ours that another node runs, or that wait for a node to take them.

- A job placed on a peer is forwarded with (origin node, origin id): the peer's unique index
  turns a retried forward into the first copy. We keep a record whose state the peer pushes back
  on every transition; on reconnect we pull the peer's copies again (reconcile) and fence any
  copy we have since placed elsewhere.
- When a peer goes down, we requeue what ran there for us (once, unless `Requeue` is false:
  then FAILED `node-failure`), and tell it at once to stop those copies (it may still hear us).
- A copy's program starts only with our grant (POST /starts, schedd.cluster.runnode): we grant
  only the copy we have placed there now, and record the grant durably before answering -- so a
  node failure counts as a failure of a run exactly for the jobs that may have started there.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from schedd.cluster.peers import Peer, Peers
from schedd.cluster.wire import DEFAULT_OUTPUT, PeerError, PeerRefused, mirrored_fields, spec_to_json, stale_json
from schedd.core.cluster import RemoteAction
from schedd.core.engine import Engine
from schedd.core.model import AWAITING_NODE, TERMINAL_STATES, Job, JobSpec, JobState, Reason, now_usec
from schedd.core.placement import ANY, Need, check_satisfiable, choose
from schedd.errors import AccessDenied, InvalidState, SchedError

log = logging.getLogger(__name__)

MAX_NODE_REQUEUES = 1  # a job is requeued after a node failure once (Requeue=false: never)
FORWARD_TRIES = 3


def fill_paths(job: Job, jobs_dir: Path) -> None:
    """A job placed here after all: a default path another node chose for it is ours again."""
    s = job.spec
    if DEFAULT_OUTPUT.search(s.stdout_path):
        s.stdout_path = ""
    if DEFAULT_OUTPUT.search(s.stderr_path):
        s.stderr_path = ""
    s.expand_paths(job.id, str(jobs_dir))


class Origin:
    def __init__(self, engine: Engine, net: Peers) -> None:
        self.engine = engine
        self.net = net
        self.name = net.name
        self.waiting: dict[int, Job] = {}  # our jobs no node has taken yet
        self._avoid: dict[int, set[str]] = {}  # nodes a requeued job must not go back to
        self._placing: set[int] = set()
        self._place_soon = False
        self.forward_retries = 0  # forwards sent again after no answer (the tests' fault injection reads it)

    def recover(self) -> None:
        """After a restart: the jobs of ours that still wait for a node."""
        for job in self.engine.jobs.values():
            if job.awaiting_node and not job.state.terminal:
                self.waiting[job.id] = job

    # -- placement and forwarding --------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> Job | None:
        """Place a new job with a Node: None means here (the engine queues it as usual)."""
        need = Need.of(spec)
        target = choose(spec.node, need, self.net.views())
        if target == self.name:
            return None
        if spec.uid == 0:
            if spec.node == ANY:
                self.require_local_fit(spec, "jobs of root run only on the node they are submitted to")
                return None  # root's jobs are never run for others: this node it is
            raise AccessDenied(f"Node: jobs of root are not run on other nodes; submit as a user that exists on "
                               f"{spec.node}")
        e = self.engine
        drained = target is None and spec.node != ANY and self.net.peers.get(spec.node) is not None \
            and bool(self.net.peers[spec.node].drain[0])
        job = Job(id=e.allocate_id(), spec=spec, submit_time=now_usec(),
                  state=JobState.HELD if spec.hold else JobState.PENDING,
                  reason=Reason.HELD if spec.hold else Reason.DRAINED if drained else "", remote_node=AWAITING_NODE,
                  attempt=0 if target is None else 1)
        await e.add_record(job)  # durable before any node runs it: a forward never outlives its origin's record
        if target is None:
            self.waiting[job.id] = job
            log.info("job %d waits for a node (%s)", job.id, "none fits now" if spec.node == ANY
                     else f"{spec.node} is drained" if drained else f"{spec.node} is down")
            return job
        try:
            # The Submit is answered within one forward's timeout whatever the peer does (the job is
            # durable here; if no answer comes it waits and is placed again after the next beat).
            await self._forward(job, target, once=True)
        except PeerRefused as err:
            e.end_record(job, JobState.FAILED, Reason.RESOURCES)
            raise err.error from None
        except PeerError as err:
            log.warning("job %d: %s; it waits for a node", job.id, err)
            self.waiting[job.id] = job
        return job

    def require_local_fit(self, spec: JobSpec, why: str) -> None:
        """Unsatisfiable unless this node could ever hold the job (it cannot go anywhere else)."""
        try:
            check_satisfiable("", Need.of(spec), self.net.views())
        except SchedError as e:
            raise type(e)(f"{e.message} ({why})") from None

    async def _forward(self, job: Job, target: str, *, once: bool = False) -> None:
        """Send the job to target (retrying: the peer's idempotency makes that safe) and mirror its answer.
        once: all tries together within one try's timeout (a Submit waits on it)."""
        peer = self.net.peers[target]
        body = {"Origin": self.name, "OriginId": job.id, "Attempt": job.attempt, "Spec": spec_to_json(job.spec)}
        self.net.count_sent(target, Need.of(job.spec))
        delay = 0.1
        # A retry after a lost answer finds the first copy.
        timeout = self.net.call_timeout
        deadline = self.net.clock() + timeout
        for attempt in range(FORWARD_TRIES):
            left = deadline - self.net.clock() if once else timeout
            try:
                rec = await self.net.request(peer, "POST", "/jobs", json=body, timeout=left)
                break
            except PeerError:
                if attempt == FORWARD_TRIES - 1 or not peer.up or (once and deadline - self.net.clock() < delay + 0.1):
                    raise
                self.forward_retries += 1
                await self.net.sleep(delay)
                delay *= 3
        self.waiting.pop(job.id, None)
        if job.remote_node == target and job.remote_id == rec["Id"]:
            return  # the peer's first state push came first (and is newer than this answer)
        if job.state.terminal or not job.awaiting_node:  # cancelled or placed elsewhere meanwhile
            self.net.spawn(self._fence(peer, rec["Id"]))
            return
        self.engine.placed_remote(job, target, rec["Id"], mirrored_fields(rec))
        self._apply(job, rec)

    def _apply(self, job: Job, rec: dict[str, Any]) -> None:
        state = JobState(rec["State"])
        self.engine.mirror(job, state, rec["Reason"], mirrored_fields(rec))

    def place_waiting(self) -> None:
        views = self.net.views()
        for job in sorted(self.waiting.values(), key=lambda j: (-j.spec.priority, j.id)):
            if job.id in self._placing or job.state != JobState.PENDING:
                continue
            avoid = self._avoid.get(job.id, set())
            target_name = job.spec.node or ANY
            if target_name in avoid:
                target_name = ANY
            try:
                target = choose(target_name, Need.of(job.spec), views,
                                frozenset(avoid))
            except SchedError:
                target = None
            if target is None:
                continue
            if target == self.name:
                del self.waiting[job.id]
                fill_paths(job, self.engine.jobs_dir)
                self.engine.place_here(job)
                continue
            if job.uid == 0:
                continue
            self._placing.add(job.id)
            self.net.spawn(self._place_remote(job, target))
            views = self.net.views()

    async def _place_remote(self, job: Job, target: str) -> None:
        try:
            await self.engine.new_attempt(job)
            if job.state != JobState.PENDING or not job.awaiting_node:
                return  # cancelled or held while the attempt was recorded
            await self._forward(job, target)
        except PeerRefused as e:
            log.warning("job %d: %s", job.id, e)
            self.waiting.pop(job.id, None)
            self.engine.end_record(job, JobState.FAILED, Reason.RESOURCES)
        except PeerError as e:
            log.warning("job %d: %s; still waiting", job.id, e)
        finally:
            self._placing.discard(job.id)

    def peer_heard(self) -> None:
        """A peer's load changed: a waiting job may fit there now."""
        if self.waiting:
            self.place_waiting()

    def job_changed(self, job: Job, old_state: JobState) -> None:
        if job.state != old_state and not job.remote and self.waiting:
            self.local_changed()

    def local_changed(self) -> None:
        """Something ended or started here: waiting jobs may fit now (placed after the transition is done)."""
        if self.waiting and not self._place_soon:
            self._place_soon = True
            asyncio.get_running_loop().call_soon(self._place_later)

    def _place_later(self) -> None:
        self._place_soon = False
        if self.waiting:
            self.place_waiting()

    # -- node failure and reconnect --------------------------------------------------------------

    def node_down(self, peer: Peer) -> None:
        stop: list[tuple[int, bool]] = []
        for job in list(self.engine.jobs.values()):
            if job.remote_node != peer.name or job.state.terminal:
                continue
            # It may have run there only if we granted its start (or heard it started).
            ran = job.state.active or job.start_time > 0 or job.start_granted
            allowed = not ran or (job.spec.requeue and job.node_failures < MAX_NODE_REQUEUES)
            stop.append((job.remote_id, not allowed))
            self.engine.requeue_away(job, peer.name, requeue=allowed, ran=ran)
            if allowed:
                self._avoid.setdefault(job.id, set()).add(peer.name)
                self.waiting[job.id] = job
        if stop:
            # It may still hear us (only its way to us may be cut): its copies stop now, not when it is back.
            self.net.spawn(self._fence_all(peer, stop))
        if self.waiting:
            self.place_waiting()

    def recall_from(self, peer: Peer, *, only_any: bool) -> None:
        """Our jobs queued on peer whose copy has not started (no grant): placed again elsewhere, their
        copies there fenced. For a drain (only_any) just those whose spec lets them run anywhere; the
        others wait there (reason drained). For a peer that shuts down, all of them."""
        stop: list[tuple[int, bool]] = []
        for job in list(self.engine.jobs.values()):
            if (job.remote_node != peer.name or job.awaiting_node or job.state not in (JobState.PENDING, JobState.HELD)
                    or job.start_granted or job.start_time or (only_any and job.spec.node != ANY)):
                continue
            stop.append((job.remote_id, False))
            self.engine.recall(job, peer.name)
            self.waiting[job.id] = job
        if stop:
            self.net.spawn(self._fence_all(peer, stop))
        if self.waiting:
            self.place_waiting()

    def drained_job(self, job: Job) -> bool:
        """This node drains: a job of ours queued here that may run anywhere waits for another node
        instead (True); a job bound here, root's, a copy of a peer's, or an array's task stays (False)."""
        if job.spec.node != ANY or job.origin_node or job.uid == 0 or job.remote or job.array_job_id:
            return False
        self.engine.send_away(job)
        self.waiting[job.id] = job
        self.local_changed()
        return True

    async def _fence_all(self, peer: Peer, copies: list[tuple[int, bool]]) -> None:
        for rid, failed in copies:
            if not await self._fence(peer, rid, failed=failed, quiet=True):
                return  # unreachable: the rest are fenced when it is back (reconcile)

    async def grant(self, node: str, recs: list[dict[str, Any]]) -> dict[str, list[int]]:
        """A run node asks to start these copies: grant those that are our current placement there
        (recorded durably first), and name the ones it must stop instead."""
        stale = self.receive_mirror(node, recs)
        granted: list[int] = []
        ids: list[int] = []
        for rec in recs:
            job = self.engine.jobs.get(rec["OriginId"])
            if (rec["Id"] in stale or job is None or job.remote_node != node or job.remote_id != rec["Id"]
                    or job.state != JobState.PENDING):
                continue
            self.engine.grant_start(job)
            granted.append(rec["Id"])
            ids.append(job.id)
        if ids:
            await self.engine.store.drain(*ids)
        return {"Granted": granted, **stale_json(stale)}

    async def reconcile(self, peer: Peer) -> None:
        """Pull its copies of our jobs: mirror what matches, fence what we placed elsewhere meanwhile."""
        try:
            recs = await self.net.request(peer, "GET", "/jobs", params={"origin": self.name})
        except (PeerError, PeerRefused) as e:
            log.warning("reconcile with %s: %s", peer.name, e)
            return
        stale = self.receive_mirror(peer.name, recs.get("Jobs", []))
        for rid, failed in stale.items():
            await self._fence(peer, rid, failed=failed)
        if self.waiting:
            self.place_waiting()

    async def _fence(self, peer: Peer, remote_id: int, *, failed: bool = False, quiet: bool = False) -> bool:
        try:
            await self.net.request(peer, "POST", f"/jobs/{remote_id}/fence",
                                   json={"Origin": self.name, "Failed": failed},
                                   timeout=self.net.call_timeout)
            log.info("fenced job %d on %s (this node placed it elsewhere)", remote_id, peer.name)
            return True
        except (PeerError, PeerRefused) as e:
            if not quiet:
                log.warning("fencing job %d on %s: %s (retried at the next reconnect)", remote_id, peer.name, e)
            return False

    def receive_mirror(self, node: str, recs: list[dict[str, Any]]) -> dict[int, bool]:
        """States a peer reports for our jobs; returns its copies that must stop, each with whether it
        ends as a failed run (True) or as a stale copy (False)."""
        stale: dict[int, bool] = {}
        for rec in recs:
            job = self.engine.jobs.get(rec["OriginId"]) or self.engine.store.get(rec["OriginId"])
            copy_done = rec["State"] in TERMINAL_STATES
            # Only a copy of the attempt now under way (a copy of an earlier one is stale).
            if (job is not None and job.awaiting_node and not job.state.terminal and job.id in self.engine.jobs
                    and job.attempt and rec.get("Attempt") == job.attempt):
                # Forwarded there, but the answer was lost (or has not arrived yet): that copy is the one.
                self.waiting.pop(job.id, None)
                self.engine.placed_remote(job, node, rec["Id"], mirrored_fields(rec))
                log.info("job %d: adopted its copy %d on %s", job.id, rec["Id"], node)
            current = job is not None and job.remote_node == node and job.remote_id == rec["Id"]
            if current and job.state == JobState.FAILED and job.reason == Reason.NODE_FAILURE:
                # Given up for failed when its node was judged down (Requeue=false), this very copy: it
                # stops as a failed run, or, if it ended meanwhile, its end is the job's true end.
                if not copy_done:
                    stale[rec["Id"]] = True
                elif rec["State"] != job.state.value and job.id in self.engine.jobs:
                    log.info("job %d: its copy %d on %s ended %s after all", job.id, rec["Id"], node, rec["State"])
                    self._apply(job, rec)
                continue
            if not current or job.state.terminal:
                if not copy_done:
                    stale.setdefault(rec["Id"], False)
                continue
            if job.id in self.engine.jobs:
                self._apply(job, rec)
        return stale

    # -- requests on jobs of ours elsewhere ------------------------------------------------------

    async def action(self, job: Job, name: RemoteAction) -> None:
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
                        self.place_waiting()
            else:
                raise InvalidState(f"job {job.id} is {job.state.value} and waits for a node to take it; it can be "
                                   f"held, released or cancelled now")
            return
        if job.state.terminal:
            raise InvalidState(f"job {job.id} is already {job.state.value}; only pending, held or running jobs "
                               f"can be changed")
        peer = self.net.peers.get(job.remote_node)
        if peer is None:
            raise SchedError(f"job {job.id} runs on {job.remote_node}, which is no longer a peer of this node")
        try:
            rec = await self.net.request(peer, "POST", f"/jobs/{job.remote_id}/{name}", json={"Origin": self.name},
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
        peer = self.net.peers.get(job.remote_node)
        if peer is None:
            return b""  # not running anywhere yet
        try:
            return await self.net.request(peer, "GET", f"/jobs/{job.remote_id}/output",
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
        ups = [p for p in self.net.peers.values() if p.up]
        answers = await asyncio.gather(*(self.net.request(p, "GET", "/jobs", params=params) for p in ups),
                                       return_exceptions=True)
        out = []
        for p, a in zip(ups, answers):
            if isinstance(a, BaseException):
                log.warning("listing jobs of %s: %s", p.name, a)
                continue
            out.extend((p.name, rec) for rec in a.get("Jobs", []))
        return out
