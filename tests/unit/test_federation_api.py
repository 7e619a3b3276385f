"""The peer API on aiohttp's test client, over a real engine and store (jobs held: nothing runs)."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer
from dbus_fast import Variant

from schedd.config import Config, FederationConfig, HttpConfig, PeerConfig
from schedd.core.engine import Caller, Engine
from prereq import unavailable
from schedd.errors import AccessDenied
from schedd.cluster.federation import Federation
from schedd.cluster.api import FederationApi
from schedd.cluster.openapi import OPENAPI
from schedd.core.output import read_output_blocking as read_output
from schedd.core.placement import NodeView
from schedd.core.store import Store
from schedd.api.http.web import Web

TOKEN = "peer-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def someone() -> str:
    """A user other than root that exists here (jobs keep their user's name across nodes)."""
    for pw in pwd.getpwall():
        if pw.pw_uid not in (0, 65534) and pw.pw_uid >= 1:
            return pw.pw_name
    unavailable("no non-root user in /etc/passwd")


USER = someone()


def forward(origin_id: int = 7, **spec) -> dict:
    return {"Origin": "a", "OriginId": origin_id,
            "Spec": {"Command": ["true"], "UserName": USER, "Hold": True, "WorkingDirectory": "/", **spec}}


@pytest.fixture
async def api(tmp_path: Path):
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    os.chmod(tok, 0o600)
    cfg = Config(node_name="b", cpu_ids=[0], memory=4 << 30, state_dir=tmp_path,
                 http=HttpConfig(listen=("127.0.0.1", 0), token_file=tok),
                 peers=[PeerConfig("a", "http://127.0.0.1:9")],
                 federation=FederationConfig(uid_min=1, uid_max=2**32 - 2, deny_groups=()))
    store = Store(tmp_path / "schedd.db")
    engine = Engine(cfg, store)
    engine.jobs_dir.mkdir()
    web = Web(cfg.http)
    fed = Federation(engine, cfg, web)
    engine.federation = fed
    engine.listeners.append(fed)
    FederationApi(fed, web)
    async with TestClient(TestServer(web.app)) as client:
        client.fed = fed
        yield client
    await store.drain()
    store.close()


async def test_openapi_is_public_and_documents_every_route(api):
    r = await api.get("/api/v1/openapi.json")
    assert r.status == 200
    doc = await r.json()
    assert doc["openapi"].startswith("3.") and doc == OPENAPI
    routes = {res.canonical for res in api.app.router.resources()}
    assert routes == set(doc["paths"])


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/v1/jobs", forward()),
    ("GET", "/api/v1/jobs", None),
    ("GET", "/api/v1/jobs/1", None),
    ("POST", "/api/v1/jobs/1/cancel", {"Origin": "a"}),
    ("GET", "/api/v1/jobs/1/output", None),
    ("POST", "/api/v1/heartbeat", {"Name": "a"}),
    ("POST", "/api/v1/mirror", {"Node": "a", "Jobs": []}),
    ("GET", "/api/v1/nodes", None),
])
async def test_every_route_wants_the_token(api, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        r = await api.request(method, path, json=body, headers=headers)
        assert r.status == 401, (headers, await r.text())
        assert (await r.json())["error"] == "unauthorized"
    assert api.fed.engine.jobs == {}  # nothing done


async def test_a_retried_forward_returns_the_first_copy(api):
    r1 = await api.post("/api/v1/jobs", json=forward(7), headers=AUTH)
    assert r1.status == 201, await r1.text()
    job = await r1.json()
    assert job["OriginNode"] == "a" and job["OriginId"] == 7 and job["UserName"] == USER and job["State"] == "HELD"
    r2, r3 = await asyncio.gather(api.post("/api/v1/jobs", json=forward(7), headers=AUTH),
                                  api.post("/api/v1/jobs", json=forward(7), headers=AUTH))
    assert {(await r2.json())["Id"], (await r3.json())["Id"]} == {job["Id"]}
    assert len(api.fed.engine.jobs) == 1
    await api.fed.engine.store.drain()
    assert api.fed.engine.store.find_origin("a", 7, 1).id == job["Id"]
    r = await api.get("/api/v1/jobs", params={"origin": "a"}, headers=AUTH)
    assert [j["OriginId"] for j in (await r.json())["Jobs"]] == [7]
    # Another origin id is another job; so is another attempt of the same job (placed here again).
    r4 = await api.post("/api/v1/jobs", json=forward(8), headers=AUTH)
    assert (await r4.json())["Id"] != job["Id"]
    r5 = await api.post("/api/v1/jobs", json=forward(7) | {"Attempt": 2}, headers=AUTH)
    again = await r5.json()
    assert r5.status == 201 and again["Id"] not in (job["Id"], (await r4.json())["Id"]) and again["Attempt"] == 2


@pytest.mark.parametrize("body, status, words", [
    ({"Origin": "a"}, 400, "OriginId"),
    ({"Origin": "a", "OriginId": 0, "Spec": {}}, 400, "OriginId must be an integer"),
    ({"Origin": "a", "OriginId": True, "Spec": {}}, 400, "OriginId"),
    ({"Origin": "zz", "OriginId": 1, "Spec": {}}, 403, "not a peer"),
    ({"Origin": "a", "OriginId": 1, "Spec": []}, 400, "JSON object"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": ["x"]}}, 400, "UserName is required"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": "true", "UserName": USER}}, 400, "array of strings"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": ["x"], "UserName": USER, "CPUs": -1}}, 400, "CPUs"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": ["x"], "UserName": USER, "CPUs": 2**40}}, 400, "CPUs"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": ["x"], "UserName": USER, "After": [1]}}, 400, "unknown key"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": ["x"], "UserName": USER, "Hold": "yes"}}, 400, "true or false"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": [], "UserName": USER}}, 400, "Command"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": ["x"], "UserName": USER, "CPUs": 64}}, 422, "CPUs"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": ["x"], "UserName": "root"}}, 403, "root"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": ["x"], "UserName": "no-such-user-xyz"}}, 403, "does not exist"),
    ({"Origin": "a", "OriginId": 1, "Spec": {"Command": ["x"], "UserName": USER}, "Extra": 1}, 400, "unknown key"),
])
async def test_bad_forwards_are_4xx_with_a_sentence(api, body, status, words):
    r = await api.post("/api/v1/jobs", json=body, headers=AUTH)
    assert r.status == status, await r.text()
    assert words in (await r.json())["message"]
    assert api.fed.engine.jobs == {}


