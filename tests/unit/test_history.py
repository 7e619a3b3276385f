"""The dashboard's history ring (schedd.api.http.history): what a sample holds, what the page reads,
what survives a restart, and the metrics the Grafana board and the alert rules need."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from schedd.api.http.dashboard import Dashboard
from schedd.api.http.history import FIELDS, History
from schedd.api.http.metrics import Metrics
from schedd.api.http.web import Web
from schedd.config import ConfigError, HttpConfig, load
from schedd.core.model import JobState, now_usec
from test_observability import GiB, FakeEngine, job, parse

PEERS = [{"Name": "n1", "Local": True},
         {"Name": "b", "State": "up", "TotalCPUs": 8, "AvailableCPUs": 6, "TotalMemory": 16 * GiB,
          "AvailableMemory": 12 * GiB, "TotalGPUs": 0, "AvailableGPUs": 0, "RunningJobs": 2, "PendingJobs": 5},
         {"Name": "c", "State": "down"}]
COL = {f: i + 1 for i, f in enumerate(FIELDS)}


def run_one(e: FakeEngine, jid: int, end: JobState, wait_s: float = 2.0):
    t = now_usec()
    j = e.add(job(jid, submit_time=t - int(wait_s * 1e6)))
    alloc = e.ledger.allocate(1, GiB)
    e.move(j, JobState.RUNNING, start_time=t, assigned_cpus=list(alloc.cpus), node="n1")
    return j, alloc


def test_a_sample_reads_counters_ledger_and_peers_and_resets_the_interval():
    e = FakeEngine()
    h = History(e, peers=lambda: PEERS, interval=10, keep=60)
    assert h.capacity == 6
    a, alloc = run_one(e, 1, JobState.COMPLETED, wait_s=3)
    b, _ = run_one(e, 2, JobState.FAILED)
    e.ledger.release(alloc)
    e.move(a, JobState.COMPLETED, "success", end_time=now_usec())
    e.move(b, JobState.FAILED, "exit-code", end_time=now_usec())
    e.scheduler.enqueue(e.add(job(3)))
    rows = h.sample(t=1000.0)
    local = dict(zip(FIELDS, rows["n1"][1:]))
    assert local == {"cpus": 1, "cpus_total": 4, "memory": GiB, "memory_total": 8 * GiB, "gpus": 0, "gpus_total": 1,
                     "running": 0, "pending": 1, "queue": 1, "starts": 2, "ends": 2, "failed": 1}
    assert rows["b"][1:3] == [2, 8] and rows["b"][COL["pending"]] == 5 and rows["b"][COL["starts"]] is None
    assert rows["c"][1:] == [None] * len(FIELDS)  # a peer down: a gap, not zeros
    assert "n1" in rows and len(rows) == 3  # the local row once, not again as a peer
    again = h.sample(t=1010.0)["n1"]
    assert again[COL["starts"]] == again[COL["ends"]] == 0  # per interval, not totals
    v = h.view()
    assert v["nodes"]["n1"]["t"] == [1000.0, 1010.0] and v["nodes"]["n1"]["starts"] == [2, 0]
    assert v["nodes"]["b"]["cpus_total"] == [8, 8] and v["interval_s"] == 10 and v["capacity"] == 6
    assert h.view(since=1000.0)["nodes"]["n1"]["t"] == [1010.0]
    runs = {r[0]: r for r in v["runs"]}
    assert runs[1][3] == "n1" and runs[1][4] == [0] and runs[2][7] == "FAILED" and runs[1][6] >= runs[1][5]
    assert sorted(round(w[2]) for w in v["waits"]) == [2, 3]
    for t in range(10):  # bounded: keep / interval rows per node
        h.sample(t=2000.0 + t)
    assert len(h.rows["n1"]) == 6



def test_a_forwarded_job_counts_once_in_the_cluster():
    """Ours run on b (a mirror here) and b's run here (a copy): each start and end counts on the node
    that ran it, each wait where the job was submitted; the timeline keeps the run on its node."""
    e = FakeEngine()
    h = History(e, peers=lambda: PEERS, interval=10, keep=60)
    t = now_usec()
    mirror = e.add(job(1, submit_time=t - 4_000_000, remote_node="b", remote_id=7))
    e.move(mirror, JobState.RUNNING, start_time=t, node="b")
    e.move(mirror, JobState.COMPLETED, "success", end_time=now_usec())
    copy = e.add(job(2, submit_time=t - 1_000_000, origin_node="b", origin_id=3))
    e.move(copy, JobState.RUNNING, start_time=t, assigned_cpus=[0], node="n1")
    e.move(copy, JobState.FAILED, "exit-code", end_time=now_usec())
    local = dict(zip(FIELDS, h.sample(t=1000.0)["n1"][1:]))
    assert (local["starts"], local["ends"], local["failed"]) == (1, 1, 1)  # the copy's run only
    v = h.view()
    assert [w[0] for w in v["waits"]] == [1]  # the mirror's wait: 4 s from its submission here
    assert {r[0]: r[3] for r in v["runs"]} == {1: "b", 2: "n1"}

def test_sampling_never_scans_the_job_table():
    e = FakeEngine()
    h = History(e, interval=10)

    class NoScan(dict):
        def values(self):
            raise AssertionError("the sampler walked the job table")

        __iter__ = items = values

    e.jobs = NoScan()
    e.counts = lambda: (3, 1)
    row = h.sample()["n1"]
    assert row[COL["pending"]] == 3 and row[COL["running"]] == 1


async def test_the_ring_survives_a_restart_with_a_gap_and_a_bad_file_is_ignored(tmp_path: Path):
    path = tmp_path / "history.json"
    e = FakeEngine()
    h = History(e, interval=0.05, keep=3600, path=path)
    j, _ = run_one(e, 1, JobState.COMPLETED)
    e.move(j, JobState.COMPLETED, "success", end_time=now_usec())
    h.start()
    deadline = asyncio.get_running_loop().time() + 10
    while len(h.rows.get("n1", ())) < 3:  # the sampler's own clock: wait for several rows, not a guessed time
        assert asyncio.get_running_loop().time() < deadline, "the sampler took no 3 samples in 10 s"
        await asyncio.sleep(0.01)
    await h.stop()
    n = len(h.rows["n1"])
    assert n >= 3 and path.exists()
    back = History(FakeEngine(), interval=0.05, keep=3600, path=path)
    assert back.restored and len(back.rows["n1"]) == n + 1
    assert back.rows["n1"][-1][1:] == (None,) * len(FIELDS)  # the time it was down
    assert [r.id for r in back.runs] == [1] and back.view()["persisted"] is True
    path.write_text("{not json")
    fresh = History(FakeEngine(), interval=0.05, path=path)
    assert not fresh.restored and fresh.rows == {}


@pytest.fixture
async def dash_with_history():
    e = FakeEngine()
    h = History(e, peers=lambda: PEERS, interval=10)
    w = Web(HttpConfig(listen=("127.0.0.1", 0)))
    d = Dashboard(e, w, peers=lambda: PEERS, local_node=lambda: {"Name": "n1", "Local": True, "State": "up"},
                  history=h)
    async with TestClient(TestServer(w.app)) as c:
        yield e, c, h


async def test_history_route_and_samples_on_the_event_stream(dash_with_history):
    e, c, h = dash_with_history
    h.sample(t=100.0)
    body = await (await c.get("/ui/history")).json()
    assert body["nodes"]["n1"]["t"] == [100.0] and body["fields"] == list(FIELDS)
    for bad in ("abc", "-1", "nan", "inf"):
        r = await c.get(f"/ui/history?since={bad}")
        assert r.status == 400 and (await r.json())["error"] == "bad-since"
    for name in ("plots.js", "uPlot.iife.min.js", "uPlot.min.css"):
        assert (await c.get(f"/ui/static/{name}")).status == 200
    r = await c.get("/ui/events")
    events = []

    async def next_event() -> tuple[str, dict]:
        kind = ""
        while True:
            line = (await asyncio.wait_for(r.content.readline(), 5)).decode()
            if line.startswith("event: "):
                kind = line[7:].strip()
            elif line.startswith("data: "):
                return kind, json.loads(line[6:])

    assert (await next_event())[0] == "state"
    rows = h.sample(t=110.0)
    for fn in h.on_sample:
        fn(rows)
    kind, data = await next_event()
    events.append(kind)
    assert kind == "sample" and data["nodes"]["n1"][0] == 110.0 and data["interval_s"] == 10
    r.close()


def test_metrics_for_the_board_and_the_rules():
    e = FakeEngine()
    m = Metrics(e)
    big = job(1, cpus=8)
    e.scheduler.enqueue(e.add(big))
    got = parse(m.render())
    assert got[("schedd_queue_head_fits", ())] == 0  # 8 CPUs asked, 4 free
    assert got[("schedd_node_info", (("executor", ""), ("node", "n1"), ("version", __import__("schedd").__version__)))] == 1
    e.jobs.pop(1)
    e.scheduler = type(e.scheduler)(e.ledger)
    e.scheduler.enqueue(e.add(job(2)))
    run = e.add(job(3, user="bob", cpus=2))
    e.move(run, JobState.RUNNING)
    got = parse(m.render())
    assert got[("schedd_queue_head_fits", ())] == 1
    e.drained = "draining"  # a drained node's queue waits on purpose: not a stuck queue (ScheddQueueStuck)
    assert parse(m.render())[("schedd_queue_head_fits", ())] == 0
    e.drained = ""
    assert got[("schedd_user_cpus_allocated", (("user", "bob"),))] == 2
    assert got[("schedd_user_memory_allocated_bytes", (("user", "bob"),))] == GiB
    assert ("schedd_user_cpus_allocated", (("user", "alice"),)) not in got  # alice's job only waits


def test_history_interval_is_checked(tmp_path: Path):
    p = tmp_path / "schedd.toml"
    p.write_text('[http]\nlisten = "127.0.0.1:7000"\nhistory_interval = "1s"\n')
    assert load(p, False).http.history_interval_usec == 1_000_000
    p.write_text('[http]\nhistory_interval = "1ms"\n')
    with pytest.raises(ConfigError, match="history_interval"):
        load(p, False)
