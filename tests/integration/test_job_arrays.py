"""A million-task array on the real systemd: one Submit, one folded queue line, tasks that run,
paths that answer for tasks not started, and one CancelArray that ends it all."""

from __future__ import annotations

import json
import time

import pytest

from conftest import CONFIG, Node, extra_node

# The per-user cap counts every task of an array as a queued job: this node allows a 1M array.
ARRAY_CONFIG = CONFIG.replace("max_pending_per_user = 1000", "max_pending_per_user = 2000000")
ALICE, BOB = "schedd-alice", "schedd-bob"


@pytest.fixture(scope="module")
def anode(users):
    with extra_node("arrays", ARRAY_CONFIG) as n:
        yield n


def manager_property(node: Node, name: str) -> int:
    return int(node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                           "org.schedd.Schedd1.Manager", name).stdout.split()[1])


def get_all(node: Node, job_id: int, user: str) -> dict:
    r = node.busctl("--json=short", "call", "org.schedd.Schedd1", f"/org/schedd/Schedd1/job/{job_id}",
                    "org.freedesktop.DBus.Properties", "GetAll", "s", "org.schedd.Schedd1.Job", user=user)
    return {k: v["data"] for k, v in json.loads(r.stdout)["data"][0].items()}


def test_a_million_task_array_is_one_submit_runs_and_cancels_as_one(anode: Node):
    t0 = time.monotonic()
    out = json.loads(anode.schedctl("--json", "submit", "--array", "1-1000000%2", "--", "true", user=ALICE,
                                    timeout=60).stdout)
    took = time.monotonic() - t0
    aid = out["id"]
    assert took < 10, f"schedctl submit of a 1M-task array took {took:.1f}s"  # the daemon's part: bench/scale.py
    assert (out["ArrayJobId"], out["Tasks"], out["LastId"]) == (aid, 1_000_000, aid + 999_999)
    assert manager_property(anode, "PendingJobs") >= 999_990

    # Tasks run, at most two at once, each with its own task id.
    for k in range(3):
        j = anode.wait(aid + k, timeout=60)
        assert (j["State"], j["ArrayJobId"], j["ArrayTaskId"], j["ArrayMaxRunning"]) == ("COMPLETED", aid, k + 1, 2)
    assert manager_property(anode, "RunningJobs") <= 2

    # The queue folds what has not started into one Slurm-style line.
    queue = anode.schedctl("queue", user=ALICE).stdout
    assert f"{aid}_[" in queue and "-1000000%2]" in queue, queue
    assert len(queue.splitlines()) < 20

    # A task far from starting answers on its path, as every job does.
    props = get_all(anode, aid + 999_999, ALICE)
    assert (props["State"], props["ArrayTaskId"], props["ArrayJobId"], props["Id"]) == \
        ("PENDING", 1_000_000, aid, aid + 999_999)

    # Only its owner (or root) acts on the array.
    r = anode.schedctl("cancel", "--array", str(aid), user=BOB, check=False)
    assert r.returncode != 0 and "belongs to" in r.stderr
    anode.schedctl("cancel", f"{aid}_*", user=ALICE, timeout=60)
    anode.wait_for(lambda: manager_property(anode, "PendingJobs") == 0
                   and manager_property(anode, "RunningJobs") == 0, "the array to end", timeout=60)
    assert anode.job(aid + 500_000)["State"] == "CANCELLED"
    assert get_all(anode, aid + 999_999, ALICE)["State"] == "CANCELLED"
    assert f"{aid}_[" not in anode.schedctl("queue", user=ALICE).stdout


def test_an_array_goes_on_across_a_daemon_restart_without_losing_or_repeating_a_task(anode: Node):
    log = "/run/schedd-test-array-restart.log"
    anode.run(["rm", "-f", log])
    anode.run(["sh", "-c", f"touch {log} && chmod 666 {log}"])
    out = json.loads(anode.schedctl("--json", "submit", "--array", "1-40%2", "--", "sh", "-c",
                                    f'echo "$SCHEDD_ARRAY_TASK_ID" >> {log}', user=ALICE).stdout)
    aid = out["id"]
    anode.wait_for(lambda: len(anode.run(["cat", log]).stdout.split()) >= 5, "a few tasks to run", timeout=60)
    anode.run(["systemctl", "restart", "schedd"])
    for k in range(40):
        anode.wait(aid + k, timeout=60)
    ran = sorted(int(t) for t in anode.run(["cat", log]).stdout.split())
    assert ran == list(range(1, 41))  # each task once, none lost, none twice
    assert all(anode.job(aid + k)["State"] == "COMPLETED" for k in range(40))
