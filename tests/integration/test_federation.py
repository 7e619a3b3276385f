"""Federation on a three-node cluster: each node in its own network namespace with its own test
systemd, schedd, store and address (tests/netcluster.py). a and b have 1 CPU, c has 2 CPUs and a
(stand-in) GPU. Jobs run as a throwaway user: root's jobs are never run for other nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from conftest import USERS

from prereq import require, unavailable
from netcluster import Cluster, ClusterNode, NodeSpec, netns_unavailable, wait_for, wait_job
from sandbox import REPO

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
GPU_DEV = "/dev/fed-test-gpu{index}"
HEARTBEAT = 1.0  # s; short enough for a quick test, long enough that a busy CI machine never misses 3
ALICE = USERS[0]
SLOW_MARK = "/var/lib/schedd/fed-slow"  # present on c only: the same job sleeps there, ends at once elsewhere
SLOW_JOB = ["sh", "-c", f"if [ -e {SLOW_MARK} ]; then sleep 120; fi; echo ran"]


@pytest.fixture(scope="module")
def cluster(users):
    if shutil.which("ip") is None or shutil.which("curl") is None:
        unavailable("needs ip (iproute2) and curl (scripts/setup installs them)")
    require(netns_unavailable())
    gpu = GPU_DEV.format(index=0)
    if os.path.exists(gpu):
        os.unlink(gpu)
    os.mknod(gpu, 0o666 | 0o020000, os.makedev(195, 250))
    c = Cluster(f"{os.getpid() % 10000}", [NodeSpec("a"), NodeSpec("b"), NodeSpec("c", cpus=2, gpus=1, gpu_device=GPU_DEV)],
                heartbeat=f"{int(HEARTBEAT * 1000)}ms")
    try:
        c.up()
        (c.nodes["c"].sb.state / "fed-slow").write_text("")
        yield c
    finally:
        c.down(keep_journals=REPO / "artifacts")
        os.unlink(gpu)


def copy_on(cluster: Cluster, origin: str, origin_id: int) -> tuple[ClusterNode, dict] | None:
    """The run node's copy of origin's job (via the peer API, as origin would ask)."""
    o = cluster.nodes[origin]
    for node in cluster.nodes.values():
        if node.name == origin:
            continue
        code, text = o.http("GET", f"{node.url}/api/v1/jobs?origin={origin}")
        assert code == 200, text
        for rec in json.loads(text)["Jobs"]:
            if rec["OriginId"] == origin_id:
                return node, rec
    return None


def test_every_node_lists_the_cluster(cluster: Cluster):
    for node in cluster.nodes.values():
        rows = node.nodes()
        assert set(rows) == {"a", "b", "c"}
        assert all(r["State"] == "up" for r in rows.values())
        assert [r["Name"] for r in rows.values() if r["Local"]] == [node.name]
        assert rows["c"]["TotalGPUs"] == 1 and rows["a"]["TotalGPUs"] == 0
        assert rows["b"]["TotalCPUs"] == 1 and rows["b"]["TotalMemory"] == 4 << 30
    out = cluster.nodes["a"].run(["schedctl", "--json", "nodes"]).stdout
    assert {n["Name"] for n in json.loads(out)} == {"a", "b", "c"}
    text = cluster.nodes["a"].run(["schedctl", "nodes"]).stdout
    assert "a*" in text and "ago" in text


def test_placement_spills_over_to_a_peer_when_the_origin_is_full(cluster: Cluster):
    a = cluster.nodes["a"]
    blocker = a.submit(["sleep", "60"], user=ALICE)
    wait_job(a, blocker, lambda j: j["State"] == "RUNNING", "running")
    try:
        spilled = a.submit(["sh", "-c", "echo spilled-$SCHEDD_JOB_ID"], user=ALICE, Node=("s", "any"))
        r = a.run(["schedctl", "wait", str(spilled)], user=ALICE, timeout=60)
        job = a.job(spilled)
        assert job["State"] == "COMPLETED" and job["ExitCode"] == 0, job
        assert job["Node"] in ("b", "c")
        assert r.returncode == 0 and "COMPLETED" in r.stdout, r.stdout
        shown = a.run(["schedctl", "show", str(spilled)], user=ALICE).stdout
        assert f"Node={job['Node']}" in shown and "State=COMPLETED" in shown, shown
        found = copy_on(cluster, "a", spilled)
        assert found is not None and found[0].name == job["Node"] and found[1]["State"] == "COMPLETED"
        # Its output is read through the origin, from the node that ran it.
        out = a.run(["schedctl", "logs", str(spilled)], user=ALICE).stdout
        assert out.startswith("spilled-"), out
        # With room on the origin, `any` stays here.
        a.run(["schedctl", "cancel", str(blocker)], user=ALICE)
        local = a.submit(["true"], user=ALICE, Node=("s", "any"))
        assert wait_job(a, local, lambda j: j["State"] in TERMINAL, "done")["Node"] == "a"
    finally:
        a.manager_call("Cancel", "t", str(blocker), check=False)


def test_a_gpu_job_goes_to_the_gpu_node(cluster: Cluster):
    a = cluster.nodes["a"]
    jid = a.submit(["sh", "-c", "echo cuda=$CUDA_VISIBLE_DEVICES"], user=ALICE, Node=("s", "any"), GPUs=("u", 1))
    job = wait_job(a, jid, lambda j: j["State"] in TERMINAL, "done")
    assert job["Node"] == "c" and job["State"] == "COMPLETED", job
    assert a.run(["schedctl", "logs", str(jid)], user=ALICE).stdout.strip() == "cuda=0"
    # Two GPUs exist nowhere: refused at once.
    r = a.run(["gdbus", "call", "--system", "--dest", "org.schedd.Schedd1", "--object-path", "/org/schedd/Schedd1",
               "--method", "org.schedd.Schedd1.Manager.Submit",
               "{'Command': <['true']>, 'GPUs': <uint32 2>, 'Node': <'any'>}"], user=ALICE, check=False)
    assert r.returncode != 0 and "Unsatisfiable" in r.stderr and "GPUs" in r.stderr, r.stderr


def test_cancel_and_logs_work_through_the_origin(cluster: Cluster):
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    jid = a.submit(["sh", "-c", "echo hello-from-b; exec sleep 60"], user=ALICE, Node=("s", "b"))
    job = wait_job(a, jid, lambda j: j["State"] == "RUNNING", "running")
    assert job["Node"] == "b" and job["StartTime"] > 0
    wait_for(lambda: "hello-from-b" in a.run(["schedctl", "logs", str(jid)], user=ALICE).stdout, "output via a")
    listed = {(j["Origin"], j["Id"]) for j in a.jobs(all_nodes=True)}
    assert ("a", jid) in listed
    # Only its owner (or root) reads its output through the origin.
    r = a.manager_call("ReadOutput", "tbt", str(jid), "false", "0", user=USERS[1], check=False)
    assert r.returncode != 0 and "belongs to" in r.stderr, r.stderr
    r = a.manager_call("ReadOutput", "tbt", str(jid), "false", "6", user=ALICE)
    assert bytes(json.loads(r.stdout)["data"][0]).startswith(b"from-b")
    a.run(["schedctl", "cancel", str(jid)], user=ALICE)
    job = a.job(jid)
    assert job["State"] == "CANCELLED" and job["Reason"] == "cancelled", job
    node, copy = copy_on(cluster, "a", jid)
    assert node is b and copy["State"] == "CANCELLED"
    unit = f"schedd-job-{copy['Id']}.scope"
    assert b.run(["systemctl", "is-active", unit], check=False).stdout.strip() != "active"
    # Another user may not cancel it through the origin either.
    other = a.submit(["sleep", "30"], user=ALICE, Node=("s", "b"))
    wait_job(a, other, lambda j: j["State"] == "RUNNING", "running")
    r = a.run(["schedctl", "cancel", str(other)], user=USERS[1], check=False)
    assert r.returncode != 0 and a.job(other)["State"] == "RUNNING"
    a.run(["schedctl", "cancel", str(other)], user=ALICE)


def _forward(origin_id: int) -> dict:
    return {"Origin": "a", "OriginId": origin_id, "Spec": {"Command": ["true"], "UserName": ALICE, "CPUs": 1}}


def peer_views(node: ClusterNode) -> tuple[dict[str, int], dict[str, str]]:
    """What /metrics (schedd_peer_up) and the dashboard's state (/ui/state) say of the cluster."""
    code, text = node.http("GET", f"{node.url}/metrics", token=None)
    assert code == 200, text
    up = {}
    for line in text.splitlines():
        if line.startswith("schedd_peer_up{"):
            labels, value = line.rsplit(" ", 1)
            up[labels.split('peer="')[1].split('"')[0]] = int(float(value))
    code, text = node.http("GET", f"{node.url}/ui/state", token=None)
    assert code == 200, text
    return up, {n["Name"]: n["State"] for n in json.loads(text)["nodes"]}


