"""Fault injection: SIGKILL the daemon mid-burst, between scope and release, and as jobs finish.

After each restart: every id a client got back exists, no job ran twice, no job is
stuck RUNNING without its scope, and SQLite's integrity_check is ok.
"""

from __future__ import annotations

import collections
import json
import subprocess
import time

import pytest

from conftest import Node, client

RAN = "/run/schedd-ran"
FAULT = "/run/schedd-fault"
RECORD = ["sh", "-c", f'echo "$SCHEDD_JOB_ID" >> {RAN}']


@pytest.fixture
def faulty(node: Node):
    """schedd with fault points armed by /run/schedd-fault, and a clean run record."""
    node.run(["mkdir", "-p", "/run/systemd/system/schedd.service.d"])
    node.run(["sh", "-c", "cat > /run/systemd/system/schedd.service.d/faults.conf"],
             input=f"[Service]\nEnvironment=SCHEDD_FAULT_FILE={FAULT}\n")
    node.run(["rm", "-f", RAN, FAULT])
    node.run(["systemctl", "daemon-reload"])
    node.run(["systemctl", "reset-failed", "schedd"], check=False)  # also resets the start rate limit
    node.run(["systemctl", "restart", "schedd"])
    yield node
    node.run(["rm", "-f", "/run/systemd/system/schedd.service.d/faults.conf", FAULT])
    node.run(["systemctl", "daemon-reload"])
    node.run(["systemctl", "reset-failed", "schedd"], check=False)
    node.run(["systemctl", "restart", "schedd"])


def wait_restarted(node: Node, old_pid: str) -> None:
    node.wait_for(lambda: node.unit_property("schedd.service", "ActiveState") == "active"
                  and node.unit_property("schedd.service", "MainPID") not in ("0", old_pid), "schedd to restart",
                  timeout=30)


def active_jobs(node: Node) -> list[dict]:
    r = node.manager_call("ListJobs", "a{sv}", "1", "States", "as", "4", "PENDING", "HELD", "RUNNING", "SUSPENDED")
    return [{k: v["data"] for k, v in j.items()} for j in json.loads(r.stdout)["data"][0]]


def check_invariants(node: Node, acked: list[int]) -> None:
    # No job stuck RUNNING without its scope.
    for j in active_jobs(node):
        if j["State"] == "RUNNING":
            unit = f"schedd-job-{j['Id']}.scope"
            assert node.unit_property(unit, "ActiveState") in ("active", "deactivating") or \
                node.job(j["Id"])["State"] != "RUNNING", f"job {j['Id']} RUNNING without {unit}"
    node.wait_for(lambda: not active_jobs(node), "every job to finish", timeout=180)
    ran = collections.Counter(int(x) for x in node.run(["sh", "-c", f"cat {RAN} 2>/dev/null || true"]).stdout.split())
    assert [j for j, n in ran.items() if n > 1] == []  # no job ran twice
    for jid in acked:
        j = node.job(jid)  # every acknowledged id exists ...
        assert (j["State"], ran[jid]) == ("COMPLETED", 1), (jid, j["State"], j["Reason"], ran[jid])  # ... and ran once
    ok = node.run(["python3", "-c", "import sqlite3; print(sqlite3.connect('file:/var/lib/schedd/schedd.db?mode=ro',"
                                    " uri=True).execute('PRAGMA integrity_check').fetchone()[0])"]).stdout.strip()
    assert ok == "ok"
    print(f"[faults] {len(acked)} acknowledged ids: all exist, all COMPLETED, each ran once; "
          f"{sum(ran.values())} runs in all; integrity_check {ok}")


def test_sigkill_during_a_burst_of_submits_from_8_clients(faulty: Node):
    node = faulty
    old = node.unit_property("schedd.service", "MainPID")
    burst = node.sb.popen([*client("burst_ids.py"),
                           "8", "125", "4", *RECORD], stdout=subprocess.PIPE, text=True)
    acked: list[int] = []
    errors: list[str] = []
    killed = False
    deadline = time.monotonic() + 120
    for line in burst.stdout:
        assert time.monotonic() < deadline, "burst took too long"
        if line.startswith("ERR"):
            errors.append(line.strip())
            continue
        acked.append(int(line))
        if len(acked) == 300 and not killed:
            node.run(["systemctl", "kill", "-s", "KILL", "schedd"])
            killed = True
    burst.wait(30)
    assert killed and errors, "the daemon was not killed mid-burst"
    assert len(acked) < 1000
    print(f"[faults] burst: {len(acked)} Submits answered, {len(errors)} refused by the killed daemon")
    wait_restarted(node, old)
    assert int(node.unit_property("schedd.service", "NRestarts")) >= 1
    check_invariants(node, acked)


def test_sigkill_between_scope_creation_and_release(faulty: Node):
    node = faulty
    old = node.unit_property("schedd.service", "MainPID")
    node.run(["sh", "-c", f"echo after-scope > {FAULT}"])
    jid = node.submit(RECORD)
    wait_restarted(node, old)
    assert node.run(["test", "-e", FAULT], check=False).returncode != 0  # the fault point fired
    check_invariants(node, [jid])


def test_sigkill_while_jobs_are_finishing(faulty: Node):
    node = faulty
    old = node.unit_property("schedd.service", "MainPID")
    node.run(["sh", "-c", f"echo job-ended > {FAULT}"])
    (r,) = node.calls([{"member": "SubmitMany", "signature": "aa{sv}",
                        "body": [[{"Command": ["as", RECORD], "Memory": ["t", 16 << 20]}] * 40]}])
    ids = r["ok"][0]
    wait_restarted(node, old)
    assert node.run(["test", "-e", FAULT], check=False).returncode != 0
    check_invariants(node, ids)