@pytest.mark.parametrize("method, path, body, status", [
    ("POST", "/api/v1/jobs", b"{nope", 400),
    ("POST", "/api/v1/heartbeat", {"Name": "a", "TotalCPUs": -1}, 400),
    ("POST", "/api/v1/heartbeat", {"Name": "b"}, 400),  # a node not known here: a claim needs its URL and load
    ("POST", "/api/v1/mirror", {"Node": "a", "Jobs": {}}, 400),
    ("POST", "/api/v1/mirror", {"Node": "a", "Jobs": [{"Id": 1}]}, 400),
    ("GET", "/api/v1/jobs/abc", None, 400),
    ("GET", "/api/v1/jobs/99", None, 404),
    ("POST", "/api/v1/jobs/99/explode", {"Origin": "a"}, 404),
    ("POST", "/api/v1/jobs/99/cancel", {"Origin": "a"}, 404),
    ("GET", "/api/v1/jobs?states=BOGUS", None, 400),
    ("GET", "/api/v1/jobs?after=-1", None, 400),
    ("GET", "/api/v1/jobs?what=1", None, 400),
    ("GET", "/api/v1/jobs/1/output?stream=both", None, 400),
])
async def test_bad_requests_never_500(api, method, path, body, status):
    kw = {"data": body} if isinstance(body, bytes) else {"json": body}
    r = await api.request(method, path, headers=AUTH, **kw)
    assert r.status == status, await r.text()
    assert (await r.json())["message"]


async def test_heartbeats_mark_a_peer_up_with_its_load(api):
    load = {"TotalCPUs": 8, "AvailableCPUs": 3, "TotalMemory": 1 << 34, "AvailableMemory": 1 << 33, "TotalGPUs": 2,
            "AvailableGPUs": 1, "PendingJobs": 4, "RunningJobs": 5}
    assert [r["State"] for r in api.fed.node_rows()] == ["up", "down"]
    r = await api.post("/api/v1/heartbeat", json={"Name": "a", **load}, headers=AUTH)
    assert r.status == 200
    rows = {row["Name"]: row for row in api.fed.node_rows()}
    assert rows["a"]["State"] == "up" and rows["a"]["LastSeenUSec"] > 0
    assert {k: rows["a"][k] for k in load} == load
    assert rows["b"]["Local"] and rows["b"]["TotalCPUs"] == 1


