"""The peer API under /api/v1/: aiohttp routes and JSON validation (the document: schedd.cluster.openapi).

Every route but the OpenAPI document needs the cluster's bearer token (checked before
the body is even read: a wrong token changes nothing). Every body and query is
checked here, so bad input is a 400 with a sentence, never a 500.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from dbus_fast import Variant

from schedd.cluster.federation import Federation
from schedd.cluster.membership import ClaimRefused, check_claim_url, check_name, check_text, check_url, clean_text
from schedd.cluster.openapi import OPENAPI
from schedd.cluster.wire import ACTIONS, API, FORWARD_SPEC_KEYS, LOAD_KEYS, job_state_json, resolve_user, stale_json
from schedd.core.model import Job, JobState
from schedd.core.output import MAX_CHUNK, read_output
from schedd.protocol import JOB_PROPERTIES, LIST_LIMIT
from schedd.api.http.web import HttpError, Web, read_json
from schedd.errors import AccessDenied, InvalidArgument, InvalidState, NotFound

U32, U64, I32 = 2**32 - 1, 2**63 - 1, 2**31 - 1


def _int(where: str, v: Any, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise InvalidArgument(f"{where} must be an integer from {lo} to {hi}")
    return v


def _str(where: str, v: Any, empty: bool = False) -> str:
    if not isinstance(v, str) or (not v and not empty) or "\0" in v:
        raise InvalidArgument(f"{where} must be a{'' if empty else ' non-empty'} string without NUL bytes")
    return v


def _features(value: Any) -> frozenset[str]:
    """A heartbeat's Features: what the node runs beyond plain commands (absent from older nodes: none)."""
    if not isinstance(value, list) or len(value) > 32 or not all(
            isinstance(f, str) and 0 < len(f) <= 64 for f in value):
        raise InvalidArgument("Features must be a list of at most 32 short strings")
    return frozenset(value)


def spec_variants(spec: Any) -> tuple[dict[str, Variant], str]:
    """A forwarded spec (JSON) -> (Submit a{sv} without User, the user's name); 400 on anything malformed."""
    if not isinstance(spec, dict):
        raise InvalidArgument("Spec must be a JSON object of Submit keys (plus UserName)")
    unknown = sorted(k for k in spec if k not in FORWARD_SPEC_KEYS and k != "UserName")
    if unknown:
        raise InvalidArgument(f"Spec: unknown key {unknown[0]!r}; valid keys: {', '.join(FORWARD_SPEC_KEYS)}, UserName")
    if "UserName" not in spec:
        raise InvalidArgument("Spec.UserName is required: jobs keep their user's name across nodes")
    user = _str("Spec.UserName", spec["UserName"])
    out: dict[str, Variant] = {}
    for key, value in spec.items():
        if key == "UserName":
            continue
        sig, where = FORWARD_SPEC_KEYS[key], f"Spec.{key}"
        if sig == "as":
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise InvalidArgument(f"{where} must be an array of strings")
        elif sig == "s":
            _str(where, value, empty=True)
        elif sig == "b":
            if not isinstance(value, bool):
                raise InvalidArgument(f"{where} must be true or false")
        elif sig == "u":
            _int(where, value, 0, U32)
        elif sig == "t":
            _int(where, value, 0, 2**64 - 1)
        elif sig == "i":
            _int(where, value, -I32 - 1, I32)
        out[key] = Variant(sig, value)
    return out, user


def job_json(job: Job) -> dict[str, Any]:
    """A whole job (its D-Bus properties as JSON) plus where it came from."""
    from schedd.api.jobview import job_record

    rec = job_record(job)
    rec.update(OriginNode=job.origin_node, OriginId=job.origin_id)
    return rec


