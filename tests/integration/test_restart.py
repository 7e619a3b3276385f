"""Exit statuses survive the daemon: the gate records them inside the job's scope."""

from __future__ import annotations

import json

from conftest import Node


def test_running_job_is_readopted_across_restart(node: Node):
    marker = "/run/schedd-test-restart"
    node.run(["rm", "-f", marker])
    jid = node.submit(["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done; exit 7"])
    node.wait(jid, {"RUNNING"})
    pid_before = node.unit_property("schedd.service", "MainPID")
    node.run(["systemctl", "restart", "schedd"])
    assert node.unit_property("schedd.service", "MainPID") != pid_before
    j = node.job(jid)
    assert j["State"] == "RUNNING"  # re-adopted, not killed and not started again
    assert node.unit_property(f"schedd-job-{jid}.scope", "ActiveState") == "active"
    node.run(["touch", marker])
    j = node.wait(jid)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "exit-code", 7)


def test_job_that_ends_while_the_daemon_is_down_keeps_its_exit_code(node: Node):
    marker = "/run/schedd-test-down"
    node.run(["rm", "-f", marker])
    jid = node.submit(["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done; exit 9"])
    node.wait(jid, {"RUNNING"})
    node.run(["systemctl", "stop", "schedd"])
    node.run(["touch", marker])
    unit = f"schedd-job-{jid}.scope"
    node.wait_for(lambda: node.unit_property(unit, "ActiveState") in ("inactive", ""), "the job to end")
    node.run(["systemctl", "start", "schedd"])
    j = node.wait(jid)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "exit-code", 9)
    free = node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager",
                       "AvailableCPUs").stdout.split()[1]
    total = node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager",
                        "TotalCPUs").stdout.split()[1]
    assert free == total  # its CPUs were handed back


def test_sigkill_of_the_daemon_leaves_running_jobs_alone(node: Node):
    marker = "/run/schedd-test-kill9"
    node.run(["rm", "-f", marker])
    jid = node.submit(["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done; exit 4"])
    node.wait(jid, {"RUNNING"})
    unit = f"schedd-job-{jid}.scope"
    gate_pids = node.unit_property(unit, "ControlGroup")
    old = node.unit_property("schedd.service", "MainPID")
    node.run(["systemctl", "reset-failed", "schedd"], check=False)
    node.run(["systemctl", "kill", "-s", "KILL", "schedd"])
    node.wait_for(lambda: node.unit_property("schedd.service", "ActiveState") == "active"
                  and node.unit_property("schedd.service", "MainPID") not in ("0", old), "systemd to restart schedd")
    assert node.unit_property(unit, "ActiveState") == "active" and node.unit_property(unit, "ControlGroup") == gate_pids
    assert node.job(jid)["State"] == "RUNNING"
    free = node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager",
                       "AvailableCPUs").stdout.split()[1]
    total = node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager",
                        "TotalCPUs").stdout.split()[1]
    assert int(free) == int(total) - 1  # the ledger was rebuilt from the running job
    node.run(["touch", marker])
    j = node.wait(jid)
    assert (j["State"], j["ExitCode"]) == ("FAILED", 4)


def test_a_stranger_scope_is_stopped_and_logged(node: Node):
    unit = "schedd-job-987654.scope"
    stranger = node.sb.popen(["systemd-run", "--scope", f"--unit={unit}", "--slice=schedd.slice", "sleep", "1000"])
    try:
        node.wait_for(lambda: node.unit_property(unit, "ActiveState") == "active", "the stranger scope")
        node.run(["systemctl", "restart", "schedd"])
        node.wait_for(lambda: node.unit_property(unit, "ActiveState") in ("inactive", ""), "the scope to be stopped")
        assert "schedd-job-987654.scope belongs to a job unknown to the store; stopping it" in node.sb.journal("schedd")
    finally:
        stranger.wait(10)