async def test_peers_may_act_only_on_jobs_they_forwarded_and_stale_mirrors_are_reported(api):
    job = await (await api.post("/api/v1/jobs", json=forward(11), headers=AUTH)).json()
    r = await api.post(f"/api/v1/jobs/{job['Id']}/cancel", json={"Origin": "a"}, headers=AUTH)
    assert r.status == 200 and (await r.json())["State"] == "CANCELLED"
    rec = {"Id": 5, "OriginId": 1234, "State": "RUNNING", "Reason": "", "ExitCode": 0, "StartTime": 1, "EndTime": 0,
           "CPUTimeUSec": 0, "MemoryPeak": 0, "AssignedCPUs": [0], "AssignedGPUs": [], "StdoutPath": "",
           "StderrPath": ""}
    r = await api.post("/api/v1/mirror", json={"Node": "a", "Jobs": [rec]}, headers=AUTH)
    assert (await r.json()) == {"Stale": [5], "Failed": []}  # b has no job 1234 placed on a: that copy must stop
    r = await api.post("/api/v1/mirror", json={"Node": "a", "Jobs": [rec | {"State": "COMPLETED"}]}, headers=AUTH)
    assert (await r.json()) == {"Stale": [], "Failed": []}


async def test_a_copy_whose_forward_answer_was_lost_is_adopted_not_fenced(api):
    from schedd.core.model import AWAITING_NODE as WAITING
    from schedd.core.model import Job, JobSpec, JobState

    engine = api.fed.engine
    job = Job(id=engine.allocate_id(), spec=JobSpec(command=["true"], name="t", cpus=1, memory=1 << 28, uid=1,
                                                     user_name=USER), remote_node=WAITING, attempt=2)
    await engine.add_record(job)
    api.fed.waiting[job.id] = job
    # A copy of an earlier attempt (a forward from before the job was requeued) is never adopted.
    old = {"Id": 41, "OriginId": job.id, "Attempt": 1, "State": "PENDING", "Reason": "", "ExitCode": 0,
           "StartTime": 0, "EndTime": 0, "CPUTimeUSec": 0, "MemoryPeak": 0, "AssignedCPUs": [], "AssignedGPUs": [],
           "StdoutPath": "", "StderrPath": ""}
    r = await api.post("/api/v1/mirror", json={"Node": "a", "Jobs": [old]}, headers=AUTH)
    assert (await r.json()) == {"Stale": [41], "Failed": []} and job.awaiting_node
    rec = {"Id": 42, "OriginId": job.id, "Attempt": 2, "State": "RUNNING", "Reason": "", "ExitCode": 0, "StartTime": 5,
           "EndTime": 0, "CPUTimeUSec": 0, "MemoryPeak": 0, "AssignedCPUs": [1], "AssignedGPUs": [],
           "StdoutPath": "/x/jobs/42/output", "StderrPath": "/x/jobs/42/output"}
    r = await api.post("/api/v1/mirror", json={"Node": "a", "Jobs": [rec]}, headers=AUTH)
    assert (await r.json()) == {"Stale": [], "Failed": []}
    assert (job.remote_node, job.remote_id, job.node, job.state) == ("a", 42, "a", JobState.RUNNING)
    assert job.id not in api.fed.waiting
    # A second copy of the same job elsewhere is stale.
    r = await api.post("/api/v1/mirror", json={"Node": "a", "Jobs": [rec | {"Id": 43}]}, headers=AUTH)
    assert (await r.json()) == {"Stale": [43], "Failed": []}


