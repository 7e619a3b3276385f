"""A real workload on the real systemd: dependencies, arrays, time limits, suspend/resume,
requeue and backfill, driven through schedctl and busctl."""

from __future__ import annotations

import json
import os

import pytest
from conftest import CONFIG, Node, extra_node

from prereq import require

SECOND = 1_000_000


def submit(node: Node, *args: str, user: str | None = None) -> dict:
    return json.loads(node.schedctl("--json", "submit", *args, user=user).stdout)


def wait_marker(marker: str) -> list[str]:
    return ["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done"]


def scope_pids(node: Node, unit: str) -> list[int]:
    r = node.run(["busctl", "--json=short", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                  "org.freedesktop.systemd1.Manager", "GetUnitProcesses", "s", unit], check=False)
    return [p[1] for p in json.loads(r.stdout)["data"][0]] if r.returncode == 0 else []


def proc_states(node: Node, pids: list[int]) -> set[str]:
    states = set()
    for pid in pids:
        r = node.run(["cat", f"/proc/{pid}/stat"], check=False)
        if r.returncode == 0:
            states.add(r.stdout.rsplit(")", 1)[1].split()[0])
    return states


def test_dependencies_wait_for_success_and_failures_propagate(node: Node):
    go = "/run/schedd-test-dep-go"
    node.run(["rm", "-f", go])
    a = node.submit(wait_marker(go))
    bad = node.submit(["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done; exit 1"])
    b = submit(node, "--after", str(a), "--", "true")["id"]
    c = submit(node, "--after", str(bad), "--", "true")["id"]
    d = submit(node, "--after", f"{c},{a}", "--", "true")["id"]
    node.wait(a, {"RUNNING"})
    assert {node.job(j)["State"] for j in (b, c, d)} == {"PENDING"}
    node.run(["touch", go])
    jb = node.wait(b)
    ja = node.job(a)
    assert jb["State"] == "COMPLETED" and jb["StartTime"] >= ja["EndTime"]
    assert node.wait(bad)["State"] == "FAILED"
    for j in (c, d):  # c waited on the failed job; d on c: the failure travels down the chain
        assert (node.wait(j)["State"], node.job(j)["Reason"], node.job(j)["StartTime"]) == ("FAILED", "dependency", 0)
    r = node.schedctl("submit", "--after", "999999", "--", "true", check=False)
    assert r.returncode == 1 and "After: job 999999 does not exist" in r.stderr


def test_array_tasks_get_their_ids_and_run_at_most_n_at_once(node: Node):
    log = "/run/schedd-test-array.log"
    node.run(["rm", "-f", log])
    script = (f'echo "start $SCHEDD_ARRAY_TASK_ID $SCHEDD_ARRAY_JOB_ID $SCHEDD_JOB_ID" >> {log}; '
              f'sleep 0.2; echo "end $SCHEDD_ARRAY_TASK_ID" >> {log}')
    out = submit(node, "--array", "1-6%1", "--", "sh", "-c", script)
    ids = out["ids"]
    assert len(ids) == 6 and out["ArrayJobId"] == ids[0] and ids == list(range(ids[0], ids[0] + 6))
    queue = node.schedctl("queue").stdout
    assert f"{ids[0]}_[" in queue and "%1]" in queue  # pending tasks folded into one line
    assert str(ids[5]) in node.schedctl("queue", "--array").stdout  # or one line each
    for i in ids:
        assert node.wait(i, timeout=60)["State"] == "COMPLETED"
    lines = node.run(["cat", log]).stdout.split("\n")[:-1]
    # With %1 on a node with room for more, the tasks never overlapped: start/end strictly alternate.
    assert [ln.split()[0] for ln in lines] == ["start", "end"] * 6
    starts = [ln.split() for ln in lines if ln.startswith("start")]
    assert sorted(int(s[1]) for s in starts) == [1, 2, 3, 4, 5, 6]
    for _, task, array_id, job_id in starts:
        assert int(array_id) == ids[0] and int(job_id) == ids[int(task) - 1]
    j = node.job(ids[3])
    assert (j["ArrayJobId"], j["ArrayTaskId"], j["ArrayMaxRunning"]) == (ids[0], 4, 1)


def test_an_array_is_all_or_nothing(node: Node):
    before = node.submit(["true"])
    r = node.schedctl("submit", "--array", "1-3", "--cpus", "9999", "--", "true", check=False)
    assert r.returncode == 1 and "CPUs: asks for 9999 CPUs" in r.stderr
    assert node.submit(["true"]) == before + 1  # no task of the refused array was created
    r = node.schedctl("submit", "--array", "5-1", "--", "true", check=False)
    assert r.returncode == 2 and "--array" in r.stderr


def test_time_limit_ends_the_job_with_reason_timeout(node: Node):
    jid = submit(node, "--time", "1s", "--", "sleep", "60")["id"]
    j = node.wait(jid, timeout=30)
    assert (j["State"], j["Reason"], j["RuntimeMaxUSec"]) == ("FAILED", "timeout", SECOND)
    assert j["EndTime"] - j["StartTime"] >= SECOND