def test_a_wrong_or_missing_token_gets_401_and_does_nothing(cluster: Cluster):
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    before = len(b.jobs())
    for token in ("wrong-token-of-the-right-length-xxxxxxxx", None, a.token[:-1]):
        code, text = a.http("POST", f"{b.url}/api/v1/jobs", _forward(900_001), token=token)
        assert code == 401, text
        assert json.loads(text)["error"] == "unauthorized"
    code, _ = a.http("POST", f"{b.url}/api/v1/heartbeat", {"Name": "a"}, token="nope")
    assert code == 401
    assert len(b.jobs()) == before
    # The OpenAPI document is public; bad JSON is a 400 with a message, never a 500.
    code, text = a.http("GET", f"{b.url}/api/v1/openapi.json", token=None)
    assert code == 200 and "/api/v1/jobs" in json.loads(text)["paths"]
    for bad in ("{not json", "[]", json.dumps({"Origin": "a", "OriginId": -1, "Spec": {}}),
                json.dumps({"Origin": "a", "OriginId": 5, "Spec": {"Command": "true", "UserName": ALICE}}),
                json.dumps({"Origin": "zz", "OriginId": 5, "Spec": {}})):
        code, text = a.http("POST", f"{b.url}/api/v1/jobs", bad)
        assert code in (400, 403), (bad, code, text)
        assert json.loads(text)["message"]


