"""Nodes come and go (issue 19), on the netns cluster with a real systemd per node (tests/netcluster.py).

a and b list each other in [[peers]]; c is configured with nothing but a as its seed and is started
later: it joins, every node lists it, and `any` jobs spill to it. Then c is drained (from a, through the
peer API) with jobs running and queued, resumed, and finally stopped and removed. A node with a wrong
token cannot join, and one claiming c's name while c is live is refused. Every node has 1 CPU.
Figures (join time in intervals, the drain's timeline) go to artifacts/membership-figures.json.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from conftest import USERS

from netcluster import Cluster, ClusterNode, NodeSpec, netns_unavailable, wait_for, wait_job
from prereq import require, unavailable
from sandbox import REPO

HEARTBEAT = 1.0  # s, as test_federation
ALICE = USERS[0]
FIGURES: dict = {}


@pytest.fixture(scope="module")
def cluster(users):
    if shutil.which("ip") is None or shutil.which("curl") is None:
        unavailable("needs ip (iproute2) and curl (scripts/setup installs them)")
    require(netns_unavailable())
    specs = [NodeSpec("a"), NodeSpec("b"), NodeSpec("c", seeds=["a"], later=True),
             NodeSpec("x", seeds=["a"], later=True, token="not-the-cluster-token-at-all"),
             NodeSpec("d", seeds=["a"], later=True, node_name="c")]
    c = Cluster(f"m{os.getpid() % 1000}", specs, heartbeat=f"{int(HEARTBEAT * 1000)}ms")
    try:
        c.up()
        yield c
    finally:
        out = REPO / "artifacts"
        out.mkdir(exist_ok=True)
        (out / "membership-figures.json").write_text(json.dumps(FIGURES, indent=2))
        for node in c.nodes.values():
            if node.sb.pid:
                (out / f"membership-{node.name}-journal.txt").write_text(node.sb.journal("schedd", 3000))
        c.down()


def lists(node: ClusterNode, names: set[str]) -> bool:
    rows = node.nodes()
    return set(rows) == names and all(r["State"] == "up" for r in rows.values())


def test_a_newcomer_with_one_seed_joins_and_takes_spilled_jobs(cluster: Cluster):
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    assert set(a.nodes()) == {"a", "b"}
    t0 = time.monotonic()
    r = cluster.join("c")
    assert r.returncode == 0, r.stderr + cluster.nodes["c"].journal(40)
    c = cluster.nodes["c"]
    every = {"a", "b", "c"}
    wait_for(lambda: all(lists(n, every) for n in (a, b, c)), "every node to list a, b and c up", timeout=15)
    took = time.monotonic() - t0
    FIGURES["join_seconds"] = round(took, 2)
    FIGURES["join_intervals"] = round(took / HEARTBEAT, 2)
    # systemctl start returns once c has joined (before READY); the rest is heartbeats. The polling of
    # three nodes over busctl costs a few tenths of a second on top.
    assert took <= 3 * HEARTBEAT + 1.0, f"join took {took:.2f}s, over 3 intervals"
    assert "joined the cluster through" in c.journal(80)
    assert "(http://10.203.0.3:7001) joined the cluster" in a.journal(80)
    assert "c" in {r["Name"] for r in json.loads(b.run(["schedctl", "--json", "nodes"]).stdout)}

    # `any` jobs from a: one fills a, then they spill to b and to the newcomer.
    ids = [a.submit(["sleep", "30"], user=ALICE, Node=("s", "any")) for _ in range(3)]
    try:
        jobs = [wait_job(a, i, lambda j: j["State"] == "RUNNING", "running") for i in ids]
        assert {j["Node"] for j in jobs} == every, [j["Node"] for j in jobs]
    finally:
        for i in ids:
            a.run(["schedctl", "cancel", str(i)], user=ALICE, check=False)
    for i in ids:
        wait_job(a, i, lambda j: j["State"] == "CANCELLED", "cancelled")

    # Membership is kept in the store: b, whose config names only a, still knows c after a restart.
    cluster.restart_daemon("b")
    wait_for(lambda: lists(b, every), "b to list c again after its restart", timeout=15)


def test_a_wrong_token_cannot_join(cluster: Cluster):
    r = cluster.join("x")
    x = cluster.nodes["x"]
    assert r.returncode != 0
    journal = x.journal(40)
    assert "joining the cluster through seed http://10.203.0.1:7001 was refused" in journal, journal
    assert "token" in journal
    assert "x" not in cluster.nodes["a"].nodes()


def test_a_duplicate_name_is_refused(cluster: Cluster):
    r = cluster.join("d")  # [node] name = "c", while c is live
    d = cluster.nodes["d"]
    assert r.returncode != 0
    journal = d.journal(40)
    assert "is taken by a live node at http://10.203.0.3:7001" in journal, journal
    rows = cluster.nodes["a"].nodes()
    assert rows["c"]["URL"] == "http://10.203.0.3:7001" and rows["c"]["State"] == "up"
    # Nor may a heartbeat take it over, or claim a's own name.
    a = cluster.nodes["a"]
    beat = {"Name": "c", "URL": "http://10.203.0.4:7001", "TotalCPUs": 1, "AvailableCPUs": 1, "TotalMemory": 1,
            "AvailableMemory": 1, "TotalGPUs": 0, "AvailableGPUs": 0, "PendingJobs": 0, "RunningJobs": 0}
    code, text = d.http("POST", f"{a.url}/api/v1/heartbeat", beat, token=a.token)
    assert code == 409 and json.loads(text)["dbus_error"].endswith("InvalidState"), text
    code, text = d.http("POST", f"{a.url}/api/v1/join", {**beat, "Name": "a"}, token=a.token)
    assert code == 409 and "own" in json.loads(text)["message"], text
    code, text = d.http("POST", f"{a.url}/api/v1/join", "[1, 2", token=a.token)
    assert code == 400, text
    assert cluster.nodes["a"].nodes()["c"]["URL"] == "http://10.203.0.3:7001"


def test_drain_lets_running_jobs_finish_and_sends_queued_ones_elsewhere(cluster: Cluster):
    a, b, c = (cluster.nodes[n] for n in "abc")
    t0 = time.monotonic()
    timeline: list[tuple[float, str]] = []

    def mark(what: str) -> None:
        timeline.append((round(time.monotonic() - t0, 2), what))

    # a and b busy; on c one job running and two queued: one that may run anywhere, one bound to c.
    busy = [n.submit(["sleep", "8"], user=ALICE) for n in (a, b)]
    running = c.submit(["sleep", "4"], user=ALICE)
    for n, i in zip((a, b, c), [*busy, running]):
        wait_job(n, i, lambda j: j["State"] == "RUNNING", "running")
    anywhere = c.submit(["sh", "-c", "echo moved"], user=ALICE, Node=("s", "any"))
    bound = c.submit(["true"], user=ALICE)
    assert c.job(anywhere)["State"] == "PENDING" and c.job(bound)["State"] == "PENDING"
    mark("c runs 1 job, queues 2 (one Node=any, one bound to c); a and b full")

    # Only root may drain.
    r = a.run(["schedctl", "drain", "c"], user=ALICE, check=False)
    assert r.returncode == 1 and "only root" in r.stderr, r.stderr
    a.run(["schedctl", "drain", "c", "--reason", "kernel update"])  # from a: through c's peer API
    mark("schedctl drain c (on a)")
    wait_for(lambda: c.nodes()["c"]["State"] == "draining", "c to be draining", timeout=5)
    row = wait_for(lambda: (r := a.nodes()["c"])["State"] == "draining" and r, "a to see c draining", timeout=5)
    assert row["DrainReason"] == "kernel update" and row["DrainedBy"] == "root on a", row
    mark("c draining (seen on a)")
    wait_job(c, bound, lambda j: j["Reason"] == "drained", "waiting, reason drained", timeout=5)
    mark("the job bound to c waits, reason drained")
    # Nothing new lands there: an `any` job from a waits rather than going to c.
    newcomer = a.submit(["true"], user=ALICE, Node=("s", "any"))
    pinned = a.submit(["true"], user=ALICE, Node=("s", "c"))  # it may run only there: it waits, drained
    assert a.job(pinned)["State"] == "PENDING" and a.job(pinned)["Reason"] == "drained", a.job(pinned)
    done = wait_job(c, running, lambda j: j["State"] == "COMPLETED", "the running job finishing on c", timeout=20)
    assert done["Node"] == "c"
    mark("the running job completed on c")
    wait_for(lambda: a.nodes()["c"]["State"] == "drained", "a to see c drained", timeout=5)
    mark("c drained (seen on a)")
    text = a.run(["schedctl", "nodes"]).stdout
    assert "drained" in text and "kernel update (by root on a)" in text, text
    metrics = a.run(["curl", "-sS", f"{a.url}/metrics"]).stdout
    assert 'schedd_node_state{node="c",state="drained"} 1.0' in metrics, metrics
    assert 'schedd_node_state{node="c",state="up"} 0.0' in metrics

    moved = wait_job(c, anywhere, lambda j: j["State"] == "COMPLETED", "the Node=any job running elsewhere",
                     timeout=30)
    assert moved["Node"] in ("a", "b"), moved
    mark(f"the queued Node=any job ran on {moved['Node']}")
    job = wait_job(a, newcomer, lambda j: j["State"] == "COMPLETED", "a's new job", timeout=30)
    assert job["Node"] != "c", job
    assert c.job(bound)["State"] == "PENDING"
    assert "is drained" in c.journal(200)

    c.run(["schedctl", "node", "resume", "c"])  # on c itself: the local path
    mark("schedctl node resume c (on c)")
    wait_job(c, bound, lambda j: j["State"] == "COMPLETED", "the bound job running after resume", timeout=15)
    mark("the job bound to c ran there")
    job = wait_job(a, pinned, lambda j: j["State"] == "COMPLETED", "a's job for c running there after resume",
                   timeout=15)
    assert job["Node"] == "c"
    mark("a's job for Node=c ran there")
    wait_for(lambda: a.nodes()["c"]["State"] == "up", "a to see c up again", timeout=5)
    mark("c up again (seen on a)")
    FIGURES["drain_timeline"] = timeline
    for n, i in zip((a, b), busy):
        wait_job(n, i, lambda j: j["State"] == "COMPLETED", "done")


def test_a_node_that_stops_says_so_and_can_be_removed(cluster: Cluster):
    a, b, c = (cluster.nodes[n] for n in "abc")
    r = a.run(["schedctl", "node", "remove", "c"], check=False)
    assert r.returncode == 1 and "is up" in r.stderr, r.stderr
    t0 = time.monotonic()
    c.run(["systemctl", "stop", "schedd"])
    wait_for(lambda: a.nodes()["c"]["State"] == "down", "a to see c down", timeout=10)
    took = time.monotonic() - t0
    FIGURES["clean_stop_seen_down_seconds"] = round(took, 2)
    assert took < 3 * HEARTBEAT, f"a clean stop was seen only after {took:.2f}s: the down timeout"
    assert "node c is shutting down" in a.journal(60)
    a.run(["schedctl", "node", "remove", "c"])
    wait_for(lambda: "c" not in a.nodes() and "c" not in b.nodes(), "a and b to forget c", timeout=10)
    r = a.run(["schedctl", "node", "remove", "c"], check=False)
    assert r.returncode == 1 and "no node named 'c'" in r.stderr, r.stderr
    r = a.run(["schedctl", "node", "remove", "b"], check=False)
    assert r.returncode == 1 and "[[peers]]" in r.stderr, r.stderr
    # Gone for good: a restart of b does not bring it back (b forgot it, and a's word does not revive it).
    cluster.restart_daemon("b")
    wait_for(lambda: lists(b, {"a", "b"}), "b to list a and b only", timeout=15)