class FederationApi:
    def __init__(self, fed: Federation, web_: Web) -> None:
        self.fed = fed
        self.web = web_
        r = web_.app.router
        r.add_get(f"{API}/openapi.json", self.openapi)
        r.add_post(f"{API}/heartbeat", self.heartbeat)
        r.add_get(f"{API}/nodes", self.nodes)
        r.add_post(f"{API}/join", self.join)
        r.add_post(f"{API}/leave", self.leave)
        r.add_post(f"{API}/nodes/{{name}}/{{action}}", self.node_action)
        r.add_post(f"{API}/jobs", self.submit)
        r.add_get(f"{API}/jobs", self.list_jobs)
        r.add_get(f"{API}/jobs/{{id}}", self.get_job)
        r.add_post(f"{API}/jobs/{{id}}/{{action}}", self.act)
        r.add_get(f"{API}/jobs/{{id}}/output", self.output)
        r.add_post(f"{API}/mirror", self.mirror)
        r.add_post(f"{API}/starts", self.starts)

    # -- helpers --------------------------------------------------------------------

    def _peer(self, where: str, name: Any) -> str:
        name = _str(where, name)
        if name not in self.fed.peers or self.fed.peers[name].bridge is not None:  # a Slurm peer sends nothing
            raise HttpError(403, "unknown-node", f"{where} {name!r} is not a peer of node {self.fed.name} "
                                                 f"(its [[peers]] list: {', '.join(self.fed.peers) or 'none'})",
                            AccessDenied.dbus_name)
        return name

    @staticmethod
    def _id(request: web.Request) -> int:
        text = request.match_info["id"]
        if not text.isdigit() or not 0 < int(text) <= U64:
            raise InvalidArgument(f"job id {text!r} must be a positive integer")
        return int(text)

    # -- routes ---------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    def _claim(self, body: dict, request: web.Request) -> str:
        """A node names itself (a join, or the first beat of a node not known here): admitted, or 409."""
        name = check_name(body.get("Name"))
        url = check_claim_url(check_url(body.get("URL"), "URL", self.fed.cfg.http.allow_insecure_peers),
                              request.remote)
        try:
            self.fed.net.admit(name, url)
        except ClaimRefused as e:
            raise HttpError(409, "name-taken", str(e), InvalidState.dbus_name) from None
        return name

    @staticmethod
    def _drain(body: dict) -> tuple[str, str, str]:
        """A beat's (or a join's) drain: (state, reason, who), empty when it takes jobs."""
        if body.get("Drain") is None:
            return "", "", ""
        state = body.get("Drain")
        if state not in ("draining", "drained"):
            raise InvalidArgument("Drain must be 'draining' or 'drained'")
        return (state, clean_text(_str("DrainReason", body.get("DrainReason", ""), empty=True), 1024),
                clean_text(_str("DrainedBy", body.get("DrainedBy", ""), empty=True), 256))

    @staticmethod
    def _load(body: dict) -> dict[str, int]:
        return {key: _int(key, body.get(key), 0, U64) for key in LOAD_KEYS}

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.web.require_token(request)
        body = await read_json(request)
        load, drain, features = self._load(body), self._drain(body), _features(body.get("Features", []))
        name = body.get("Name")
        peer = self.fed.peers.get(name) if isinstance(name, str) else None
        if peer is None or (not peer.static and body.get("URL") != peer.url):
            name = self._claim(body, request)  # a newcomer, or a learned member's claim from another URL (all checked first)
        self.fed.net.heard(name, load, drain, features)
        answer: dict[str, Any] = {"Name": self.fed.name}
        if body.get("Digest") != self.fed.net.digest():
            answer |= self.fed.net.members_answer()  # its list differs from ours: it learns ours
        return web.json_response(answer)

    async def join(self, request: web.Request) -> web.Response:
        """A node announces itself (name, URL, capacity) and learns the members."""
        self.web.require_token(request)
        body = await read_json(request)
        load, drain, features = self._load(body), self._drain(body), _features(body.get("Features", []))
        name = self._claim(body, request)
        self.fed.net.heard(name, load, drain, features)
        return web.json_response({"Name": self.fed.name, **self.fed.net.members_answer()})

    async def leave(self, request: web.Request) -> web.Response:
        self.web.require_token(request)
        body = await read_json(request)
        self.fed.net.left(self._peer("Name", body.get("Name")))
        return web.json_response({})

    async def node_action(self, request: web.Request) -> web.Response:
        """drain/resume this node (asked by a member for an operator), or remove a node (a member did).

        The token is all that authorizes these (as it is for every peer route: its holders are the cluster's
        nodes, and a node's operator may drain any node from there). The operator checks (root, polkit's
        manage-nodes) are the asking node's. What `By` says is the asking node's word, so it is shown with
        that node's name: "alice on a" from node a stays so; anything else from a reads "... (via a)"."""
        self.web.require_token(request)
        action, name = request.match_info["action"], request.match_info["name"]
        if action not in ("drain", "resume", "remove"):
            raise NotFound(f"no node action {action!r}; actions: drain, resume, remove")
        body = await read_json(request)
        if action == "remove":
            self.fed.removed_by_peer(check_name(name, "node"), self._peer("Node", body.get("Node")))
            return web.json_response({})
        if name != self.fed.name:
            raise NotFound(f"node {self.fed.name} drains and resumes only itself, not {name!r}")
        if "Node" not in body:
            raise InvalidArgument("Node is required: the name of the node that asks (its operator's drain)")
        node = self._peer("Node", body.get("Node"))
        reason = check_text("Reason", body.get("Reason", ""), 1024)
        by = check_text("By", body.get("By", ""), 200)
        by = by if by.endswith(f" on {node}") else f"{by or 'an operator'} (via {node})"
        await self.fed.drain_node(self.fed.name, reason, by, resume=action == "resume")
        return web.json_response({"Node": self.fed.name, "State": self.fed.net.own_drain()[0] or "up"})

    async def nodes(self, request: web.Request) -> web.Response:
        self.web.require_token(request)
        return web.json_response({"Nodes": self.fed.node_rows()})

    async def submit(self, request: web.Request) -> web.Response:
        self.web.require_token(request)
        body = await read_json(request)
        unknown = sorted(set(body) - {"Origin", "OriginId", "Attempt", "Spec"})
        if unknown:
            raise InvalidArgument(f"unknown key {unknown[0]!r}; a forward is {{Origin, OriginId, Attempt, Spec}}")
        origin = self._peer("Origin", body.get("Origin"))
        origin_id = _int("OriginId", body.get("OriginId"), 1, U64)
        if self.fed.engine.drain is not None and self.fed.runnode._find_origin(
                (origin, origin_id, _int("Attempt", body.get("Attempt", 1), 1, U64))) is None:
            raise HttpError(503, "drained", f"node {self.fed.name} is drained: it takes no new jobs",
                            headers={"Retry-After": "2"})
        attempt = _int("Attempt", body.get("Attempt", 1), 1, U64)
        props, user = spec_variants(body.get("Spec"))
        pw = resolve_user(user, self.fed.name, self.fed.cfg.federation)
        props["User"] = Variant("u", pw.pw_uid)
        job = await self.fed.runnode.accept(origin, origin_id, attempt, props)
        return web.json_response(job_json(job) | job_state_json(job), status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        self.web.require_token(request)
        q = request.query
        unknown = sorted(set(q) - {"origin", "own", "states", "user", "after", "limit"})
        if unknown:
            raise InvalidArgument(f"unknown query parameter {unknown[0]!r}; known: origin, own, states, user, "
                                  f"after, limit")
        if "origin" in q:
            origin = self._peer("origin", q["origin"])
            return web.json_response({"Jobs": [job_state_json(j) for j in self.fed.runnode.copies_for(origin)]})
        states = None
        if "states" in q:
            states = [s for s in q["states"].split(",") if s]
            bad = [s for s in states if s not in JobState.__members__]
            if bad:
                raise InvalidArgument(f"states: unknown state {bad[0]!r}; states are {', '.join(JobState)}")
        after = self._qint(q, "after", 0)
        limit = self._qint(q, "limit", LIST_LIMIT) or LIST_LIMIT
        uid = None
        if "user" in q:
            import pwd

            try:
                uid = pwd.getpwnam(q["user"]).pw_uid
            except KeyError:
                return web.json_response({"Jobs": []})
        jobs = await self._list(states, uid, after, min(limit, LIST_LIMIT))
        if q.get("own") == "1":
            jobs = [j for j in jobs if not j.origin_node]
        return web.json_response({"Jobs": [job_json(j) for j in jobs]})

    async def _list(self, states, uid, after, limit):
        return self.fed.engine.list(states, uid, after, limit)

    @staticmethod
    def _qint(q, key: str, default: int) -> int:
        if key not in q:
            return default
        if not q[key].isdigit() or int(q[key]) > U64:
            raise InvalidArgument(f"{key} must be a non-negative integer")
        return int(q[key])

    async def get_job(self, request: web.Request) -> web.Response:
        self.web.require_token(request)
        job = await self._get(self._id(request))
        return web.json_response(job_json(job))

    async def _get(self, job_id: int):
        return self.fed.engine.get(job_id)

    async def act(self, request: web.Request) -> web.Response:
        self.web.require_token(request)
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise NotFound(f"no action {action!r}; actions: {', '.join(ACTIONS)}")
        job_id = self._id(request)
        body = await read_json(request)
        origin = self._peer("Origin", body.get("Origin"))
        if action == "fence":
            failed = body.get("Failed", False)
            if not isinstance(failed, bool):
                raise InvalidArgument("Failed must be true or false")
            return web.json_response(await self.fed.runnode.fence_local(job_id, origin, failed))
        job = self.fed.engine.get(job_id)
        if job.origin_node != origin:
            raise AccessDenied(f"job {job_id} was not forwarded here by {origin}")
        from schedd.core.engine import Caller

        await getattr(self.fed.engine, action)(job_id, Caller(uid=0))
        return web.json_response(job_state_json(self.fed.engine.get(job_id)))

    async def output(self, request: web.Request) -> web.Response:
        self.web.require_token(request)
        q = request.query
        stream = q.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise InvalidArgument("stream must be stdout or stderr")
        offset = self._qint(q, "offset", 0)
        limit = self._qint(q, "limit", MAX_CHUNK)
        if "origin" not in q:
            raise InvalidArgument("origin is required: a node reads the output only of jobs it forwarded here")
        origin = self._peer("origin", q["origin"])
        job = self.fed.engine.get(self._id(request))
        if job.origin_node != origin:
            raise AccessDenied(f"job {job.id} was not forwarded here by {origin}")
        path = job.spec.stderr_path if stream == "stderr" else job.spec.stdout_path
        data = await read_output(path, job.uid, offset, limit)
        return web.Response(body=data, content_type="application/octet-stream")

    async def mirror(self, request: web.Request) -> web.Response:
        node, recs = await self._states(request)
        return web.json_response(stale_json(self.fed.origin.receive_mirror(node, recs)))

    async def starts(self, request: web.Request) -> web.Response:
        """A run node asks to start copies of our jobs: {Granted: [its ids], Stale: [its ids to stop]}."""
        node, recs = await self._states(request)
        return web.json_response(await self.fed.origin.grant(node, recs))

    async def _states(self, request: web.Request) -> tuple[str, list[dict[str, Any]]]:
        """{Node, Jobs: [copy states]}: from a peer, validated."""
        self.web.require_token(request)
        body = await read_json(request)
        node = self._peer("Node", body.get("Node"))
        jobs = body.get("Jobs")
        if not isinstance(jobs, list):
            raise InvalidArgument("Jobs must be an array of job states")
        return node, [self._mirror_rec(i, r) for i, r in enumerate(jobs)]

    @staticmethod
    def _mirror_rec(i: int, r: Any) -> dict[str, Any]:
        where = f"Jobs[{i}]"
        if not isinstance(r, dict):
            raise InvalidArgument(f"{where} must be an object")
        for key in ("Id", "OriginId"):
            _int(f"{where}.{key}", r.get(key), 1, U64)
        _int(f"{where}.Attempt", r.setdefault("Attempt", 1), 0, U64)
        for key in ("StartTime", "EndTime", "CPUTimeUSec", "MemoryPeak"):
            _int(f"{where}.{key}", r.get(key), 0, U64)
        _int(f"{where}.ExitCode", r.get("ExitCode"), -I32 - 1, I32)
        if r.get("State") not in JobState.__members__:
            raise InvalidArgument(f"{where}.State must be one of {', '.join(JobState)}")
        _str(f"{where}.Reason", r.get("Reason"), empty=True)
        for key in ("StdoutPath", "StderrPath"):
            _str(f"{where}.{key}", r.get(key), empty=True)
        for key in ("AssignedCPUs", "AssignedGPUs"):
            v = r.get(key)
            if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= U32
                                                  for x in v):
                raise InvalidArgument(f"{where}.{key} must be an array of non-negative integers")
        return r