def test_a_retried_forward_makes_no_duplicate(cluster: Cluster):
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    first = a.http("POST", f"{b.url}/api/v1/jobs", _forward(900_002))
    second = a.http("POST", f"{b.url}/api/v1/jobs", _forward(900_002))
    assert first[0] == 201 and second[0] == 201, (first, second)
    assert json.loads(first[1])["Id"] == json.loads(second[1])["Id"]
    code, text = a.http("GET", f"{b.url}/api/v1/jobs?origin=a")
    assert [r["OriginId"] for r in json.loads(text)["Jobs"]].count(900_002) == 1
    # Root and unknown users are refused by name, with a sentence.
    for user, word in (("root", "root"), ("no-such-user-here", "does not exist")):
        fwd = _forward(900_003)
        fwd["Spec"]["UserName"] = user
        code, text = a.http("POST", f"{b.url}/api/v1/jobs", fwd)
        assert code == 403 and word in json.loads(text)["message"], text


def test_states_reach_an_origin_that_restarted(cluster: Cluster):
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    go = b.sb.state / "fed-go"
    jid = a.submit(["sh", "-c", "while [ ! -e /var/lib/schedd/fed-go ]; do sleep 0.05; done; echo through"],
                   user=ALICE, Node=("s", "b"))
    wait_job(a, jid, lambda j: j["State"] == "RUNNING", "running on b")
    try:
        a.run(["systemctl", "stop", "schedd"])
        go.write_text("")  # it ends while its origin is away
        wait_for(lambda: any(j["State"] == "COMPLETED" and j["Command"][-1].endswith("echo through")
                             for j in b.jobs()), "b's copy to complete while a is stopped")
        a.run(["systemctl", "start", "schedd"])
        job = wait_job(a, jid, lambda j: j["State"] == "COMPLETED", "completed, as b reports after a's restart")
        assert job["Node"] == "b" and job["ExitCode"] == 0
        assert a.run(["schedctl", "logs", str(jid)], user=ALICE).stdout.strip() == "through"
    finally:
        go.unlink(missing_ok=True)
        a.run(["systemctl", "start", "schedd"], check=False)


