"""The dashboard's history (schedd.api.http.history) against what an attacker or a broken peer hands it:
a hostile saved file at start, links where the file is written, odd heartbeat figures, bad `since`;
and what a full page load costs the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from schedd.api.http.dashboard import Dashboard
from schedd.api.http.history import FIELDS, FILE_VERSION, History
from schedd.api.http.web import Web
from schedd.config import HttpConfig
from schedd.core.model import now_usec
from test_observability import GiB, FakeEngine

COL = {f: i + 1 for i, f in enumerate(FIELDS)}


def saved(rows: dict, runs: list | None = None, waits: list | None = None) -> dict:
    return {"version": FILE_VERSION, "interval_s": 10, "fields": list(FIELDS), "rows": rows,
            "runs": runs or [], "waits": waits or []}


def good_row(t: float) -> list:
    return [t] + [1] * len(FIELDS)


def load(path: Path, **kw) -> History:
    """History(...) in a thread with a deadline: a load that blocks fails the test instead of hanging it."""
    out: list = []
    th = threading.Thread(target=lambda: out.append(History(FakeEngine(), interval=10, path=path, **kw)),
                          daemon=True)
    th.start()
    th.join(10)
    assert not th.is_alive(), "loading the saved history blocked"
    return out[0]


@pytest.mark.parametrize("case", ["deep", "list", "huge", "fifo", "dir", "bad-types"])
def test_a_hostile_saved_history_is_ignored_with_a_log_line(tmp_path: Path, caplog, case: str):
    path = tmp_path / "history.json"
    if case == "deep":  # json.loads raises RecursionError: it ended the daemon's start
        path.write_text("[" * 200_000)
    elif case == "list":
        path.write_text("[1, 2, 3]")
    elif case == "huge":  # padding past the cap: not parsed at all
        path.write_text(json.dumps(saved({"n1": [good_row(time.time())]})) + " " * (17 << 20))
    elif case == "fifo":  # opening a FIFO for reading waits for a writer: the start stalled
        os.mkfifo(path)
    elif case == "dir":
        path.mkdir()
    else:  # the right layout, wrong contents: what is kept must not break the page or the route
        path.write_text(json.dumps(saved({"n1": "nope", "n2": [[time.time(), "x"]]},
                                         runs=["abcdefgh"], waits=["xyz"])))
    with caplog.at_level(logging.WARNING, logger="schedd.api.http.history"):
        h = load(path)
    if case == "bad-types":  # nothing well-formed survives, and the view still answers
        assert h.rows == {} and list(h.runs) == [] and list(h.waits) == []
        json.dumps(h.view(), allow_nan=False)
    else:
        assert not h.restored and h.rows == {}
        assert "ignoring the dashboard's saved history" in caplog.text, caplog.text
    h.sample()  # and it samples as if new
    assert list(h.rows) == ["n1"]


def test_only_well_formed_rows_in_time_order_are_read_back(tmp_path: Path):
    now = time.time()
    rows = [good_row(now - 50), [now - 40, float("nan")] + [1] * (len(FIELDS) - 1),  # NaN: invalid JSON
            good_row(now - 45), [now - 30, "1"] + [1] * (len(FIELDS) - 1), good_row(now - 60),  # out of order
            good_row(now - 20), [True] + [1] * len(FIELDS), good_row(now + 3600)]  # bool time; the future
    path = tmp_path / "history.json"
    path.write_text(json.dumps(saved({"n1": rows}, runs=[[7, "job", "alice", "n1", [0, 1], now - 9, now - 5,
                                                          "COMPLETED"], [8, "j", "bob", "n1", ["x"], 1, 2, "X"]],
                                     waits=[[7, now - 9, 1.5], [8, "t", 1]])))
    h = load(path)
    assert h.restored
    ts = [r[0] for r in h.rows["n1"]]
    assert ts[:-1] == [now - 50, now - 45, now - 20]  # sorted for bisect; nothing later than now
    assert ts[-1] <= time.time() and h.rows["n1"][-1][1:] == (None,) * len(FIELDS)  # the gap
    assert [r.id for r in h.runs] == [7] and list(h.waits) == [(7, now - 9, 1.5)]
    json.dumps(h.view(), allow_nan=False)
    h.sample()
    assert [r[0] for r in h.rows["n1"]] == sorted(r[0] for r in h.rows["n1"])


def test_a_link_at_the_saved_path_is_neither_read_nor_followed(tmp_path: Path):
    secret = tmp_path / "elsewhere.json"
    secret.write_text(json.dumps(saved({"n1": [good_row(time.time())]})))
    path = tmp_path / "history.json"
    path.symlink_to(secret)
    h = load(path)
    assert not h.restored and h.rows == {}  # not read through the link
    h.sample()
    h._write(h.dump())
    assert not path.is_symlink() and json.loads(secret.read_text())["rows"]["n1"][0][1] == 1  # not written through


def test_the_saved_file_is_0600_atomic_and_never_written_through_a_planted_link(tmp_path: Path):
    path = tmp_path / "history.json"
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "history.json.tmp").symlink_to(victim)  # the old fixed temp name, planted
    old = os.umask(0)
    try:
        h = History(FakeEngine(), interval=10, path=path)
        h.sample(t=time.time())
        h._write(h.dump())
    finally:
        os.umask(old)
    assert victim.read_text() == "untouched"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "history.json.tmp", "victim"]
    assert json.loads(path.read_text())["rows"]["n1"][0][1] == 0
    (tmp_path / "history.json.abc123.tmp").write_text("a write cut short by a crash")
    (tmp_path / "history.json.def456.tmp").symlink_to(victim)
    assert History(FakeEngine(), interval=10, path=path).restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "history.json.tmp", "victim"]
    assert victim.read_text() == "untouched"


def test_a_peer_with_odd_figures_costs_nobody_their_sample():
    peers = [{"Name": "n1", "Local": True},
             {"Name": "b", "State": "up", "TotalCPUs": 8, "AvailableCPUs": 6, "TotalMemory": 16 * GiB,
              "AvailableMemory": 12 * GiB, "TotalGPUs": 0, "AvailableGPUs": 0, "RunningJobs": 2, "PendingJobs": 5},
             {"Name": "x", "State": "up", "TotalCPUs": "8", "AvailableCPUs": None, "RunningJobs": [1]},
             {"Name": "y", "State": "up", "TotalCPUs": 4, "AvailableCPUs": 9, "TotalMemory": -1},
             {"Name": ["not", "hashable"], "State": "up"}, "garbage", None]
    h = History(FakeEngine(), peers=lambda: peers, interval=10)
    rows = h.sample(t=100.0)
    assert set(rows) == {"n1", "b", "x", "y"} and set(h.rows) == {"n1", "b", "x", "y"}
    assert rows["n1"][COL["cpus_total"]] == 4
    assert rows["b"][COL["cpus"]] == 2 and rows["b"][COL["pending"]] == 5
    assert rows["x"][COL["cpus"]] is None and rows["x"][COL["cpus_total"]] is None and rows["x"][COL["running"]] is None
    assert rows["y"][COL["cpus"]] == 0 and rows["y"][COL["memory_total"]] is None  # free above total: none held
    json.dumps(h.view(), allow_nan=False)


def test_a_full_page_load_is_serialized_once_a_sample_and_since_reads_only_the_tail():
    h = History(FakeEngine(), interval=10)
    for i in range(8640):
        h.sample(t=1e9 + 10 * i)
    first = h.view_bytes()
    assert h.view_bytes() is first  # the second page load costs no serialization
    assert json.loads(first)["nodes"]["n1"]["t"][-1] == 1e9 + 86390
    h.sample(t=1e9 + 86400)
    again = h.view_bytes()
    assert again is not first and json.loads(again)["nodes"]["n1"]["t"][-1] == 1e9 + 86400
    assert json.loads(h.view_bytes(1e9 + 86385))["nodes"]["n1"]["t"] == [1e9 + 86390, 1e9 + 86400]
    assert json.loads(h.view_bytes(1e9 + 86390))["nodes"]["n1"]["t"] == [1e9 + 86400]
    assert json.loads(h.view_bytes(1e12))["nodes"]["n1"]["t"] == []
    assert len(json.loads(h.view_bytes(1.0))["nodes"]["n1"]["t"]) == h.capacity
    assert h.view_bytes(1.0) is again  # since=1 (before every row) is no way around the cache
    t0 = time.perf_counter()
    for _ in range(100):
        h.view_bytes()
    assert time.perf_counter() - t0 < 0.1  # 100 page loads of a full day: cached, not 100 serializations


async def test_since_garbage_is_a_400_and_a_far_since_an_empty_answer():
    e = FakeEngine()
    h = History(e, interval=10)
    w = Web(HttpConfig(listen=("127.0.0.1", 0)))
    Dashboard(e, w, history=h)
    h.sample(t=now_usec() / 1e6)
    async with TestClient(TestServer(w.app)) as c:
        for bad in ("", "1e999", "-0.5", "0x10", "NaN", "-inf", "9" * 400, "%00", "1,2"):
            r = await c.get("/ui/history", params={"since": bad})
            assert r.status == 400 and (await r.json())["error"] == "bad-since", (bad, r.status)
        r = await c.get("/ui/history", params={"since": "1e308"})
        assert r.status == 200 and (await r.json())["nodes"]["n1"]["t"] == []
        r = await c.get("/ui/history")
        assert r.status == 200 and r.content_type == "application/json" and len((await r.json())["nodes"]["n1"]["t"]) == 1


async def test_history_off_loopback_needs_the_read_credential_and_never_carries_a_command(tmp_path: Path):
    """/ui/history tells what /ui/state does (names, users, CPUs, times) and no more: no command line,
    directory, environment or output path, which only the operators' token shows (/ui/jobs/ID)."""
    import dataclasses

    from schedd.core.model import JobState
    from test_observability import job

    read = tmp_path / "read"
    read.write_text("read-token-0123456789abcd")
    os.chmod(read, 0o600)
    e = FakeEngine()
    h = History(e, interval=10, path=tmp_path / "history.json")
    w = Web(HttpConfig(listen=("10.9.8.7", 7001), read_token_file=read), node_name="n1")
    Dashboard(e, w, history=h)
    j = e.add(job(1, submit_time=now_usec() - 1_000_000))
    j.spec = dataclasses.replace(j.spec, command=["sh", "-c", "echo s3cret-arg"], working_directory="/s3cret-dir",
                                 environment=["TOKEN=s3cret-env"], stdout_path="/s3cret-dir/out")
    e.move(j, JobState.RUNNING, start_time=now_usec(), assigned_cpus=[0])
    e.move(j, JobState.COMPLETED, "success", end_time=now_usec())
    h.sample()
    async with TestClient(TestServer(w.app)) as c:
        r = await c.get("/ui/history", headers={"Host": "n1"})
        assert r.status == 401 and (await r.json())["error"] == "unauthorized"
        r = await c.get("/ui/history", headers={"Host": "n1", "Authorization": "Bearer read-token-0123456789abcd"})
        assert r.status == 200
        text = await r.text()
    assert json.loads(text)["runs"][0][:4] == [1, "j1", "alice", "n1"]
    h._write(h.dump())
    for where in (text, (tmp_path / "history.json").read_text()):
        assert "s3cret" not in where


