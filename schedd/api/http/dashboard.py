"""The live dashboard: a page (shipped in the package, no CDN) fed by server-sent events.

Routes (all under the daemon's HTTP server):
- `GET /` the page; `GET /ui/static/NAME` its script and style.
- `GET /ui/state` a snapshot: queue (in the scheduler's order), waiting, running,
  recent ends and failures, nodes. `GET /ui/events` the same snapshot pushed as an
  SSE `state` event whenever a job changes (coalesced), from the event loop.
- `GET /ui/history[?since=T]` the plots' data (schedd.api.http.history): samples per node, the last
  hour's runs, recent waits; each new sample is pushed on /ui/events as a `sample` event.
- `GET /ui/jobs/ID` one job; the tail of its output, its command line and paths only
  with the operators' token (`[http] admin_token_file`, as Bearer): no other viewer sees them.
- `POST /ui/jobs/ID/{cancel,hold,release}` with the operators' token; the peers' token never
  works here, and without an operators' token the page is read-only.
Who may read the page at all (off loopback) and which Host names it answers to: schedd.api.http.web.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
from importlib import resources
from typing import Any, Callable, Iterable

from aiohttp import web

from schedd.core.engine import Caller
from schedd.errors import NotFound, SchedError
from schedd.api.http.metrics import safe_peers
from schedd.core.model import Job, JobState, now_usec
from schedd.core.output import read_tail
from schedd.protocol import PRIVATE_JOB_KEYS
from schedd.api.http.web import HttpError, Web

log = logging.getLogger("schedd.api.http.dashboard")

ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "plots.js": "text/javascript",
          "uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
QUEUE_SHOWN = 200
RECENT_SHOWN = 30
TAIL_BYTES = 16 << 10
COALESCE_S = 0.1  # at most 10 pushes a second; a burst of transitions becomes one push
# Shown only with the operators' token, like the output: a command line or path can carry what is not everyone's.
KEEPALIVE_S = 15.0

PeersFn = Callable[[], Iterable[dict[str, Any]]]


def summary(job: Job) -> dict[str, Any]:
    s = job.spec
    return {
        "id": job.id, "name": s.name, "user": s.owner, "state": job.state.value,
        "reason": job.reason, "cpus": s.cpus, "assigned_cpus": job.assigned_cpus, "memory": s.memory,
        "gpus": s.gpus, "priority": s.priority, "submit_time": job.submit_time, "start_time": job.start_time,
        "end_time": job.end_time, "exit_code": job.exit_code, "node": job.node,
        "suspended_usec": job.suspended_usec,
    }


class Dashboard:
    """An engine listener that keeps SSE subscribers up to date, and the page's routes."""

    def __init__(self, engine: Any, web_: Web, peers: PeersFn | None = None,
                 local_node: Callable[[], dict[str, Any]] | None = None, history: Any = None) -> None:
        self.engine = engine
        self.history = history
        self.web = web_
        self.peers = peers
        self.local_node = local_node
        self._subscribers: set[asyncio.Queue[str | None]] = set()
        self._pending: asyncio.Handle | None = None
        self._last_push = 0.0
        app = web_.app
        app.router.add_get("/", self.page)
        app.router.add_get("/ui/static/{name}", self.asset)
        app.router.add_get("/ui/state", self.state)
        app.router.add_get("/ui/events", self.events)
        app.router.add_get("/ui/history", self.history_view)
        app.router.add_get("/ui/whoami", self.whoami)
        app.router.add_get("/ui/jobs/{id}", self.job)
        app.router.add_post("/ui/jobs/{id}/{action}", self.action)
        app.on_shutdown.append(self._close_streams)
        engine.listeners.append(self)
        if history is not None:
            history.on_sample.append(self._sampled)

    async def _close_streams(self, _app: web.Application) -> None:
        """At daemon stop: end every event stream now (aiohttp would otherwise wait for them)."""
        for q in self._subscribers:
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
            q.put_nowait(None)

    # -- the snapshot ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        e = self.engine
        queue = e.scheduler.head(QUEUE_SHOWN)
        queued = {j.id for j in queue}
        running, waiting, ended = [], [], []
        for j in e.jobs.values():
            if j.state.active:
                running.append(j)
            elif j.state.queued and j.id not in queued:
                waiting.append(j)
            elif j.state.terminal:
                ended.append(j)
        running.sort(key=lambda j: j.start_time)
        waiting += e.on_disk_jobs(0, QUEUE_SHOWN)  # the held jobs kept on disk (engine/loading.py)
        waiting = heapq.nsmallest(QUEUE_SHOWN, waiting, key=lambda j: j.id)
        failures = heapq.nlargest(RECENT_SHOWN, (j for j in ended if j.state == JobState.FAILED),
                                  key=lambda j: (j.end_time, j.id))
        ended = heapq.nlargest(RECENT_SHOWN, ended, key=lambda j: (j.end_time, j.id))
        nodes = [self.local_node()] if self.local_node else []
        nodes += [p for p in safe_peers(self.peers) if not p.get("Local")]
        pending, active = e.counts()
        return {
            "node": e.config.node_name, "now": now_usec(),
            "counts": {"pending": pending, "running": active, "queue": len(e.scheduler)},
            "queue": [summary(j) for j in queue],
            "waiting": [summary(j) for j in waiting],
            "running": [summary(j) for j in running],
            "recent": [summary(j) for j in ended],
            "failures": [summary(j) for j in failures],
            "nodes": nodes,
        }

    # -- pushing -----------------------------------------------------------------

    def _changed(self) -> None:
        """Push soon: at once after a quiet spell (the same loop turn's changes go along), else when
        COALESCE_S has passed since the last push."""
        if self._subscribers and self._pending is None:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._last_push + COALESCE_S - loop.time())
            self._pending = loop.call_later(wait, self._push) if wait else loop.call_soon(self._push)

    def _push(self) -> None:
        self._pending = None
        self._last_push = asyncio.get_running_loop().time()
        if not self._subscribers:
            return
        frame = f"event: state\ndata: {json.dumps(self.snapshot())}\n\n"
        for q in self._subscribers:
            if q.full():  # a slow reader only needs the newest snapshot
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(frame)

    def _sampled(self, rows: dict[str, list]) -> None:
        """A new history row per node: to every live page at once (a slow one may lose it, and refetches)."""
        if not self._subscribers:
            return
        frame = f"event: sample\ndata: {json.dumps({'interval_s': self.history.interval, 'nodes': rows})}\n\n"
        for q in self._subscribers:
            if not q.full():
                q.put_nowait(frame)

    def job_added(self, job: Job) -> None:
        self._changed()

    def job_changed(self, job: Job, fields: frozenset[str], old_state: JobState) -> None:
        self._changed()

    def job_released(self, job: Job) -> None:
        self._changed()

    def job_loaded(self, job: Job) -> None:
        pass

    def job_unloaded(self, job: Job) -> None:
        pass

    def manager_changed(self, facts: frozenset[str]) -> None:
        self._changed()

    def nodes_changed(self) -> None:
        self._changed()

    # -- routes ------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=_asset("index.html"), content_type="text/html", headers={
            "Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise HttpError(404, "not-found", f"no asset {name!r}")
        return web.Response(text=_asset(name), content_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def history_view(self, request: web.Request) -> web.Response:
        if self.history is None:
            raise HttpError(404, "not-found", "this daemon keeps no history")
        text = request.query.get("since", "0")
        try:
            since = float(text)
            if not since >= 0 or since == float("inf"):
                raise ValueError
        except ValueError:
            raise HttpError(400, "bad-since", f"since={text!r}: give a time in seconds since the epoch") from None
        resp = web.Response(body=self.history.view_bytes(since), content_type="application/json",
                            headers={"Cache-Control": "no-cache"})
        resp.enable_compression()
        return resp

    async def whoami(self, request: web.Request) -> web.Response:
        return web.json_response({"authorized": self.web.is_admin(request), "token_configured":
                                  self.web.admin_token is not None})

    async def events(self, request: web.Request) -> web.StreamResponse:
        if len(self._subscribers) >= self.web.max_event_streams:
            raise HttpError(503, "too-many-streams", f"this node already serves {len(self._subscribers)} live "
                                                     "dashboards (the most it keeps open); try again later, or read "
                                                     "/ui/state", headers={"Retry-After": "10"})
        q: asyncio.Queue[str | None] = asyncio.Queue(maxsize=2)
        self._subscribers.add(q)  # before the first await: the cap holds against a burst of connections
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        try:
            await resp.prepare(request)
            await resp.write(f"retry: 1000\nevent: state\ndata: {json.dumps(self.snapshot())}\n\n".encode())
            while True:
                try:
                    frame = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    frame = ": keepalive\n\n"
                if frame is None:
                    break
                await resp.write(frame.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._subscribers.discard(q)
        return resp

    def _job_id(self, request: web.Request) -> int:
        text = request.match_info["id"]
        if not text.isdigit() or not 0 < int(text) < 1 << 63:
            raise HttpError(400, "bad-id", f"{text!r} is not a job id")
        return int(text)

    async def job(self, request: web.Request) -> web.Response:
        from schedd.api.jobview import job_record  # the same keys as GetJob

        jid = self._job_id(request)
        try:
            job = self.engine.get(jid)
        except NotFound as e:
            raise HttpError(404, "not-found", e.message) from None
        out: dict[str, Any] = job_record(job)
        if not self.web.is_admin(request):
            for key in PRIVATE_JOB_KEYS:
                out.pop(key, None)
            out["Output"] = None
            out["OutputNote"] = ("the output (and command line) are shown only with the operators' token"
                                 if self.web.admin_token else "this node has no operators' token: the output (and "
                                 "command line) are not shown here; use schedctl logs")
        elif not job.start_time:
            out["Output"], out["OutputNote"] = "", "not started yet"
        else:
            try:
                data = await read_tail(job.spec.stdout_path, job.spec.uid, TAIL_BYTES)
                out["Output"] = data.decode("utf-8", "replace")
                out["OutputNote"] = f"last {TAIL_BYTES >> 10} KiB of {job.spec.stdout_path}"
            except (SchedError, OSError) as e:
                why = e.message if isinstance(e, SchedError) else f"cannot read {job.spec.stdout_path}: {e.strerror}"
                out["Output"], out["OutputNote"] = None, why
        return web.json_response(out)

    async def action(self, request: web.Request) -> web.Response:
        self.web.require_admin(request)
        jid = self._job_id(request)
        action = request.match_info["action"]
        fn = {"cancel": self.engine.cancel, "hold": self.engine.hold, "release": self.engine.release}.get(action)
        if fn is None:
            raise HttpError(404, "not-found", f"no action {action!r}; actions are cancel, hold, release")
        await fn(jid, Caller(0))  # the operators' token: its holder acts as the administrator
        log.info("job %d: %s from the dashboard with the operators' token (%s)", jid, action, request.remote)
        return web.json_response({"id": jid, "action": action, "state": self.engine.get(jid).state.value})


def _asset(name: str) -> str:
    return (resources.files("schedd") / "data" / "dashboard" / name).read_text(encoding="utf-8")