def test_a_run_node_restart_keeps_its_copies_and_their_origin_informed(cluster: Cluster):
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    go = b.sb.state / "fed-go"
    jid = a.submit(["sh", "-c", "while [ ! -e /var/lib/schedd/fed-go ]; do sleep 0.05; done; echo still-here"],
                   user=ALICE, Node=("s", "b"))
    wait_job(a, jid, lambda j: j["State"] == "RUNNING", "running on b")
    try:
        b.run(["systemctl", "restart", "schedd"])  # well within 3 heartbeats: not a node failure
        go.write_text("")
        job = wait_job(a, jid, lambda j: j["State"] in TERMINAL, "done")
        assert (job["State"], job["Node"], job["Restarts"]) == ("COMPLETED", "b", 0), job
        assert a.run(["schedctl", "logs", str(jid)], user=ALICE).stdout.strip() == "still-here"
    finally:
        go.unlink(missing_ok=True)


def test_a_node_that_goes_down_has_its_jobs_requeued_and_fenced_when_back(cluster: Cluster):
    a, c = cluster.nodes["a"], cluster.nodes["c"]
    again = a.submit(SLOW_JOB, user=ALICE, Node=("s", "c"))
    once = a.submit(SLOW_JOB, user=ALICE, Node=("s", "c"), Requeue=("b", False))
    for jid in (again, once):
        assert wait_job(a, jid, lambda j: j["State"] == "RUNNING", "running on c")["Node"] == "c"
    copies = {jid: copy_on(cluster, "a", jid)[1]["Id"] for jid in (again, once)}
    cluster.link("c", up=False)
    t0 = time.monotonic()
    wait_for(lambda: a.nodes()["c"]["State"] == "down", "a to see c down", timeout=10, interval=0.02)
    assert time.monotonic() - t0 <= 3 * HEARTBEAT + 0.5  # 3 intervals (+ the checker's quarter and polling)
    assert peer_views(a) == ({"b": 1, "c": 0}, {"a": "up", "b": "up", "c": "down"})  # metrics and dashboard agree
    try:
        job = wait_job(a, again, lambda j: j["State"] == "COMPLETED", "requeued and completed elsewhere")
        assert job["Node"] in ("a", "b") and job["Restarts"] == 1, job
        job = wait_job(a, once, lambda j: j["State"] in TERMINAL, "failed")
        assert (job["State"], job["Reason"]) == ("FAILED", "node-failure"), job
        # Cut off, c still runs both copies: nobody told it.
        for rid in copies.values():
            assert c.job(rid)["State"] == "RUNNING"
        # A job for c submitted while it is down waits for it (on a, placed nowhere yet).
        waiter = a.submit(["true"], user=ALICE, Node=("s", "c"))
        assert a.job(waiter)["State"] == "PENDING" and a.job(waiter)["Node"] == ""
    finally:
        cluster.link("c", up=True)
    wait_for(lambda: a.nodes()["c"]["State"] == "up", "c up again", timeout=10)
    assert peer_views(a)[0] == {"b": 1, "c": 1}
    job = wait_job(a, waiter, lambda j: j["State"] == "COMPLETED", "forwarded to c once it is back")
    assert job["Node"] == "c"
    # The requeued job's old copy is stale (CANCELLED); the Requeue=false one's run failed, on c as on a.
    for jid, want in ((again, "CANCELLED"), (once, "FAILED")):
        rid = copies[jid]
        j = wait_job(c, rid, lambda j: j["State"] in TERMINAL, "fenced")
        assert (j["State"], j["Reason"]) == (want, "node-failure"), j
        assert c.run(["systemctl", "is-active", f"schedd-job-{rid}.scope"], check=False).stdout.strip() != "active"
    # The origin's records are not disturbed by the fenced copies' last reports.
    assert a.job(again)["State"] == "COMPLETED" and a.job(once)["Reason"] == "node-failure"