def test_a_short_interval_keeps_fewer_hours_not_an_unbounded_ring():
    """history_interval may be 100 ms: a day of those would be 864,000 rows a node (hundreds of MB, seconds
    of the event loop per page load). The ring stops at MAX_ROWS and says how long it keeps."""
    from schedd.api.http.history import MAX_ROWS

    h = History(FakeEngine(), interval=0.1)
    assert h.capacity == MAX_ROWS and h.capacity * 0.1 < 86400
    for i in range(MAX_ROWS + 50):
        h.sample(t=1e9 + i / 10)
    v = h.view()
    assert len(v["nodes"]["n1"]["t"]) == MAX_ROWS and v["keep_s"] == pytest.approx(MAX_ROWS * 0.1)
    assert History(FakeEngine(), interval=10).capacity == 8640  # the default: a whole day


async def test_a_stalled_loop_skips_its_missed_samples_instead_of_bursting_them():
    """After the loop was blocked (or the machine suspended) for many intervals, the sampler goes on from
    now: no burst of rows stamped the same instant."""
    h = History(FakeEngine(), interval=0.02)
    stalled = []

    def stall(_rows):
        if not stalled:
            stalled.append(1)
            time.sleep(0.5)  # the stall under test (25 intervals), not a wait for something

    h.on_sample.append(stall)
    h.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(h.rows.get("n1", ())) < 6:
        assert loop.time() < deadline, "the sampler took no 6 samples in 10 s"
        await asyncio.sleep(0.01)
    await h.stop()
    ts = [r[0] for r in h.rows["n1"]]
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    assert gaps[0] >= 0.4 and min(gaps) >= 0.01, gaps  # the stall shows as one gap; no rows 0 s apart