async def test_forwards_of_system_accounts_and_privileged_group_members_are_refused(api, monkeypatch):
    pw = pwd.getpwnam(USER)
    api.fed.cfg.federation = FederationConfig(uid_min=pw.pw_uid + 1, uid_max=60000)
    r = await api.post("/api/v1/jobs", json=forward(11), headers=AUTH)
    body = await r.json()
    assert r.status == 403 and body["dbus_error"] == "org.schedd.Schedd1.Error.AccessDenied", body
    assert f"{USER!r} is uid {pw.pw_uid}, a system account" in body["message"]
    # Primary group.
    primary = grp.getgrgid(pw.pw_gid).gr_name
    api.fed.cfg.federation = FederationConfig(uid_min=1, uid_max=2**32 - 2, deny_groups=("nosuchgroup", primary))
    r = await api.post("/api/v1/jobs", json=forward(12), headers=AUTH)
    body = await r.json()
    assert r.status == 403 and body["dbus_error"].endswith("AccessDenied") and primary in body["message"], body
    # Supplementary group (as the name service says).
    monkeypatch.setattr(os, "getgrouplist", lambda name, gid: [gid, 4242] if name == USER else [gid])
    real = grp.getgrnam
    monkeypatch.setattr(grp, "getgrnam", lambda n: SimpleNamespace(gr_gid=4242) if n == "fakesudo" else real(n))
    api.fed.cfg.federation = FederationConfig(uid_min=1, uid_max=2**32 - 2, deny_groups=("fakesudo",))
    r = await api.post("/api/v1/jobs", json=forward(13), headers=AUTH)
    body = await r.json()
    assert r.status == 403 and "fakesudo" in body["message"], body
    assert api.fed.engine.jobs == {}  # nothing created
    # Root never, whatever the range says.
    r = await api.post("/api/v1/jobs", json=forward(14, UserName="root"), headers=AUTH)
    assert r.status == 403 and api.fed.engine.jobs == {}
    api.fed.cfg.federation = FederationConfig(uid_min=1, uid_max=2**32 - 2, deny_groups=())
    r = await api.post("/api/v1/jobs", json=forward(15), headers=AUTH)
    assert r.status == 201


async def test_output_needs_the_origin_that_forwarded_the_job(api, tmp_path: Path):
    r = await api.post("/api/v1/jobs", json=forward(21), headers=AUTH)
    jid = (await r.json())["Id"]
    local = await api.fed.engine.submit({"Command": Variant("as", ["true"]), "Hold": Variant("b", True),
                                         "WorkingDirectory": Variant("s", "/")}, Caller(uid=0))
    for path, status in ((f"/api/v1/jobs/{jid}/output", 400), (f"/api/v1/jobs/{jid}/output?origin=zz", 403),
                         (f"/api/v1/jobs/{local.id}/output?origin=a", 403),
                         (f"/api/v1/jobs/{jid}/output?origin=a", 200)):
        r = await api.get(path, headers=AUTH)
        assert r.status == status, (path, await r.text())
        if status != 200:
            assert (await r.json())["message"]


def test_output_is_read_only_from_files_the_job_user_owns(tmp_path: Path):
    f = tmp_path / "out"
    f.write_bytes(b"hello world")
    me = os.geteuid()
    assert read_output(str(f), me, 6) == b"world"
    assert read_output(str(tmp_path / "missing"), me, 0) == b""
    link = tmp_path / "link"
    link.symlink_to(f)
    with pytest.raises(AccessDenied):
        read_output(str(link), me, 0)
    with pytest.raises(AccessDenied, match="not owned"):
        read_output(str(f), me + 1, 0)


