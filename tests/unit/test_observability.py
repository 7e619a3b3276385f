"""Metrics, accounting figures, the scheduler's head, wait's progress line, the dashboard's routes."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from schedctl import render
from schedd.core import stats
from schedd.config import HttpConfig
from schedd.api.http.dashboard import Dashboard
from schedd.errors import AccessDenied
from schedd.core.output import read_tail_blocking as read_tail
from schedd.errors import InvalidState, NotFound
from schedd.core.ledger import Ledger
from schedd.api.http.metrics import Metrics
from schedd.core.model import Job, JobSpec, JobState
from schedd.core.scheduler import Scheduler
from schedd.api.http.web import Web

GiB = 1 << 30
S = 1_000_000
TOKEN = "unit-token-0123456789abcdef"  # the peers'
ADMIN = "unit-admin-0123456789abcdef"  # the operators'


def job(jid: int, user: str = "alice", state: JobState = JobState.PENDING, priority: int = 0, **kw) -> Job:
    spec = JobSpec(command=["true"], name=f"j{jid}", cpus=kw.pop("cpus", 1), memory=GiB, priority=priority,
                   uid=1000 if user == "alice" else 1001, user_name=user)
    return Job(id=jid, spec=spec, state=state, **kw)


class FakeEngine:
    """What metrics, stats and the dashboard read of the engine."""

    def drain_state(self) -> str:
        return self.drained

    def __init__(self) -> None:
        self.config = SimpleNamespace(node_name="n1")
        self.ledger = Ledger([0, 1, 2, 3], 8 * GiB, [0])
        self.scheduler = Scheduler(self.ledger)
        self.jobs: dict[int, Job] = {}
        self.listeners: list = []
        self.archive: list[tuple] = []
        self.store = SimpleNamespace(accounting=lambda uid, since, exclude: [
            r for r in self.archive if r[0] not in exclude and r[3] >= since])
        self.calls: list[tuple[str, int]] = []
        self.drained = ""  # what drain_state() answers (schedctl drain)

    def on_disk_by_owner(self) -> Counter:
        return Counter()

    def on_disk_jobs(self, after: int, limit: int) -> list[Job]:
        return []

    def counts(self) -> tuple[int, int]:
        c = [j.state for j in self.jobs.values()]
        return (sum(s in (JobState.PENDING, JobState.HELD) for s in c),
                sum(s in (JobState.RUNNING, JobState.SUSPENDED) for s in c))

    def add(self, j: Job) -> Job:
        self.jobs[j.id] = j
        for l in self.listeners:
            l.job_added(j)
        return j

    def move(self, j: Job, state: JobState, reason: str = "", **fields) -> None:
        old = j.state
        j.state, j.reason = state, reason
        for k, v in fields.items():
            setattr(j, k, v)
        for l in self.listeners:
            l.job_changed(j, {"State"}, old)

    def get(self, jid: int) -> Job:
        if jid not in self.jobs:
            raise NotFound(f"no job {jid}")
        return self.jobs[jid]

    async def cancel(self, jid: int, caller) -> None:
        j = self.get(jid)
        if j.state.terminal:
            raise InvalidState(f"job {jid} is already {j.state.value}")
        self.calls.append(("cancel", caller.uid))
        self.move(j, JobState.CANCELLED, "cancelled")

    hold = release = cancel


def parse(text: bytes) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_count_transitions_and_read_gauges_at_scrape_time():
    e = FakeEngine()
    peers = [{"Name": "n1", "Local": True}, {"Name": "b", "State": "up", "LastSeenUSec": 1},
             {"Name": "c", "State": "down", "LastSeenUSec": 0}]
    broken: list[bool] = []
    m = Metrics(e, peers=lambda: peers if not broken else 1 / 0)
    a = e.add(job(1, submit_time=10 * S))
    b = e.add(job(2, user="bob", submit_time=10 * S))
    e.add(job(3, state=JobState.HELD, submit_time=10 * S))
    alloc = e.ledger.allocate(2, 3 * GiB)
    e.move(a, JobState.RUNNING, start_time=10 * S + 250_000)
    e.move(b, JobState.FAILED, "exit-code", end_time=12 * S)
    got = parse(m.render())
    assert got[("schedd_jobs_submitted_total", (("user", "alice"),))] == 2
    assert got[("schedd_jobs_started_total", (("user", "alice"),))] == 1
    assert got[("schedd_jobs_finished_total", (("reason", "exit-code"), ("state", "FAILED"), ("user", "bob")))] == 1
    assert got[("schedd_jobs", (("state", "RUNNING"), ("user", "alice")))] == 1
    assert got[("schedd_jobs", (("state", "HELD"), ("user", "alice")))] == 1
    assert got[("schedd_jobs", (("state", "SUSPENDED"), ("user", "")))] == 0  # every state has a series
    assert got[("schedd_job_submit_to_start_seconds_sum", ())] == pytest.approx(0.25)
    assert got[("schedd_job_submit_to_start_seconds_bucket", (("le", "0.25"),))] == 1
    assert got[("schedd_node_cpus", ())] == 4 and got[("schedd_node_cpus_allocated", ())] == 2
    assert got[("schedd_node_memory_allocated_bytes", ())] == 3 * GiB
    assert got[("schedd_node_gpus", ())] == 1 and got[("schedd_node_gpus_allocated", ())] == 0
    assert got[("schedd_peer_up", (("peer", "b"),))] == 1 and got[("schedd_peer_up", (("peer", "c"),))] == 0
    assert got[("schedd_peer_last_heartbeat_age_seconds", (("peer", "c"),))] == float("inf")
    assert ("schedd_peer_up", (("peer", "n1"),)) not in got  # the local node is no peer
    assert not any(name.endswith("_created") for name, _ in got)
    e.ledger.release(alloc)
    assert parse(m.render())[("schedd_node_cpus_allocated", ())] == 0
    broken.append(True)  # a broken federation: the scrape still answers, without peers
    got = parse(m.render())
    assert ("schedd_peer_up", (("peer", "b"),)) not in got and got[("schedd_node_cpus", ())] == 4


def test_queue_wait_counts_from_the_last_time_the_job_became_pending():
    e = FakeEngine()
    m = Metrics(e)
    j = e.add(job(1, state=JobState.HELD, submit_time=1 * S))
    m._pending_since.pop(1, None)
    e.move(j, JobState.PENDING)
    m._pending_since[1] = 100 * S  # released at t=100 s
    e.move(j, JobState.RUNNING, start_time=101 * S)
    got = parse(m.render())
    assert got[("schedd_job_queue_wait_seconds_sum", ())] == pytest.approx(1.0)
    assert got[("schedd_job_submit_to_start_seconds_sum", ())] == pytest.approx(100.0)


# -- accounting figures ----------------------------------------------------------------------------


def test_stats_per_user_and_total():
    recs = [
        stats.Record("alice", "COMPLETED", S, 2 * S, 12 * S, 3600 * S, 100),
        stats.Record("alice", "FAILED", S, 4 * S, 5 * S, 0, 300),
        stats.Record("alice", "PENDING", S),
        stats.Record("bob", "COMPLETED", S, 3 * S, 4 * S, 1800 * S, 5),
    ]
    f = stats.aggregate(recs)
    a, b, t = f["Users"]["alice"], f["Users"]["bob"], f["Total"]
    assert list(f["Users"]) == ["alice", "bob"]
    assert a["Jobs"] == 3 and a["States"] == {"COMPLETED": 1, "FAILED": 1, "PENDING": 1}
    assert a["SuccessRate"] == 0.5 and a["MeanWaitSec"] == 2.0 and a["P95WaitSec"] == 3.0
    assert a["CPUHours"] == 1.0 and a["MaxMemoryPeak"] == 300 and a["MeanRunSec"] == 5.5
    assert b["SuccessRate"] == 1.0 and b["CPUHours"] == 0.5
    assert t["Jobs"] == 4 and t["CPUHours"] == 1.5 and t["P95WaitSec"] == 3.0
    empty = stats.aggregate([])["Total"]
    assert empty["Jobs"] == 0 and "SuccessRate" not in empty and "MeanWaitSec" not in empty
    v = stats.to_variants(f)
    assert v["Total"].signature == "a{sv}" and v["Users"].signature == "a{sa{sv}}"
    text = render.stats_text(json.loads(json.dumps(f)))
    assert text.splitlines()[-1].split()[0] == "total"
    assert render.stats_text(stats.aggregate([stats.Record("x", "PENDING", 0)]))  # unknown figures print as -


def test_percentile_is_nearest_rank():
    vals = [float(i) for i in range(1, 101)]
    assert stats.percentile(vals, 0.95) == 95.0
    assert stats.percentile([7.0], 0.95) == 7.0
    assert stats.percentile([], 0.95) is None


def test_wait_and_run_time():
    assert stats.wait_usec(10, 25) == 15 and stats.wait_usec(10, 0, now=40) == 30 and stats.wait_usec(0, 5) == 0
    assert stats.run_usec(0, 0) == 0 and stats.run_usec(5, 9) == 4 and stats.run_usec(5, 0, now=8) == 3


def test_collect_merges_memory_and_archive_with_filters():
    e = FakeEngine()
    e.add(job(1, submit_time=50 * S))
    e.add(job(2, user="bob", submit_time=50 * S))
    e.archive = [(1, "alice", "PENDING", 1, 0, 0, 0, 0, 0),  # an older copy of live job 1: memory wins
                 (7, "alice", "COMPLETED", 60 * S, 61 * S, 62 * S, 5 * S, 10, 0),
                 (8, "carol", "FAILED", 1 * S, 2 * S, 3 * S, 0, 0, 0)]
    f = stats.collect(e)
    assert f["Total"]["Jobs"] == 4 and set(f["Users"]) == {"alice", "bob", "carol"}
    recent = stats.collect(e, since=40 * S)
    assert set(recent["Users"]) == {"alice", "bob"} and recent["Users"]["alice"]["Jobs"] == 2


# -- the scheduler's head, wait's progress --------------------------------------------------------


def test_head_is_the_scheduling_order_without_sorting_everything():
    led = Ledger([0], 4 * GiB)
    s = Scheduler(led)
    for jid, prio in [(1, 0), (2, 5), (3, 0), (4, 9), (5, 5)]:
        s.enqueue(job(jid, priority=prio))
    s.dequeue(4)
    assert [j.id for j in s.head(3)] == [2, 5, 1]
    assert [j.id for j in s.head(10)] == [j.id for j in s.ordered()] == [2, 5, 1, 3]
    assert s.head(0) == []


def test_progress_line_and_bar():
    counts = {"COMPLETED": 2, "FAILED": 1, "RUNNING": 1}
    assert render.progress(counts, 4, bar=False) == "progress: 3/4 ended: 2 COMPLETED, 1 FAILED, 1 RUNNING"
    assert render.progress(counts, 4, bar=True, width=8) == "[######--] 3/4 ended: 2 COMPLETED, 1 FAILED, 1 RUNNING"
    assert render.state_change(3, "FAILED", "exit-code", when=0).endswith("job 3 FAILED (exit-code)")


# -- the dashboard -------------------------------------------------------------------------------


def secret(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    os.chmod(p, 0o600)
    return p


@pytest.fixture
async def dash(tmp_path: Path):
    e = FakeEngine()
    w = Web(HttpConfig(listen=("127.0.0.1", 0), token_file=secret(tmp_path, "token", TOKEN),
                       admin_token_file=secret(tmp_path, "admin", ADMIN)))
    d = Dashboard(e, w, peers=lambda: [{"Name": "n1", "Local": True}, {"Name": "b", "State": "down"}],
                  local_node=lambda: {"Name": "n1", "Local": True, "State": "up"})
    async with TestClient(TestServer(w.app)) as c:
        yield e, c, d


async def test_dashboard_snapshot_orders_the_queue_like_the_scheduler(dash):
    e, c, _ = dash
    for jid, prio in [(1, 0), (2, 7), (3, 0)]:
        e.scheduler.enqueue(e.add(job(jid, priority=prio)))
    e.add(job(4, state=JobState.HELD))
    e.add(job(5, state=JobState.RUNNING, start_time=1))
    e.add(job(6, state=JobState.FAILED, reason="oom-kill", end_time=5))
    e.add(job(7, state=JobState.COMPLETED, reason="success", end_time=9))
    s = await (await c.get("/ui/state")).json()
    assert [j["id"] for j in s["queue"]] == [2, 1, 3]
    assert [j["id"] for j in s["waiting"]] == [4]
    assert [j["id"] for j in s["running"]] == [5]
    assert [j["id"] for j in s["recent"]] == [7, 6]
    assert [(j["id"], j["reason"]) for j in s["failures"]] == [(6, "oom-kill")]
    assert [(n["Name"], n["State"]) for n in s["nodes"]] == [("n1", "up"), ("b", "down")]


async def test_dashboard_pushes_changes_over_sse(dash):
    e, c, _ = dash
    r = await c.get("/ui/events")
    assert r.headers["Content-Type"].startswith("text/event-stream")

    async def next_state() -> dict:
        while True:
            line = (await asyncio.wait_for(r.content.readline(), 5)).decode()
            if line.startswith("data: "):
                return json.loads(line[6:])

    assert (await next_state())["queue"] == []
    e.scheduler.enqueue(e.add(job(1)))
    e.scheduler.enqueue(e.add(job(2)))  # coalesced with the first into one push
    assert [j["id"] for j in (await next_state())["queue"]] == [1, 2]
    r.close()


async def test_dashboard_actions_need_the_token_and_output_is_private(dash, tmp_path: Path):
    e, c, _ = dash
    out = tmp_path / "out"
    out.write_text("secret output\n")
    j = e.add(job(1, state=JobState.COMPLETED, start_time=1, end_time=2))
    j.spec.stdout_path, j.spec.uid = str(out), os.getuid()
    e.add(job(2))
    anon = await (await c.get("/ui/jobs/1")).json()
    assert anon["Output"] is None and "token" in anon["OutputNote"] and "Command" not in anon
    # The peers' token is no dashboard credential: no output, no command line, no action.
    peer = {"Authorization": f"Bearer {TOKEN}"}
    seen = await (await c.get("/ui/jobs/1", headers=peer)).json()
    assert seen["Output"] is None and "Command" not in seen and "StdoutPath" not in seen
    r = await c.post("/ui/jobs/2/cancel", headers=peer)
    body = await r.json()
    assert r.status == 403 and body["error"] == "peer-token" and "admin_token_file" in body["message"]
    assert e.jobs[2].state == JobState.PENDING and e.calls == []
    assert (await (await c.get("/ui/whoami", headers=peer)).json())["authorized"] is False
    auth = {"Authorization": f"Bearer {ADMIN}"}
    full = await (await c.get("/ui/jobs/1", headers=auth)).json()
    assert full["Output"] == "secret output\n" and full["State"] == "COMPLETED" and "RunUSec" in full
    assert full["Command"] == ["true"]
    r = await c.post("/ui/jobs/2/cancel")
    assert r.status == 401 and e.jobs[2].state == JobState.PENDING
    r = await c.post("/ui/jobs/2/cancel", headers=auth)
    assert r.status == 200 and (await r.json())["state"] == "CANCELLED" and e.calls == [("cancel", 0)]
    r = await c.post("/ui/jobs/2/cancel", headers=auth)
    assert r.status == 409 and "already CANCELLED" in (await r.json())["message"]
    assert (await c.post("/ui/jobs/9/hold", headers=auth)).status == 404
    assert (await c.post("/ui/jobs/2/explode", headers=auth)).status == 404
    assert (await c.get("/ui/jobs/x")).status == 400
    assert (await c.get("/ui/static/app.js")).status == 200
    assert (await c.get("/ui/static/index.html")).status == 404  # only the listed assets
    w = await (await c.get("/ui/whoami", headers=auth)).json()
    assert w == {"authorized": True, "token_configured": True}


async def test_without_an_operators_token_the_dashboard_is_read_only(tmp_path: Path):
    e = FakeEngine()
    w = Web(HttpConfig(listen=("127.0.0.1", 0), token_file=secret(tmp_path, "token", TOKEN)))
    Dashboard(e, w)
    e.add(job(1))
    async with TestClient(TestServer(w.app)) as c:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            r = await c.post("/ui/jobs/1/cancel", headers=headers)
            body = await r.json()
            assert r.status == 403 and body["error"] == "read-only" and "admin_token_file" in body["message"]
        assert e.jobs[1].state == JobState.PENDING
        assert (await (await c.get("/ui/whoami")).json()) == {"authorized": False, "token_configured": False}
        assert (await c.get("/ui/state")).status == 200


async def test_event_streams_are_capped(dash):
    e, c, d = dash
    d.web.max_event_streams = 2
    streams = [await c.get("/ui/events") for _ in range(2)]
    for r in streams:
        assert r.status == 200 and (await r.content.readline()).startswith(b"retry:")
    r = await c.get("/ui/events")
    body = await r.json()
    assert r.status == 503 and body["error"] == "too-many-streams" and r.headers["Retry-After"] == "10"
    streams[0].close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(d._subscribers) > 1:  # the server notices the closed stream
        assert loop.time() < deadline, "a closed stream kept its place"
        d._changed()
        await asyncio.sleep(0.02)
    again = await c.get("/ui/events")
    assert again.status == 200
    again.close()
    streams[1].close()


def test_read_tail_refuses_what_is_not_the_users_own_regular_file(tmp_path: Path):
    f = tmp_path / "log"
    f.write_bytes(b"a" * 100 + b"END")
    assert read_tail(str(f), os.getuid(), limit=3) == b"END"
    assert read_tail(str(tmp_path / "not-yet"), os.getuid(), limit=3) == b""
    link = tmp_path / "link"
    link.symlink_to(f)
    with pytest.raises(AccessDenied):
        read_tail(str(link), os.getuid(), 10)
    with pytest.raises(AccessDenied):
        read_tail(str(tmp_path), os.getuid(), 10)
    if os.getuid() == 0:
        with pytest.raises(AccessDenied):
            read_tail("/etc/shadow", 1000, 10)
