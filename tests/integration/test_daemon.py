"""The single-node daemon on a real systemd: what a user checks with busctl, systemctl and ps."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from conftest import Node, client
from prereq import require


def test_daemon_is_a_notify_service_on_the_system_bus(node: Node):
    assert node.unit_property("schedd.service", "Type") == "notify"
    assert node.unit_property("schedd.service", "ActiveState") == "active"
    assert node.unit_property("schedd.service", "StatusText").startswith("executor systemd")
    props = [json.loads(node.busctl("--json=short", "get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                                    "org.schedd.Schedd1.Manager", p).stdout)
             for p in ("Executor", "NodeName", "TotalCPUs", "TotalMemory")]
    assert [p["data"] for p in props] == ["systemd", "testnode", len(os.sched_getaffinity(0)), 4 << 30]


def test_job_completes_and_its_output_is_in_its_file(node: Node):
    jid = node.submit(["sh", "-c", "echo hello from $SCHEDD_JOB_ID; echo to-stderr >&2"])
    j = node.wait(jid)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("COMPLETED", "success", 0)
    assert j["StdoutPath"] == f"/var/lib/schedd/jobs/{jid}/output"
    out = node.run(["cat", j["StdoutPath"]]).stdout
    assert out.splitlines() == [f"hello from {jid}", "to-stderr"]
    assert j["StartTime"] >= j["SubmitTime"] > 0 and j["EndTime"] >= j["StartTime"]


def test_job_is_a_scope_with_the_requested_memory_max(node: Node):
    jid = node.submit(["sleep", "300"], Memory=("t", 123 << 20))
    node.wait(jid, {"RUNNING"})
    unit = f"schedd-job-{jid}.scope"
    assert node.unit_property(unit, "ActiveState") == "active"
    assert node.unit_property(unit, "MemoryMax") == str(123 << 20)
    assert node.unit_property(unit, "Slice") == "schedd.slice"
    # And the kernel enforces it: the job's memory cgroup carries the limit.
    cg = node.run(["sh", "-c", f"cat /sys/fs/cgroup/memory/schedd.slice/{unit}/memory.limit_in_bytes "
                               f"2>/dev/null || cat /sys/fs/cgroup/schedd.slice/{unit}/memory.max"]).stdout
    assert int(cg) == 123 << 20
    node.manager_call("Cancel", "t", str(jid))
    assert node.wait(jid)["State"] == "CANCELLED"


def test_cpus_1_job_sees_exactly_its_assigned_cpu(node: Node):
    jid = node.submit(["python3", "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], CPUs=("u", 1))
    j = node.wait(jid)
    assert j["State"] == "COMPLETED"
    assert len(j["AssignedCPUs"]) == 1
    assert node.run(["cat", j["StdoutPath"]]).stdout.strip() == str(j["AssignedCPUs"])


def test_two_cpu_job_gets_two_distinct_cpus_and_env(node: Node):
    require(None if len(os.sched_getaffinity(0)) >= 2 else "needs 2 CPUs (the node offers all of this machine's)")
    jid = node.submit(["sh", "-c", 'python3 -c "import os; print(sorted(os.sched_getaffinity(0)))"; '
                                   'echo "$SCHEDD_CPUS $FOO"'], CPUs=("u", 2), Environment=("as", ["FOO=bar=baz"]))
    j = node.wait(jid)
    lines = node.run(["cat", j["StdoutPath"]]).stdout.splitlines()
    assert sorted(j["AssignedCPUs"]) == json.loads(lines[0]) and len(set(j["AssignedCPUs"])) == 2
    assert lines[1] == ",".join(map(str, j["AssignedCPUs"])) + " bar=baz"


def test_memory_hog_ends_failed_oom_kill(node: Node):
    jid = node.submit(["python3", "-c", "x = bytearray(400 << 20); print('survived')"], Memory=("t", 64 << 20))
    j = node.wait(jid)
    assert (j["State"], j["Reason"]) == ("FAILED", "oom-kill")
    assert "survived" not in node.run(["cat", j["StdoutPath"]]).stdout
    assert 0 < j["MemoryPeak"] <= 64 << 20


def test_exit_3_ends_failed_with_exit_code_3(node: Node):
    j = node.wait(node.submit(["sh", "-c", "exit 3"]))
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "exit-code", 3)


def test_killed_by_signal_is_reported_as_signal(node: Node):
    j = node.wait(node.submit(["sh", "-c", "kill -SEGV $$"]))
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "signal", 128 + 11)


def test_missing_program_fails_with_a_message(node: Node):
    j = node.wait(node.submit(["/no/such/program"]))
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "exit-code", 203)
    assert "cannot execute /no/such/program" in node.run(["cat", j["StdoutPath"]]).stdout


def test_cancel_kills_every_process_of_a_running_job(node: Node):
    jid = node.submit(["sh", "-c", "sleep 1000 & sleep 1000 & echo started; wait"])
    node.wait(jid, {"RUNNING"})
    unit = f"schedd-job-{jid}.scope"
    pids = node.wait_for(lambda: [p for p in node.run(["systemd-cgls", "--no-pager", "-u", unit]).stdout.split()
                                  if p.isdigit()] if "sleep" in node.run(
        ["systemd-cgls", "--no-pager", "-u", unit]).stdout else None, "the job's sleeps")
    assert len(pids) >= 3  # gate, sh, two sleeps
    node.manager_call("Cancel", "t", str(jid))
    j = node.job(jid)  # Cancel returns once the processes are gone
    assert (j["State"], j["Reason"]) == ("CANCELLED", "cancelled")
    alive = [p for p in pids if node.run(["kill", "-0", p], check=False).returncode == 0]
    assert alive == []
    assert node.unit_property(unit, "ActiveState") in ("inactive", "")


def test_priority_order_holds_on_a_full_node(node: Node):
    ncpu = len(os.sched_getaffinity(0))
    marker = "/run/schedd-test-go"
    node.run(["rm", "-f", marker])
    blocker = node.submit(["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done"], CPUs=("u", ncpu))
    node.wait(blocker, {"RUNNING"})
    ids = {}
    for name, prio in (("A", 0), ("B", 10), ("C", 5)):
        ids[name] = node.submit(["true"], CPUs=("u", ncpu), Priority=("i", prio), Name=("s", name))
    assert all(node.job(i)["State"] == "PENDING" for i in ids.values())
    node.run(["touch", marker])
    ends = {name: node.wait(i) for name, i in ids.items()}
    assert all(j["State"] == "COMPLETED" for j in ends.values())
    order = sorted(ends, key=lambda n: ends[n]["StartTime"])
    assert order == ["B", "C", "A"]
    # One at a time: each started after the previous one ended.
    assert ends["C"]["StartTime"] >= ends["B"]["EndTime"] and ends["A"]["StartTime"] >= ends["C"]["EndTime"]


def test_held_job_waits_until_released(node: Node):
    jid = node.submit(["true"], Hold=("b", True))
    assert node.job(jid)["State"] == "HELD"
    node.manager_call("Release", "t", str(jid))
    assert node.wait(jid)["State"] == "COMPLETED"


def test_job_runs_as_its_submitter_and_others_cannot_cancel_it(node: Node, users):
    alice, bob = users["schedd-alice"], users["schedd-bob"]
    jid = node.submit(["sh", "-c", "id -u; id -g; sleep 300"], user="schedd-alice")
    node.wait(jid, {"RUNNING"})
    j = node.job(jid)
    assert (j["User"], j["UserName"]) == (alice.pw_uid, "schedd-alice")
    out = node.wait_for(lambda: node.run(["cat", j["StdoutPath"]], check=False).stdout.split() or None,
                        "the job's output")
    assert out == [str(alice.pw_uid), str(alice.pw_gid)]
    st = node.run(["stat", "-c", "%u", j["StdoutPath"]]).stdout.strip()
    assert st == str(alice.pw_uid)  # opened by alice, not by the daemon
    r = node.gdbus_manager("Cancel", str(jid), user="schedd-bob")
    assert r.returncode != 0 and "org.schedd.Schedd1.Error.AccessDenied" in r.stderr
    assert node.job(jid)["State"] == "RUNNING"
    node.manager_call("Cancel", "t", str(jid), user="schedd-alice")
    assert node.job(jid)["State"] == "CANCELLED"
    assert bob.pw_uid != alice.pw_uid


def test_non_root_cannot_run_as_another_user(node: Node, users):
    r = node.gdbus_manager("Submit", "{'Command': <['true']>, 'User': <uint32 0>}", user="schedd-alice")
    assert r.returncode != 0 and "org.schedd.Schedd1.Error.AccessDenied" in r.stderr


def test_user_cannot_write_output_where_they_may_not(node: Node, users):
    j = node.wait(node.submit(["echo", "x"], user="schedd-alice", StdoutPath=("s", "/etc/schedd-test-owned")))
    assert (j["State"], j["ExitCode"]) == ("FAILED", 209)
    assert node.run(["test", "-e", "/etc/schedd-test-owned"], check=False).returncode != 0


@pytest.mark.parametrize("spec, error, words", [
    ("{'Command': <['true']>, 'Bogus': <1>}", "InvalidArgument", "unknown key 'Bogus'"),
    ("{'Command': <'true'>}", "InvalidArgument", "Command: must have D-Bus type 'as'"),
    ("{'Command': <['true']>, 'CPUs': <'two'>}", "InvalidArgument", "CPUs: must have D-Bus type 'u'"),
    ("{'Command': <['true']>, 'CPUs': <uint32 0>}", "InvalidArgument", "CPUs: must be at least 1"),
    ("{'Name': <'x'>}", "InvalidArgument", "Command: required"),
    ("{'Command': <['true']>, 'WorkingDirectory': <'tmp'>}", "InvalidArgument", "is relative"),
    ("{'Command': <['true']>, 'Environment': <['NOEQUALS']>}", "InvalidArgument", "NAME=VALUE"),
    ("{'Command': <['true']>, 'CPUs': <uint32 4096>}", "Unsatisfiable", "asks for 4096 CPUs"),
    ("{'Command': <['true']>, 'Memory': <uint64 1099511627776000>}", "Unsatisfiable", "Memory: asks for"),
    ("{'Command': <['true']>, 'GPUs': <uint32 1>}", "Unsatisfiable", "GPUs"),
])
def test_bad_specs_get_documented_errors_and_the_daemon_stays_up(node: Node, spec, error, words):
    before = node.daemon_pid_and_restarts()
    r = node.gdbus_manager("Submit", spec)
    assert r.returncode != 0
    assert f"org.schedd.Schedd1.Error.{error}" in r.stderr and words in r.stderr, r.stderr
    assert node.daemon_pid_and_restarts() == before


def test_busctl_shows_errors_for_unknown_ids_and_wrong_states(node: Node):
    before = node.daemon_pid_and_restarts()
    r = node.manager_call("Cancel", "t", "999999", check=False)
    assert r.returncode != 0 and "no job 999999" in r.stderr
    assert "Error.NotFound" in node.gdbus_manager("GetJob", "999999").stderr
    done = node.wait(node.submit(["true"]))
    r = node.gdbus_manager("Cancel", str(done["Id"]))
    assert "org.schedd.Schedd1.Error.InvalidState" in r.stderr and "already COMPLETED" in r.stderr
    r = node.busctl("call", "org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager", "Cancel",
                    "s", "seven", check=False)
    assert r.returncode != 0 and "Cancel takes (t)" in r.stderr
    assert node.daemon_pid_and_restarts() == before


def test_introspection_shows_manager_and_job_objects(node: Node):
    jid = node.submit(["true"])
    node.wait(jid)
    tree = node.busctl("tree", "org.schedd.Schedd1").stdout
    assert "/org/schedd/Schedd1" in tree and f"/org/schedd/Schedd1/job/{jid}" in tree
    intro = node.busctl("introspect", "org.schedd.Schedd1", f"/org/schedd/Schedd1/job/{jid}").stdout
    for member in ("org.schedd.Schedd1.Job", ".Cancel", ".State", ".ExitCode", ".AssignedCPUs", ".MemoryPeak"):
        assert member in intro
    intro = node.busctl("introspect", "org.schedd.Schedd1", "/org/schedd/Schedd1").stdout
    for member in (".Submit", ".SubmitMany", ".ListJobs", ".ListNodes", ".JobStateChanged", ".PendingJobs"):
        assert member in intro
    state = node.busctl("get-property", "org.schedd.Schedd1", f"/org/schedd/Schedd1/job/{jid}",
                        "org.schedd.Schedd1.Job", "State").stdout.strip()
    assert state == 's "COMPLETED"'


def test_job_state_changes_are_signalled(node: Node):
    mon = node.sb.popen(["busctl", "--json=short", "--match",
                         "type='signal',interface='org.schedd.Schedd1.Manager',member='JobStateChanged'",
                         "monitor"], stdout=subprocess.PIPE, text=True)

    def states_of(jid: int) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not set(seen) & {"COMPLETED", "FAILED"}:
            line = mon.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if msg.get("member") == "JobStateChanged" and msg["payload"]["data"][0] == jid:
                seen.append(msg["payload"]["data"][2])
        return seen

    try:
        # The monitor is subscribed once it reports a job of ours; only then watch the real one.
        node.wait_for(lambda: states_of(node.submit(["true"])), "the monitor to see signals")
        jid = node.submit(["sh", "-c", "exit 4"])
        assert states_of(jid) == ["PENDING", "RUNNING", "FAILED"]
    finally:
        mon.terminate()
        mon.wait(5)


def test_a_burst_of_concurrent_submits_is_answered_in_full(node: Node):
    """8 connections x 120 calls in flight: every caller gets its id, each id is a durable job, no restart."""
    before = node.daemon_pid_and_restarts()
    r = node.run([*client("burst_client.py"), "8", "120"],
                 timeout=120)
    ids = json.loads(r.stdout)
    assert len(ids) == len(set(ids)) == 960
    for jid in (min(ids), max(ids), ids[len(ids) // 2]):
        assert node.job(jid)["State"] == "CANCELLED"
    assert node.daemon_pid_and_restarts() == before


def _members(xml: str, iface: str) -> set[tuple]:
    import xml.etree.ElementTree as ET

    body = xml[xml.index("<node"):]
    el = next(i for i in ET.fromstring(body).iter("interface") if i.get("name") == iface)
    out = set()
    for m in el:
        args = tuple((a.get("direction", "out"), a.get("type")) for a in m.findall("arg"))
        out.add((m.tag, m.get("name"), m.get("type"), m.get("access"), args))
    return out


def test_shipped_introspection_xml_matches_the_daemon(node: Node):
    from sandbox import REPO

    jid = node.submit(["true"])
    node.wait(jid)
    for iface, path in (("org.schedd.Schedd1.Manager", "/org/schedd/Schedd1"),
                        ("org.schedd.Schedd1.Job", f"/org/schedd/Schedd1/job/{jid}")):
        live = node.busctl("--xml-interface", "introspect", "org.schedd.Schedd1", path).stdout
        shipped = (REPO / "dbus" / f"{iface}.xml").read_text()
        assert _members(live, iface) == _members(shipped, iface)
    shipped = (REPO / "dbus/org.schedd.Schedd1.Manager.xml").read_text()
    manager = {(t, n) for t, n, *_ in _members(shipped, "org.schedd.Schedd1.Manager")}
    for m in ("Submit", "SubmitMany", "Cancel", "Hold", "Release", "Suspend", "Resume", "Requeue", "GetJob",
              "ListJobs", "ListNodes"):
        assert ("method", m) in manager
    assert ("signal", "JobStateChanged") in manager
    sigs = {n: args for t, n, _, _, args in _members(shipped, "org.schedd.Schedd1.Manager") if t == "method"}
    assert sigs["Submit"] == (("in", "a{sv}"), ("out", "(to)"))
    assert sigs["SubmitMany"] == (("in", "aa{sv}"), ("out", "at"))


def _job_call(node: Node, path: str, iface: str, member: str, *args: str, user: str | None = None):
    """gdbus, which prints the D-Bus error's name, on any object path."""
    return node.sb.run(["gdbus", "call", "--system", "--dest", "org.schedd.Schedd1", "--object-path", path,
                        "--method", f"{iface}.{member}", *args], user=user, check=False)