def test_suspended_job_is_stopped_keeps_its_cpus_and_its_time_limit_pauses(node: Node):
    jid = submit(node, "--time", "2s", "--", "sh", "-c", "sleep 60")["id"]
    j = node.wait(jid, {"RUNNING"})
    unit = j["Unit"]
    cpus = j["AssignedCPUs"]
    pids = node.wait_for(lambda: (p := scope_pids(node, unit)) and len(p) >= 3 and p, "gate, sh and sleep")
    node.schedctl("suspend", str(jid))
    j = node.job(jid)
    assert j["State"] == "SUSPENDED" and j["AssignedCPUs"] == cpus
    if node.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"]).stdout.strip() == "cgroup2fs":
        assert node.unit_property(unit, "FreezerState") == "frozen"  # FreezeUnit (test_freeze.py)
    else:
        assert proc_states(node, pids) == {"T"}  # SIGSTOP: a hybrid host's systemd cannot freeze scopes
    # Well past its 2 s limit in wall-clock time, but suspended: it must still be there.
    node.wait_for(lambda: node.job(jid)["SuspendedUSec"] > 3 * SECOND, "3 s of suspension", timeout=15)
    assert node.job(jid)["State"] == "SUSPENDED"
    node.schedctl("resume", str(jid))
    assert node.job(jid)["State"] == "RUNNING"
    assert "T" not in proc_states(node, pids)
    j = node.wait(jid, timeout=30)
    assert (j["State"], j["Reason"]) == ("FAILED", "timeout")
    assert j["SuspendedUSec"] > 3 * SECOND
    assert j["EndTime"] - j["StartTime"] >= 2 * SECOND + j["SuspendedUSec"]


def test_requeue_keeps_the_id_and_counts_restarts(node: Node):
    go = "/run/schedd-test-requeue-go"
    node.run(["rm", "-f", go])
    jid = node.submit(wait_marker(go))
    first = node.wait(jid, {"RUNNING"})
    node.schedctl("requeue", str(jid))
    j = node.wait(jid, {"RUNNING"})
    assert j["Restarts"] == 1 and j["StartTime"] > first["StartTime"]
    node.run(["touch", go])
    assert node.wait(jid)["State"] == "COMPLETED"
    node.schedctl("requeue", str(jid))  # a finished job runs again, same id
    j = node.wait(jid)
    assert (j["State"], j["Restarts"]) == ("COMPLETED", 2)
    held = node.submit(["true"], Hold=("b", True))
    r = node.schedctl("requeue", str(held), check=False)
    assert r.returncode == 1 and "nothing to requeue" in r.stderr


TWO_CPUS = CONFIG.replace("[resources]\n", "[resources]\ncpus = 2\n")


@pytest.fixture(scope="module")
def two_cpu_node(users):
    """Exactly 2 CPUs, whatever the machine offers beyond them: the backfill case below needs a
    free CPU beside a blocked head job. resources.cpus may not exceed the machine's CPUs (a job
    is pinned to real CPU ids), so a 1-CPU machine cannot host it."""
    have = len(os.sched_getaffinity(0))
    require(None if have >= 2 else f"backfill needs a node with 2 CPUs; this machine offers {have}")
    with extra_node("backfill", TWO_CPUS) as n:
        yield n


def test_backfill_starts_a_short_job_but_never_one_without_a_limit(two_cpu_node: Node):
    node = two_cpu_node
    total = node.busctl("--json=short", "get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                        "org.schedd.Schedd1.Manager", "TotalCPUs").stdout
    assert json.loads(total)["data"] == 2
    go = "/run/schedd-test-backfill-go"
    node.run(["rm", "-f", go])
    blocker = node.submit(wait_marker(go), CPUs=("u", 1), RuntimeMaxUSec=("t", 120 * SECOND))
    jb = node.wait(blocker, {"RUNNING"})
    head = node.submit(["true"], CPUs=("u", 2), Priority=("i", 10), Name=("s", "head"))
    unlimited = node.submit(["true"], Name=("s", "unlimited"))
    short = node.submit(["true"], RuntimeMaxUSec=("t", 60 * SECOND), Name=("s", "short"))
    # The short job ends (at the latest) before the blocker does, so it cannot delay the head:
    # it runs on the free CPU now. The unlimited one could run for ever ahead of the head: never.
    js = node.wait(short)
    assert js["State"] == "COMPLETED" and len(js["AssignedCPUs"]) == 1
    assert not set(js["AssignedCPUs"]) & set(jb["AssignedCPUs"])
    assert node.job(head)["State"] == "PENDING"
    assert node.job(unlimited)["State"] == "PENDING"
    node.run(["touch", go])
    jh, ju = node.wait(head), node.wait(unlimited)
    assert jh["State"] == ju["State"] == "COMPLETED"
    assert sorted(jh["AssignedCPUs"]) == sorted(jb["AssignedCPUs"] + js["AssignedCPUs"])
    assert ju["StartTime"] >= jh["EndTime"]
