"""Two federated nodes in one process on loopback (plain HTTP), jobs held so nothing runs:
the origin's client side against a real peer, with faults injected at the peer."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import socket
from pathlib import Path

import pytest
from aiohttp import web
from dbus_fast import Variant

from schedd.config import Config, FederationConfig, HttpConfig, PeerConfig
from schedd.core.engine import Caller, Engine
from schedd.errors import AccessDenied, InvalidArgument, InvalidState, Unsatisfiable
from schedd.cluster.federation import Federation
from prereq import unavailable
from schedd.cluster.api import FederationApi
from schedd.core.model import JobState
from schedd.core.placement import Need
from schedd.core.store import Store
from schedd.executor.fake import FakeExecutor
from schedd.api.http.web import Web

TOKEN = "nodes-token-0123456789abcdef"
ANY_ACCOUNT = FederationConfig(uid_min=1, uid_max=2**32 - 2, deny_groups=())  # the tests' user may be a system one


def user() -> pwd.struct_passwd:
    for pw in pwd.getpwall():
        if pw.pw_uid not in (0, 65534):
            return pw
    unavailable("no non-root user in /etc/passwd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, tmp: Path, name: str, port: int, peer: str, peer_port: int) -> None:
        d = tmp / name
        d.mkdir()
        tok = d / "token"
        tok.write_text(TOKEN)
        os.chmod(tok, 0o600)
        self.cfg = Config(node_name=name, cpu_ids=[0], memory=1 << 30, state_dir=d,
                          http=HttpConfig(listen=("127.0.0.1", port), token_file=tok, heartbeat_interval_usec=100_000),
                          peers=[PeerConfig(peer, f"http://127.0.0.1:{peer_port}")],
                          federation=ANY_ACCOUNT)
        self.store = Store(d / "schedd.db")
        self.engine = Engine(self.cfg, self.store)
        self.engine.jobs_dir.mkdir()
        self.web = Web(self.cfg.http)
        self.fed = Federation(self.engine, self.cfg, self.web)
        FederationApi(self.fed, self.web)
        self.lose_forward_answers = 0  # fault: record this many forwards, then drop the connection unanswered
        self.web.app.middlewares.append(self._lose_answer)

    @web.middleware
    async def _lose_answer(self, request: web.Request, handler):
        response = await handler(request)
        if self.lose_forward_answers and request.method == "POST" and request.path == "/api/v1/jobs":
            self.lose_forward_answers -= 1
            request.transport.close()  # the copy is recorded here; the origin never hears so
        return response

    async def start(self) -> None:
        await self.web.start()
        await self.fed.start()

    async def stop(self) -> None:
        await self.fed.stop()
        await self.web.stop()
        await self.store.drain()
        self.store.close()


async def until(pred, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def pair(tmp_path: Path):
    pa, pb = free_port(), free_port()
    a, b = Node(tmp_path, "a", pa, "b", pb), Node(tmp_path, "b", pb, "a", pa)
    await a.start()
    await b.start()
    await until(lambda: a.fed.peers["b"].up and b.fed.peers["a"].up, "both up")
    yield a, b
    await a.stop()
    await b.stop()


def held(node: str, **extra) -> dict:
    return {"Command": Variant("as", ["true"]), "Node": Variant("s", node), "Hold": Variant("b", True), **extra}


async def test_a_forward_whose_answer_is_lost_is_retried_into_the_same_copy(pair):
    a, b = pair
    b.lose_forward_answers = 1
    job = await a.engine.submit(held("b"), Caller(uid=user().pw_uid))
    assert b.lose_forward_answers == 0, "the fault was not injected"
    copies = [j for j in b.engine.jobs.values() if j.origin_node == "a"]
    assert len(copies) == 1 and copies[0].origin_id == job.id
    assert (job.remote_node, job.remote_id, job.node, job.state) == ("b", copies[0].id, "b", JobState.HELD)
    assert a.fed.origin.forward_retries == 1


async def test_a_refusal_of_the_peer_reaches_the_origin_as_the_same_error(pair):
    """The peer's error body names its D-Bus error: the origin's client gets InvalidState, not a generic one."""
    a, b = pair
    who = Caller(uid=user().pw_uid)
    job = await a.engine.submit(held("b"), who)
    with pytest.raises(InvalidState) as there:
        await b.engine.suspend(job.remote_id, Caller(uid=0))
    with pytest.raises(InvalidState) as here:
        await a.engine.suspend(job.id, who)
    assert here.value.message == f"node b: {there.value.message}"


async def test_actions_through_the_origin_reach_the_copy_and_come_back(pair):
    a, b = pair
    who = Caller(uid=user().pw_uid)
    job = await a.engine.submit(held("b"), who)
    copy = b.engine.jobs[job.remote_id]
    assert copy.spec.user_name == user().pw_name and copy.spec.uid == user().pw_uid
    await a.engine.cancel(job.id, who)
    assert copy.state == JobState.CANCELLED and job.state == JobState.CANCELLED and job.reason == "cancelled"
    other = await a.engine.submit(held("b"), who)
    with pytest.raises(AccessDenied):
        await a.engine.cancel(other.id, Caller(uid=who.uid + 12345))  # checked at the origin, never sent
    assert b.engine.jobs[other.remote_id].state == JobState.HELD


async def test_a_refusal_at_the_peer_is_the_submitters_error(pair):
    a, b = pair
    with pytest.raises(AccessDenied, match="jobs of root are not run on other nodes"):
        await a.engine.submit(held("b"), Caller(uid=0))  # refused at the origin already
    b.cfg.max_pending_per_user = 0  # b now refuses every job: its words reach the submitter
    with pytest.raises(InvalidArgument, match=r"node b: .*queues at most 0"):
        await a.engine.submit(held("b"), Caller(uid=user().pw_uid))
    ended = [j for j in a.engine.jobs.values() if j.state == JobState.FAILED]
    assert len(ended) == 1 and ended[0].reason == "resources" and not b.engine.jobs


async def test_a_peer_refuses_system_accounts_and_the_submitter_hears_access_denied(pair):
    a, b = pair
    try:
        daemon = pwd.getpwuid(1)
    except KeyError:
        unavailable("no uid 1 here")
    b.cfg.federation = FederationConfig(uid_min=1000, uid_max=60000)
    with pytest.raises(AccessDenied, match=rf"node b: .*{daemon.pw_name!r} is uid 1, a system account") as e:
        await a.engine.submit(held("b"), Caller(uid=1))
    assert e.value.dbus_name == "org.schedd.Schedd1.Error.AccessDenied"
    assert not b.engine.jobs  # nothing was created there
    b.cfg.federation = FederationConfig(uid_min=1, uid_max=60000, deny_groups=(grp.getgrgid(daemon.pw_gid).gr_name,))
    with pytest.raises(AccessDenied, match="privileged groups"):
        await a.engine.submit(held("b"), Caller(uid=1))
    assert not b.engine.jobs


async def test_a_peer_that_stops_beating_is_down_and_its_unstarted_jobs_are_placed_again(pair):
    a, b = pair
    who = Caller(uid=user().pw_uid)
    job = await a.engine.submit(held("b"), who)
    told: list[str] = []  # what the dashboard hears: it pushes the node table at once
    a.fed.node_listeners.append(lambda: told.append(a.fed.node_rows()[1]["State"]))
    for t in b.fed.net.loops:
        t.cancel()  # b's daemon hangs: no more heartbeats
    await until(lambda: not a.fed.peers["b"].up, "a to see b down", timeout=2)
    assert told[-1] == "down"
    # It never started on b: to be placed again, without counting as a failure; held, it waits for a release.
    assert (job.remote_node, job.remote_id, job.node_failures, job.state) == ("*", 0, 0, JobState.HELD)
    assert a.fed.waiting == {job.id: job}
    assert {r["Name"]: r["State"] for r in a.fed.node_rows()} == {"a": "up", "b": "down"}


async def test_what_queued_jobs_ask_for_is_not_free_for_placement(pair):
    from schedd.core.model import Job, JobSpec

    a, _b = pair
    assert a.fed.views()[0].free_cpus == 1
    queued = Job(id=a.engine.allocate_id(), spec=JobSpec(command=["true"], name="q", cpus=1, memory=1 << 28))
    a.engine.scheduler.enqueue(queued)  # waiting for the next scheduling pass
    local = a.fed.views()[0]
    assert (local.free_cpus, local.free_memory) == (0, (1 << 30) - (1 << 28))
    assert not local.fits_now(Need(1, 1 << 20))
    a.engine.scheduler.dequeue(queued.id)


async def test_the_origin_hears_every_transition_even_of_a_short_job(pair):
    a, b = pair
    seen: list[str] = []

    class Watch:
        def job_added(self, job): pass
        def job_released(self, job): pass
        def job_loaded(self, job): pass
        def job_unloaded(self, job): pass
        def manager_changed(self, props): pass

        def job_changed(self, job, props, old_state):
            if job.state != old_state:
                seen.append(job.state.value)

    job = await a.engine.submit(held("b"), Caller(uid=user().pw_uid))
    a.engine.listeners.append(Watch())
    copy = b.engine.jobs[job.remote_id]
    # The copy starts and ends within one pass of b's loop: its origin still hears both.
    b.engine._set(copy, JobState.RUNNING, "", {"State"})
    copy.exit_code = 3
    b.engine._set(copy, JobState.FAILED, "exit-code", {"State", "ExitCode"})
    await until(lambda: job.state == JobState.FAILED, "the end at the origin")
    assert seen == ["RUNNING", "FAILED"] and job.exit_code == 3 and job.reason == "exit-code"


class _RunsContainers(FakeExecutor):
    """An executor that says it runs Container jobs and takes every image."""

    features = frozenset({"container"})

    async def check_specs(self, specs) -> None:
        self.checked = [s.container for s in specs]


async def test_container_jobs_go_only_to_a_node_that_says_it_runs_them(pair):
    a, b = pair
    who = Caller(uid=user().pw_uid)
    image = {"Container": Variant("s", "localhost/busybox:1")}
    with pytest.raises(Unsatisfiable, match="Container: no node of this cluster runs containers"):
        await a.engine.submit(held("any", **image), who)
    b.engine.executor = _RunsContainers(lambda *_: None)  # b says so in its next heartbeat
    await until(lambda: "container" in (a.fed.peers["b"].view.features if a.fed.peers["b"].view else ()),
                "b's heartbeat naming its container feature")
    job = await a.engine.submit(held("any", **image), who)  # would fit here now, but a runs no containers
    copy = b.engine.jobs[job.remote_id]
    assert job.remote_node == "b" and copy.spec.container == "localhost/busybox:1"
    assert b.engine.executor.checked == ["localhost/busybox:1"]  # the image is checked where it will run
    plain = await a.engine.submit(held("any"), who)
    assert plain.remote_node == ""  # a plain job still stays here
    with pytest.raises(Unsatisfiable, match="Container: node a has no container runtime"):
        await b.engine.submit(held("a", **image), who)