def test_every_job_path_answers_as_its_object_did(node: Node, users):
    """Job paths are resolved when asked (no object exported per job): each still answers Properties,
    Introspect, Peer and Cancel (with the caller's rights), and an id that is no job answers as a path
    with no object does -- for every job of a queue, not only the last one submitted."""
    from schedd.protocol import JOB_PROPERTIES

    alice = "schedd-alice"
    ids = [node.submit(["true"], user=alice, Hold=("b", True)) for _ in range(3)]
    for jid in ids:
        path = f"/org/schedd/Schedd1/job/{jid}"
        got = json.loads(node.busctl("--json=short", "call", "org.schedd.Schedd1", path,
                                     "org.freedesktop.DBus.Properties", "GetAll", "s", "org.schedd.Schedd1.Job").stdout)
        props = {k: v["data"] for k, v in got["data"][0].items()}
        assert set(props) == set(JOB_PROPERTIES) and (props["Id"], props["State"]) == (jid, "HELD")
        state = node.busctl("get-property", "org.schedd.Schedd1", path, "org.schedd.Schedd1.Job", "State")
        assert state.stdout.strip() == 's "HELD"'
        intro = node.busctl("introspect", "org.schedd.Schedd1", path).stdout
        for member in ("org.schedd.Schedd1.Job", ".Cancel", ".State", "org.freedesktop.DBus.Peer"):
            assert member in intro
        node.busctl("call", "org.schedd.Schedd1", path, "org.freedesktop.DBus.Peer", "Ping")
    path = f"/org/schedd/Schedd1/job/{ids[1]}"
    r = _job_call(node, path, "org.freedesktop.DBus.Properties", "Set", "org.schedd.Schedd1.Job", "State",
                  "<'RUNNING'>")
    assert "org.freedesktop.DBus.Error.PropertyReadOnly" in r.stderr, r
    # The whole tree, as desktop tools walk it.
    tree = node.busctl("tree", "org.schedd.Schedd1").stdout
    assert all(f"/org/schedd/Schedd1/job/{jid}" in tree for jid in ids)
    recurse = node.run(["gdbus", "introspect", "--system", "--dest", "org.schedd.Schedd1", "--object-path",
                        "/org/schedd/Schedd1", "--recurse"]).stdout
    assert all(f"node /org/schedd/Schedd1/job/{jid} " in recurse for jid in ids), recurse[:2000]
    assert "readonly s State = 'HELD';" in recurse
    # Cancel on the job's own path: the owner may, another user may not.
    r = _job_call(node, path, "org.schedd.Schedd1.Job", "Cancel", user="schedd-bob")
    assert "org.schedd.Schedd1.Error.AccessDenied" in r.stderr, r
    assert node.job(ids[1])["State"] == "HELD"
    r = _job_call(node, path, "org.schedd.Schedd1.Job", "Cancel", user=alice)
    assert r.returncode == 0, r.stderr
    assert node.job(ids[1])["State"] == "CANCELLED"
    state = node.busctl("get-property", "org.schedd.Schedd1", path, "org.schedd.Schedd1.Job", "State")
    assert state.stdout.strip() == 's "CANCELLED"'  # a finished job's path stays
    # No such job: as before, no object there.
    nothing = "/org/schedd/Schedd1/job/987654321"
    r = _job_call(node, nothing, "org.freedesktop.DBus.Properties", "Get", "org.schedd.Schedd1.Job", "State")
    assert "org.freedesktop.DBus.Error.UnknownObject" in r.stderr, r
    r = _job_call(node, nothing, "org.schedd.Schedd1.Job", "Cancel")
    assert "org.freedesktop.DBus.Error.UnknownMethod" in r.stderr, r
    assert "org.schedd.Schedd1.Job" not in node.busctl("introspect", "org.schedd.Schedd1", nothing).stdout
    for jid in ids:
        node.manager_call("Cancel", "t", str(jid), check=False)