def _random_json(rng, depth: int = 0):
    kinds = ["int", "str", "bool", "null", "float", "big"] + (["list", "dict"] if depth < 3 else [])
    k = rng.choice(kinds)
    if k == "int":
        return rng.randint(-5, 5)
    if k == "big":
        return rng.choice([2**31, 2**32, 2**63, 2**64, -(2**63) - 1, 10**30])
    if k == "str":
        return rng.choice(["", "a", "b", "root", USER, "any", "\0", "x" * 300, "RUNNING", "true"])
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "float":
        return rng.choice([0.5, -1.0, 1e308])
    if k == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["Command", "UserName", "CPUs", "Spec", "Origin", "OriginId", "Id", "State", "Jobs", "Name",
                        "Memory", "Hold", "Environment", "zz"]): _random_json(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def _mutate(rng, body):
    """A valid body with one value anywhere in it replaced, or a key dropped."""
    import copy

    body = copy.deepcopy(body)
    node = body
    while True:
        key = rng.choice(list(node))
        if isinstance(node[key], dict) and node[key] and rng.random() < 0.5:
            node = node[key]
            continue
        if rng.random() < 0.2:
            del node[key]
        else:
            node[key] = _random_json(rng)
        return body


async def test_fuzzed_bodies_never_make_a_500(api):
    import random

    rng = random.Random(4)
    state = {"Id": 5, "OriginId": 9, "State": "RUNNING", "Reason": "", "ExitCode": 0, "StartTime": 1, "EndTime": 0,
             "CPUTimeUSec": 0, "MemoryPeak": 0, "AssignedCPUs": [0], "AssignedGPUs": [], "StdoutPath": "",
             "StderrPath": ""}
    valid = {
        "/api/v1/jobs": forward(100, CPUs=1, Environment=["A=1"], Priority=3),
        "/api/v1/heartbeat": {"Name": "a", "TotalCPUs": 1, "AvailableCPUs": 1, "TotalMemory": 1, "AvailableMemory": 1,
                              "TotalGPUs": 0, "AvailableGPUs": 0, "PendingJobs": 0, "RunningJobs": 0},
        "/api/v1/mirror": {"Node": "a", "Jobs": [state]},
        "/api/v1/jobs/1/cancel": {"Origin": "a"},
    }
    seen: set[int] = set()
    for path, body in valid.items():
        for i in range(150):
            sent = _mutate(rng, body) if i % 3 else _random_json(rng)
            r = await api.post(path, json=sent, headers=AUTH)
            seen.add(r.status)
            assert r.status < 500, (path, sent, await r.text())
            if r.status >= 400:
                assert (await r.json())["message"], (path, sent)
    assert {201, 400} <= seen


async def test_jobs_for_other_nodes_are_submitted_one_at_a_time(api):
    from dbus_fast import Variant

    from schedd.core.engine import Caller
    from schedd.errors import InvalidArgument

    spec = {"Command": Variant("as", ["true"]), "Node": Variant("s", "any")}
    with pytest.raises(InvalidArgument, match="one at a time"):
        await api.fed.engine.submit_many([spec, spec], Caller(uid=pwd.getpwnam(USER).pw_uid))


async def test_jobs_that_must_stay_here_must_fit_here(api):
    from dbus_fast import Variant

    from schedd.core.engine import Caller
    from schedd.errors import Unsatisfiable

    fed = api.fed
    load = {"TotalCPUs": 8, "AvailableCPUs": 8, "TotalMemory": 1 << 34, "AvailableMemory": 1 << 34, "TotalGPUs": 0,
            "AvailableGPUs": 0, "PendingJobs": 0, "RunningJobs": 0}
    fed.peers["a"].view, fed.peers["a"].up = NodeView.of_load("a", True, load), True  # a (8 CPUs) could hold it
    big = {"Command": Variant("as", ["true"]), "Node": Variant("s", "any"), "CPUs": Variant("u", 4)}
    with pytest.raises(Unsatisfiable, match="jobs of root run only"):
        await fed.engine.submit(big, Caller(uid=0))  # this node has 1 CPU
    user = Caller(uid=pwd.getpwnam(USER).pw_uid)
    first = await fed.engine.submit({"Command": Variant("as", ["true"]), "Hold": Variant("b", True)}, user)
    with pytest.raises(Unsatisfiable, match="After runs on this node"):
        await fed.engine.submit(big | {"After": Variant("at", [first.id])}, user)


async def test_a_job_waiting_for_a_down_node_can_be_held_released_and_cancelled(api):
    from dbus_fast import Variant

    from schedd.core.engine import Caller
    from schedd.errors import InvalidState
    from schedd.core.model import AWAITING_NODE as WAITING
    from schedd.core.model import JobState

    fed, user = api.fed, Caller(uid=pwd.getpwnam(USER).pw_uid)
    job = await fed.engine.submit({"Command": Variant("as", ["true"]), "Node": Variant("s", "a")}, user)
    assert (job.remote_node, job.state, job.node) == (WAITING, JobState.PENDING, "")  # a is down: it waits
    assert fed.waiting == {job.id: job}
    await fed.engine.hold(job.id, user)
    assert job.state == JobState.HELD
    await fed.engine.release(job.id, user)
    assert job.state == JobState.PENDING
    with pytest.raises(InvalidState, match="waits for a node"):
        await fed.engine.suspend(job.id, user)
    await fed.engine.cancel(job.id, user)
    assert job.state == JobState.CANCELLED and fed.waiting == {}
    await fed.engine.store.drain()
    assert fed.engine.store.get(job.id).state == JobState.CANCELLED


async def test_a_copy_on_the_node_that_failed_under_the_job_is_fenced_not_adopted(api):
    from schedd.core.model import AWAITING_NODE as WAITING
    from schedd.core.model import Job, JobSpec

    engine = api.fed.engine
    job = Job(id=engine.allocate_id(), spec=JobSpec(command=["true"], name="t", cpus=1, memory=1 << 28, uid=1,
                                                     user_name=USER), remote_node=WAITING)
    await engine.add_record(job)
    api.fed.waiting[job.id] = job
    api.fed.origin._avoid[job.id] = {"a"}  # requeued away from a when a went down
    rec = {"Id": 42, "OriginId": job.id, "State": "RUNNING", "Reason": "", "ExitCode": 0, "StartTime": 5,
           "EndTime": 0, "CPUTimeUSec": 0, "MemoryPeak": 0, "AssignedCPUs": [1], "AssignedGPUs": [],
           "StdoutPath": "", "StderrPath": ""}
    r = await api.post("/api/v1/mirror", json={"Node": "a", "Jobs": [rec]}, headers=AUTH)
    assert (await r.json()) == {"Stale": [42], "Failed": []}
    assert job.remote_node == WAITING


async def test_start_grants_go_only_to_the_copy_placed_there_and_are_durable_first(api):
    """POST /starts: a run node asks before it lets a copy's program run. Granted: the copy this
    origin has placed there now (recorded before the answer); Stale: any other (stop it); a job
    held here is neither (ask again later)."""
    from schedd.core.model import Job, JobSpec, JobState

    engine = api.fed.engine

    def ours(**kw) -> Job:
        return Job(id=engine.allocate_id(), spec=JobSpec(command=["true"], name="t", cpus=1, memory=1 << 28, uid=1,
                                                         user_name=USER), attempt=1, **kw)

    placed, moved, held = ours(remote_node="a", remote_id=50), ours(remote_node="c", remote_id=9), \
        ours(remote_node="a", remote_id=52, state=JobState.HELD)
    for job in (placed, moved, held):
        await engine.add_record(job)

    def copy(rid: int, job: Job, state: str = "PENDING") -> dict:
        return {"Id": rid, "OriginId": job.id, "Attempt": 1, "State": state, "Reason": "", "ExitCode": 0,
                "StartTime": 0, "EndTime": 0, "CPUTimeUSec": 0, "MemoryPeak": 0, "AssignedCPUs": [],
                "AssignedGPUs": [], "StdoutPath": "", "StderrPath": ""}

    r = await api.post("/api/v1/starts", json={"Node": "a", "Jobs": [copy(50, placed), copy(51, moved),
                                                                     copy(52, held, "HELD")]}, headers=AUTH)
    assert r.status == 200, await r.text()
    assert await r.json() == {"Granted": [50], "Stale": [51], "Failed": []}
    assert placed.start_granted and not moved.start_granted and not held.start_granted
    assert engine.store.get(placed.id).start_granted  # durable before the run node heard "go"
    # A node failure now counts as a failure of a run (it may have started): Requeue=false ends it.
    placed.spec.requeue = False
    api.fed.origin.node_down(api.fed.peers["a"])
    assert (placed.state, placed.reason) == (JobState.FAILED, "node-failure")
    # That run is over for good: its copy is never granted again, and stops as a failed run (the job's
    # end at the origin), unless it ended meanwhile: then its end is the job's.
    r = await api.post("/api/v1/starts", json={"Node": "a", "Jobs": [copy(50, placed)]}, headers=AUTH)
    assert await r.json() == {"Granted": [], "Stale": [50], "Failed": [50]}
    r = await api.post("/api/v1/mirror", json={"Node": "a", "Jobs": [copy(50, placed, "COMPLETED")]}, headers=AUTH)
    assert await r.json() == {"Stale": [], "Failed": []}
    assert placed.state == JobState.COMPLETED
    # Garbage is a 400 with a sentence, nothing granted.
    r = await api.post("/api/v1/starts", json={"Node": "a", "Jobs": [{"Id": "x"}]}, headers=AUTH)
    body = await r.json()
    assert r.status == 400 and "Jobs[0].Id" in body["message"], body


async def test_a_pending_copy_that_was_never_granted_costs_no_restart_when_its_node_fails(api):
    from schedd.core.model import Job, JobSpec, JobState

    engine = api.fed.engine
    job = Job(id=engine.allocate_id(), spec=JobSpec(command=["true"], name="t", cpus=2, memory=1 << 28, uid=1,
                                                     user_name=USER, requeue=False), remote_node="a", remote_id=60,
              attempt=1)
    await engine.add_record(job)
    api.fed.origin.node_down(api.fed.peers["a"])
    # It never started there (no grant): placed again (2 CPUs: only on a peer), not failed, no restart
    # counted, and its next copy is a new attempt.
    assert (job.state, job.restarts, job.node_failures, job.attempt) == (JobState.PENDING, 0, 0, 2)
    assert job.awaiting_node and job.id in api.fed.waiting
