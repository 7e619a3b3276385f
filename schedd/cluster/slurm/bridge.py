"""A Slurm cluster behind the federation's peer seam.

The origin (schedd.cluster.origin) talks to every peer through `Peers.request(peer, method, path)`
with the schedd peer API's paths; for a Slurm peer that call lands here and is carried out on
slurmrestd: POST /jobs forwards (one Slurm batch job per schedd job, tagged in its comment with
origin, id and attempt, submitted as the job's own user), POST /jobs/ID/ACTION cancels, holds,
releases or fences, GET /jobs/ID/output reads the file Slurm wrote where this node can reach it.

Slurm pushes nothing, so a poll each heartbeat interval does what a schedd peer's heartbeats and
state pushes do: its nodes are the peer's load (ListNodes, placement, metrics), its jobs tagged for
this node are mirrored (Origin.receive_mirror: the same checks as a push, plus the Slurm job's user
must be the job's), stale copies are fenced. A poll that fails for 3 intervals marks the peer down --
but Slurm is not a node that died: its jobs are not requeued elsewhere (Slurm may still run them) and
keep their last state until a poll succeeds again and reconciles them. Slurm jobs that slurmctld no
longer knows (purged after MinJobAge while this node could not look) end FAILED `lost`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
from typing import Any

from schedd.config import SlurmPeerConfig
from schedd.cluster.slurm.mapping import BadRecord, SlurmJob, Tag, jobs_and_bad_ids, jobs_of, load_of, submission
from schedd.cluster.slurm.restd import Restd
from schedd.cluster.slurm.token import Tokens, load_key
from schedd.cluster.wire import PeerError, PeerRefused, resolve_user
from schedd.core.model import AWAITING_NODE, Job, JobSpec, JobState, Reason, now_usec
from schedd.core.placement import NodeView
from schedd.errors import AccessDenied, InvalidArgument, InvalidState, NotFound

Federation = Any  # schedd.cluster.federation.Federation (which imports this module: no cycle)
Peer = Any  # schedd.cluster.peers.Peer
log = logging.getLogger(__name__)

_JOB_ACTION = re.compile(r"^/jobs/(\d{1,10})/(cancel|hold|release|suspend|resume|requeue|fence)$")
_JOB_OUTPUT = re.compile(r"^/jobs/(\d{1,10})/output$")
LOST_AFTER_POLLS = 3  # a copy missing from this many full answers in a row is gone from Slurm


class SlurmBridge:
    def __init__(self, fed: "Federation", peer: "Peer", cfg: SlurmPeerConfig) -> None:
        self.fed = fed
        self.peer = peer
        self.cfg = cfg
        self.name = peer.name
        self.restd: Restd | None = None
        self.key_error = ""
        self.last_ok = 0.0  # clock of the last good poll
        self.known: dict[int, SlurmJob] = {}  # the last poll's jobs of ours, by Slurm id
        self._tags: dict[Tag, SlurmJob] | None = None  # the same by tag; None: Slurm's list not read yet
        self._missing: dict[int, int] = {}  # Slurm id -> polls in a row it was missing from
        self._confirming: set[int] = set()  # Slurm ids being asked for one by one before they end lost
        self._hidden: set[int] = set()  # Slurm ids there by id but not in query_user's list (said once)
        self._tried: set[tuple[int, int]] = set()  # (origin id, attempt) forwards sent once already
        self._down_logged = False
        self.polls = 0

    # -- lifecycle ------------------------------------------------------------------

    def open(self) -> None:
        try:
            tokens = Tokens(load_key(self.cfg.jwt_key_file), self.cfg.token_lifetime)
        except OSError as e:
            self.key_error = f"Slurm peer {self.name}: cannot use jwt_key_file: {e}"
            log.error("%s; the peer stays down", self.key_error)
            return
        self.restd = Restd(self.name, self.peer.url, tokens)
        self.restd.open()
        self.last_ok = self.fed.net.clock()

    async def close(self) -> None:
        if self.restd is not None:
            await self.restd.close()

    def _restd(self) -> Restd:
        if self.restd is None:
            raise PeerError(self.key_error or f"Slurm peer {self.name} is not open")
        return self.restd

    # -- polling: load, liveness, mirroring ---------------------------------------------

    async def poll_loop(self) -> None:
        while True:
            await self.poll()
            await self.fed.net.sleep(self.fed.net.interval)

    async def poll(self) -> None:
        net = self.fed.net
        try:
            restd = self._restd()
            jobs_answer = await restd.call("GET", "/jobs", self.cfg.query_user, timeout=max(2.0, 2 * net.interval))
            nodes_answer = await restd.call("GET", "/nodes", self.cfg.query_user, timeout=max(2.0, 2 * net.interval))
            jobs, bad = jobs_and_bad_ids(jobs_answer)
            load = load_of(nodes_answer, jobs, self.cfg.partition)
        except (PeerError, PeerRefused, BadRecord) as e:
            self._silent(str(e))
            return
        if bad:
            log.warning("Slurm peer %s: %d job records are not Slurm's and were ignored", self.name, len(bad))
        self.polls += 1
        self._heard(load)
        self._mirror(jobs, bad)

    def _heard(self, load: dict[str, int]) -> None:
        p, net = self.peer, self.fed.net
        p.view = NodeView.of_load(self.name, True, load)
        p.last_seen_usec = now_usec()
        self.last_ok = net.clock()
        if not p.up:
            p.up = True
            self._down_logged = False
            log.info("Slurm peer %s is up (slurmrestd %s answers)", self.name, p.url)
        net._nodes_changed()

    def _silent(self, why: str) -> None:
        p, net = self.peer, self.fed.net
        if net.clock() - self.last_ok < 3 * net.interval and p.up:
            return
        if p.up or not self._down_logged:
            log.warning("Slurm peer %s is down (%s): its jobs keep their last state and are not run elsewhere "
                        "(Slurm may still be running them); they are reconciled when it answers again", self.name, why)
            self._down_logged = True
        if p.up:
            p.up = False
            net._nodes_changed()

    def _ours(self, slurm_id: int) -> Job | None:
        """Our job whose current copy is this Slurm job."""
        for job in self.fed.engine.jobs.values():
            if job.remote_node == self.name and job.remote_id == slurm_id:
                return job
        return None

    def _speaks_for(self, j: SlurmJob) -> bool:
        """Anybody may tag a Slurm job; only one of the job's own user speaks for the job it names."""
        if j.tag is None or j.tag.origin != self.fed.name:
            return False
        e = self.fed.engine
        job = e.jobs.get(j.tag.origin_id) or e.store.get(j.tag.origin_id)
        return job is not None and bool(job.spec.user_name) and j.user_name == job.spec.user_name

    def _learn(self, jobs: list[SlurmJob]) -> list[SlurmJob]:
        """Slurm's whole list read: ours (told by their own users) are what this bridge knows."""
        mine = [j for j in jobs if self._speaks_for(j)]
        self.known = {j.job_id: j for j in mine}
        self._tags = {j.tag: j for j in mine}
        return mine

    def _mirror(self, jobs: list[SlurmJob], unreadable: list[int | None] = ()) -> None:
        e, origin = self.fed.engine, self.fed.origin
        mine = self._learn(jobs)
        stale = origin.receive_mirror(self.name, [j.record() for j in mine])
        for rid, _failed in stale.items():
            self.fed.net.spawn(self._fence(rid))
        if None in unreadable:
            # A record without a readable id may be any of ours: no copy counts as missing this time.
            if origin.waiting:
                origin.place_waiting()
            return
        seen = {j.job_id for j in jobs} | set(unreadable)
        for job in list(e.jobs.values()):
            if job.remote_node != self.name or not job.remote_id or job.state.terminal:
                continue
            if job.remote_id in seen:
                self._missing.pop(job.remote_id, None)
                continue
            n = self._missing[job.remote_id] = self._missing.get(job.remote_id, 0) + 1
            if n >= LOST_AFTER_POLLS and job.remote_id not in self._confirming:
                self._missing.pop(job.remote_id, None)
                self._confirming.add(job.remote_id)
                self.fed.net.spawn(self._confirm_lost(job, job.remote_id))
        if origin.waiting:
            origin.place_waiting()

    async def _confirm_lost(self, job: Job, rid: int) -> None:
        """Missing from the list (query_user may not see every job: PrivateData), so asked for by id as
        the job's own user: FAILED lost only when Slurm says it has no such job."""
        try:
            try:
                answer = await self._restd().call("GET", f"/job/{rid}", job.spec.user_name)
            except PeerRefused as err:
                if not isinstance(err.error, NotFound):
                    log.warning("job %d: Slurm peer %s: looking for its Slurm job %d: %s", job.id, self.name, rid, err)
                    return
                if job.remote_node != self.name or job.remote_id != rid or job.state.terminal:
                    return  # it moved on meanwhile
                log.warning("job %d: Slurm peer %s no longer knows its Slurm job %d (purged after MinJobAge?); "
                            "it ends FAILED lost", job.id, self.name, rid)
                self.fed.engine.mirror(job, JobState.FAILED, Reason.LOST, {"end_time": now_usec()})
                return
            except PeerError as err:
                log.warning("job %d: Slurm peer %s: looking for its Slurm job %d: %s (tried again later)", job.id,
                            self.name, rid, err)
                return
            try:
                jobs = [j for j in jobs_of(answer)[0] if j.job_id == rid and self._speaks_for(j)]
            except BadRecord:
                return
            if jobs and rid not in self._hidden:
                if len(self._hidden) > 4096:
                    self._hidden.clear()
                self._hidden.add(rid)
                log.warning("Slurm peer %s: its job list leaves out Slurm job %d (of job %d), which its user sees: "
                            "may query_user %r see every user's jobs (PrivateData)?", self.name, rid, job.id,
                            self.cfg.query_user)
            if jobs:
                for stale in self.fed.origin.receive_mirror(self.name, [j.record() for j in jobs]):
                    await self._fence(stale)
        finally:
            self._confirming.discard(rid)

    async def _fence(self, rid: int) -> None:
        try:
            await self._action(rid, "fence")
        except (PeerError, PeerRefused) as err:
            log.warning("fencing Slurm job %d on %s: %s (tried again at the next poll)", rid, self.name, err)

    # -- the peer API, carried out on Slurm ------------------------------------------------

    async def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                      timeout: float = 10.0, raw: bool = False) -> Any:
        if method == "POST" and path == "/jobs":
            return await self._submit(json, timeout)
        if method == "GET" and path == "/jobs":
            # Slurm owns no schedd jobs of its own (ListJobs AllNodes); our copies are mirrored by the poll.
            return {"Jobs": [self.known[r].record() for r in self.known] if (params or {}).get("origin") else []}
        m = _JOB_ACTION.match(path)
        if method == "POST" and m:
            return await self._action(int(m[1]), m[2])
        m = _JOB_OUTPUT.match(path)
        if method == "GET" and m:
            p = params or {}
            return await self._output(int(m[1]), p.get("stream") == "stderr", int(p.get("offset", "0")))
        if method == "POST" and path == "/heartbeat":
            return {}
        raise PeerRefused(InvalidState(f"Slurm peer {self.name} does not take {method} {path}"))

    async def _submit(self, body: Any, timeout: float) -> dict[str, Any]:
        e = self.fed.engine
        spec = body["Spec"]
        origin_id, attempt = int(body["OriginId"]), int(body["Attempt"])
        job = e.jobs.get(origin_id)
        if job is None:
            raise PeerRefused(NotFound(f"job {origin_id} is not a job of node {self.fed.name}"))
        user = self._login_user(job)
        tag = Tag(self.fed.name, origin_id, attempt)
        restd = self._restd()
        key = (origin_id, attempt)
        if key in self._tried or self._tags is None:
            # A retry, or Slurm's list not read since this daemon started (it may have sent this very
            # attempt before a restart, its answer never recorded): the first try may have reached Slurm.
            try:
                self._learn(jobs_of(await restd.call("GET", "/jobs", self.cfg.query_user, timeout=timeout))[0])
            except BadRecord as err:
                raise PeerError(f"Slurm peer {self.name}: {err}") from None
        there = (self._tags or {}).get(tag)  # sent before: an answer lost, or a restart
        if there is not None and there.user_name == user:
            return there.record()
        self._tried.add(key)
        # The wire form leaves out a working directory that is the user's home (a schedd peer's default);
        # Slurm's would be slurmd's own: name it.
        spec = {**spec, "WorkingDirectory": job.spec.working_directory}
        payload = submission(spec, tag, partition=self.cfg.partition, dependency=self._dependency(job),
                             array=(job.array_job_id, job.spec.array_task_id) if job.array_job_id else None)
        answer = await restd.call("POST", "/job/submit", user, body=payload, timeout=timeout, done="job_id")
        jid = answer.get("job_id")
        if not isinstance(jid, int) or isinstance(jid, bool) or not 0 < jid < 1 << 32:
            raise PeerError(f"Slurm peer {self.name} answered a submission without a job id: {answer!r:.200}")
        self._tried.discard(key)
        log.info("job %d: submitted to Slurm peer %s as Slurm job %d (user %s)", origin_id, self.name, jid, user)
        out = payload["job"]["standard_output"]
        rec = SlurmJob(jid, "PENDING", "None", 0, 0, 0, "", user, job.uid, out,
                       payload["job"].get("standard_error", ""), tag).record()
        if spec.get("Hold"):
            rec["State"], rec["Reason"] = "HELD", "held"
        return rec

    def _login_user(self, job: Job) -> str:
        return self.login_name(job.uid, job.spec.user_name, f"job {job.id}")

    def login_name(self, uid: int, user_name: str, what: str) -> str:
        """The name Slurm's token is signed for: the job's uid's own name (from this node's passwd, never
        from the request), and only a login account, as for a job forwarded to a schedd peer (wire.
        resolve_user): a token for root, `slurm` (SlurmUser: Slurm's admin, owner of its jwt key) or any
        other system account would let the job act as it."""
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            raise PeerRefused(AccessDenied(f"uid {uid} has no name on node {self.fed.name}; its jobs are not "
                                           f"sent to Slurm peer {self.name}")) from None
        if pw.pw_uid == 0:
            raise PeerRefused(AccessDenied(f"jobs of root are never sent to Slurm peer {self.name}"))
        if pw.pw_name != user_name:
            raise PeerRefused(AccessDenied(f"{what} was submitted as {user_name!r} but uid {uid} is now "
                                           f"{pw.pw_name!r}; it is not sent to Slurm peer {self.name}"))
        try:
            same = resolve_user(pw.pw_name, self.name, self.fed.cfg.federation).pw_uid == uid
        except AccessDenied as err:
            raise PeerRefused(err) from None
        if not same:
            raise PeerRefused(AccessDenied(f"{pw.pw_name!r} names another uid than {uid}; {what} is not sent to "
                                           f"Slurm peer {self.name}"))
        return pw.pw_name

    def _dependency(self, job: Job) -> list[int]:
        """Slurm ids of the jobs this one runs after: each must be ours, on this same Slurm peer."""
        out = []
        for dep in job.spec.after:
            other = self.fed.engine.jobs.get(dep) or self.fed.engine.store.get(dep)
            if other is None or other.remote_node != self.name or not other.remote_id:
                raise PeerRefused(InvalidArgument(
                    f"After: job {dep} does not run on Slurm peer {self.name}; a job sent to Slurm can wait only "
                    f"for jobs sent to the same Slurm cluster"))
            out.append(other.remote_id)
        return out

    def _user_of(self, rid: int) -> str:
        job = self._ours(rid)
        if job is not None and job.spec.user_name:
            return job.spec.user_name
        known = self.known.get(rid)
        if known is not None and known.user_name and known.user_name != "root":
            return known.user_name
        raise PeerRefused(NotFound(f"Slurm job {rid} is not a copy of a job of node {self.fed.name}"))

    async def _action(self, rid: int, name: str) -> dict[str, Any]:
        if name in ("suspend", "resume"):
            raise PeerRefused(InvalidState(f"{name}: slurmrestd (v0.0.38) cannot suspend or resume a job (in Slurm "
                                           f"only an operator may); it runs on Slurm peer {self.name}"))
        if name == "requeue":
            raise PeerRefused(InvalidState(f"requeue: slurmrestd (v0.0.38) has no requeue; cancel the job and "
                                           f"submit it again (it runs on Slurm peer {self.name})"))
        user = self._user_of(rid)
        restd = self._restd()
        if name in ("cancel", "fence"):
            await restd.call("DELETE", f"/job/{rid}", user)
            log.info("Slurm job %d on %s: cancelled (%s)", rid, self.name, name)
            if name == "fence":
                return {}
        else:
            await restd.call("POST", f"/job/{rid}", user, body={"hold": name == "hold"})
        answer = await restd.call("GET", f"/job/{rid}", user)  # as its user: seen even under PrivateData
        jobs, _bad = jobs_of(answer)
        rec = next((j for j in jobs if j.job_id == rid and j.tag is not None), None)
        if rec is None:
            raise PeerError(f"Slurm peer {self.name} did not show Slurm job {rid} after {name}")
        out = rec.record()
        if name == "cancel" and out["State"] not in ("COMPLETED", "FAILED", "CANCELLED"):
            out.update(State="CANCELLED", Reason="cancelled", EndTime=now_usec())  # Slurm is on it
        return out

    async def _output(self, rid: int, stderr: bool, offset: int) -> bytes:
        from schedd.core.output import read_output

        job = self._ours(rid)
        if job is None:
            raise PeerRefused(NotFound(f"Slurm job {rid} is not a copy of a job of node {self.fed.name}"))
        path = job.spec.stderr_path if stderr else job.spec.stdout_path
        data = await read_output(path, job.uid, offset)
        if data or offset or not path or job.state.queued:
            return data
        where = os.path.dirname(path) or "/"
        if not await asyncio.to_thread(os.path.isdir, where):
            raise PeerRefused(NotFound(
                f"job {job.id} ran on Slurm peer {self.name} (node {self.known[rid].nodes if rid in self.known else '?'}); "
                f"Slurm wrote its output to {path} there, which node {self.fed.name} cannot reach ({where} does "
                f"not exist here): share that directory with this node to read it through schedd"))
        return data