def test_oom_while_the_daemon_is_down_is_reported_as_oom_kill(node: Node):
    marker = "/run/schedd-test-oom-down"
    node.run(["rm", "-f", marker])
    jid = node.submit(["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done; "
                                   "exec python3 -c 'x = bytearray(400 << 20)'"], Memory=("t", 64 << 20))
    node.wait(jid, {"RUNNING"})
    node.run(["systemctl", "stop", "schedd"])
    node.run(["touch", marker])
    unit = f"schedd-job-{jid}.scope"
    node.wait_for(lambda: node.unit_property(unit, "ActiveState") in ("inactive", ""), "the job to be OOM-killed")
    node.run(["systemctl", "start", "schedd"])
    j = node.wait(jid)
    assert (j["State"], j["Reason"]) == ("FAILED", "oom-kill")


def test_time_limit_that_runs_out_while_the_daemon_is_down_is_enforced_at_restart(node: Node):
    jid = node.submit(["sleep", "600"], RuntimeMaxUSec=("t", 1_000_000))
    started = node.wait(jid, {"RUNNING"})["StartTime"]
    node.run(["systemctl", "stop", "schedd"])
    unit = f"schedd-job-{jid}.scope"
    # The engine keeps the clock: while it is down the job runs on past its limit...
    node.wait_for(lambda: int(node.run(["date", "+%s%6N"]).stdout) > started + 1_500_000, "the limit to pass")
    assert node.unit_property(unit, "ActiveState") == "active"
    node.run(["systemctl", "start", "schedd"])
    j = node.wait(jid)  # ...and the restarted daemon stops it at once, as a timeout
    assert (j["State"], j["Reason"]) == ("FAILED", "timeout")


def test_a_long_queue_on_disk_answers_as_if_in_memory(node: Node):
    """Held jobs leave memory once durable and pending ones are read after a restart: every one
    still answers on its path, in listings and counts, and a verb on one acts on the live job."""
    spec = {"Command": ["as", ["true"]], "Memory": ["t", 64 << 20], "Hold": ["b", True]}
    (r,) = node.calls([{"member": "SubmitMany", "signature": "aa{sv}", "body": [[spec] * 300]}], user="schedd-alice")
    held = r["ok"][0]
    pending = [node.submit(["sleep", "0.1"], user="schedd-alice") for _ in range(3)]
    path = f"/org/schedd/Schedd1/job/{held[150]}"
    get = ["get-property", "org.schedd.Schedd1", path, "org.schedd.Schedd1.Job", "State"]
    assert node.busctl(*get).stdout == 's "HELD"\n'
    node.run(["systemctl", "restart", "schedd"])
    assert node.busctl(*get).stdout == 's "HELD"\n'
    assert "org.schedd.Schedd1.Job" in node.busctl("introspect", "org.schedd.Schedd1", path).stdout
    props = node.busctl("--json=short", "call", "org.schedd.Schedd1", path, "org.freedesktop.DBus.Properties",
                        "GetAll", "s", "org.schedd.Schedd1.Job").stdout
    assert json.loads(props)["data"][0]["Id"]["data"] == held[150]
    listed = json.loads(node.schedctl("--json", "queue", "--state", "HELD", user="schedd-alice").stdout)
    assert [j["Id"] for j in listed] == held
    pending_jobs = node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                               "org.schedd.Schedd1.Manager", "PendingJobs").stdout.split()[1]
    assert int(pending_jobs) >= 300
    head = node.schedctl("queue", user="schedd-alice").stdout.splitlines()
    assert "more waiting" in head[-1] and len(head) < 60  # the head of the queue, not 300 lines
    for jid in pending:
        assert node.wait(jid)["State"] == "COMPLETED"  # the pending ones were read and ran
    node.schedctl("release", str(held[150]), user="schedd-alice")
    assert node.wait(held[150])["State"] == "COMPLETED"
    r = node.schedctl("cancel", str(held[0]), user="schedd-bob", check=False)
    assert r.returncode != 0 and "belongs to" in r.stderr and node.job(held[0])["State"] == "HELD"
    node.calls([{"member": "Cancel", "signature": "t", "body": [i]} for i in held if i != held[150]],
               user="schedd-alice")
    assert {node.job(i)["State"] for i in held[:150] + held[151:]} == {"CANCELLED"}
