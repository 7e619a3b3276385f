"""The slurmrestd client against a fake slurmrestd on loopback (aiohttp): Slurm's refusals become the
submitter's errors, an unreachable or garbled slurmrestd is a down peer, and each request carries the
user's own signed token."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from schedd.cluster.slurm.mapping import BadRecord, jobs_of
from schedd.cluster.slurm.restd import Restd
from schedd.cluster.slurm.token import Tokens
from schedd.cluster.wire import PeerError, PeerRefused
from schedd.errors import AccessDenied, InvalidArgument, NotFound

KEY = b"0123456789abcdef0123456789abcdef"


async def serve(handler):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


def call(handler, method="GET", path="/jobs", user="alice", **kw):
    async def go():
        runner, url = await serve(handler)
        r = Restd("hpc", url, Tokens(KEY, 600))
        r.open()
        try:
            return await r.call(method, path, user, **kw)
        finally:
            await r.close()
            await runner.cleanup()

    return asyncio.run(go())


def answer(body, status=200, raw: bytes | None = None):
    async def handler(request):
        return web.Response(status=status, body=raw if raw is not None else json.dumps(body).encode(),
                            content_type="application/json")
    return handler


def test_each_request_carries_the_users_own_token():
    seen = {}

    async def handler(request):
        seen.update(request.headers)
        seen["path"] = request.path
        return web.json_response({"errors": [], "jobs": []})

    assert call(handler, user="bob") == {"errors": [], "jobs": []}
    assert seen["X-SLURM-USER-NAME"] == "bob" and seen["path"] == "/slurm/v0.0.38/jobs"
    assert seen["X-SLURM-USER-TOKEN"] == Tokens(KEY, 600).for_user("bob")


@pytest.mark.parametrize("handler,cls,words", [
    (answer({"errors": [{"error": "Invalid job id specified", "error_number": 2017}]}, 500), NotFound, "job id"),
    (answer({"errors": [{"description": "bad key", "error": "Unable to process key"}]}, 200), InvalidArgument,
     "bad key"),
    (answer({}, 401), AccessDenied, "token"),
    (answer(None, 403, raw=b"Authentication failure"), AccessDenied, "token"),
])
def test_slurms_refusals_are_the_submitters_errors(handler, cls, words):
    with pytest.raises(PeerRefused) as e:
        call(handler)
    assert isinstance(e.value.error, cls) and words in e.value.error.message


@pytest.mark.parametrize("handler", [
    answer({"errors": [{"error": "Unable to contact slurm controller", "error_number": 1001}]}, 500),
    answer(None, 500, raw=b"<html>oops"),
    answer(None, 200, raw=b"{not json"),
    answer(None, 200, raw=b"[1, 2]"),
    answer(None, 502, raw=b""),
])
def test_an_unreachable_or_garbled_slurmrestd_is_a_down_peer(handler):
    with pytest.raises(PeerError):
        call(handler)


def test_nobody_listening_is_a_down_peer():
    async def go():
        r = Restd("hpc", "http://127.0.0.1:9", Tokens(KEY, 600))
        r.open()
        try:
            await r.call("GET", "/ping", "alice", timeout=2)
        finally:
            await r.close()

    with pytest.raises(PeerError, match="unreachable"):
        asyncio.run(go())


def test_a_held_submission_is_taken_with_its_warning():
    body = {"errors": [{"error": "Job is in held state, pending scheduler release", "error_number": 2038}],
            "job_id": 12}
    assert call(answer(body), "POST", "/job/submit", done="job_id")["job_id"] == 12
    with pytest.raises(PeerRefused):
        call(answer(body), "POST", "/job/submit")


def test_an_answer_that_is_json_but_not_slurms_is_refused_by_the_mapping():
    got = call(answer({"errors": [], "jobs": "all of them"}))
    with pytest.raises(BadRecord):
        jobs_of(got)


def test_a_redirect_is_not_followed_with_the_users_token():
    """slurmrestd (or whatever answers at its address) cannot send the token elsewhere."""
    elsewhere: list[dict] = []

    async def go():
        async def thief(request):
            elsewhere.append(dict(request.headers))
            return web.json_response({"errors": [], "jobs": []})

        trap, trap_url = await serve(thief)

        async def redirect(request):
            raise web.HTTPTemporaryRedirect(trap_url + request.path)

        runner, url = await serve(redirect)
        r = Restd("hpc", url, Tokens(KEY, 600))
        r.open()
        try:
            with pytest.raises(PeerError, match="redirect"):
                await r.call("GET", "/jobs", "alice")
        finally:
            await r.close()
            await runner.cleanup()
            await trap.cleanup()

    asyncio.run(go())
    assert elsewhere == []


def test_json_nested_too_deep_is_garbage_not_a_crash():
    with pytest.raises(PeerError, match="without JSON"):
        call(answer(None, raw=b"[" * 200_000 + b"]" * 200_000))


def test_a_big_answer_is_parsed_off_the_event_loop(monkeypatch):
    """A queue of many jobs is megabytes of JSON: parsed in a thread, the loop keeps answering."""
    import threading

    import schedd.cluster.slurm.restd as restd

    threads: list[str] = []
    real = restd._loads
    monkeypatch.setattr(restd, "_loads", lambda raw: threads.append(threading.current_thread().name) or real(raw))
    jobs = [{"job_id": i, "job_state": "PENDING", "comment": "x" * 100} for i in range(1, 20_000)]
    got = call(answer({"errors": [], "jobs": jobs}))
    assert len(got["jobs"]) == len(jobs)
    assert threads and threads[0] != threading.main_thread().name
    small = call(answer({"errors": [], "jobs": []}))
    assert small == {"errors": [], "jobs": []} and threads[-1] == threading.main_thread().name