def slurm_peer(fed: "Federation", node: str) -> "SlurmBridge | None":
    peer = fed.peers.get(node)
    return peer.bridge if peer is not None and isinstance(peer.bridge, SlurmBridge) else None


def takes_after(fed: "Federation", spec: JobSpec) -> bool:
    """A job for a Slurm peer may wait for jobs of ours sent to that same peer (Slurm's afterok)."""
    bridge = slurm_peer(fed, spec.node)
    if bridge is None:
        return False
    for dep in spec.after:
        other = fed.engine.jobs.get(dep) or fed.engine.store.get(dep)
        if other is None or other.remote_node != bridge.name or not other.remote_id or other.uid != spec.uid:
            return False
    return True


async def submit_array(fed: "Federation", built: list[JobSpec]) -> list[Job] | None:
    """An array (SubmitMany of tasks) for a Slurm peer: each task a job of ours and a Slurm job of its own,
    the array's id the first task's. None: not all for one Slurm peer (the engine refuses as before)."""
    node = built[0].node
    bridge = slurm_peer(fed, node)
    if bridge is None or any(s.node != node or s.array_task_id is None for s in built):
        return None
    if built[0].uid == 0:
        raise AccessDenied(f"Node: jobs of root are not run on other nodes; submit as a user that exists on {node}")
    try:  # refused before any task is recorded, not task by task
        bridge.login_name(built[0].uid, built[0].user_name, "this array")
    except PeerRefused as err:
        raise err.error from None
    if built[0].array_max_running:
        raise InvalidArgument(f"ArrayMaxRunning: Slurm peer {node} runs each task as a Slurm job of its own and "
                              f"schedd cannot cap how many run at once there; drop the cap (%N) for this array")
    e = fed.engine
    now = now_usec()
    jobs = []
    first = 0
    for spec in built:
        job = Job(id=e.allocate_id(), spec=spec, submit_time=now,
                  state=JobState.HELD if spec.hold else JobState.PENDING, reason=Reason.HELD if spec.hold else "",
                  remote_node=AWAITING_NODE, attempt=1)
        first = first or job.id
        job.array_job_id = first
        jobs.append(job)
    for job in jobs:
        await e.add_record(job)
    for job in jobs:
        try:
            await fed.origin._forward(job, node, once=True)
        except PeerRefused as err:
            e.end_record(job, JobState.FAILED, Reason.RESOURCES)
            if job is jobs[0]:
                for other in jobs[1:]:
                    e.end_record(other, JobState.FAILED, Reason.RESOURCES)
                raise err.error from None
            log.warning("job %d: %s", job.id, err)
        except PeerError as err:
            log.warning("job %d: %s; it waits for a node", job.id, err)
            fed.origin.waiting[job.id] = job
    return jobs


def attach(fed: "Federation") -> list[SlurmBridge]:
    """Give every Slurm peer of the federation its bridge (the peer table routes its requests there)."""
    out = []
    for pc in fed.cfg.peers:
        if pc.kind == "slurm":
            peer = fed.net.peers[pc.name]
            peer.bridge = SlurmBridge(fed, peer, pc.slurm)
            out.append(peer.bridge)
    return out
