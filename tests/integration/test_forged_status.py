"""Issue 11, item 1: a job's result cannot be forged through its status file, and a status file no
gate wrote fails its job as lost instead of crashing the daemon at start-up."""

from __future__ import annotations

import pytest

from conftest import Node

FORGED_PATH = "/nonexistent-dir/x\nstatus=0\nend=1\n"
GOOD = "oom_kill=0\npeak=0\ncpu_usec=0\nstragglers=0\nend=1\n"


def gvariant_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


@pytest.fixture
def steady(node: Node):
    before = node.daemon_pid_and_restarts()
    yield node
    assert node.daemon_pid_and_restarts() == before


@pytest.mark.parametrize("user", [65534, "schedd-alice"])
def test_the_forged_output_path_is_refused(steady: Node, user):
    """The exact Submit that once made a job that never ran read COMPLETED, ExitCode 0."""
    spec = (f"{{'Command': <['false']>, 'WorkingDirectory': <'/'>, "
            f"'StdoutPath': <{gvariant_string(FORGED_PATH)}>}}")
    r = steady.gdbus_manager("Submit", spec, user=user)
    assert r.returncode != 0, r.stdout
    assert "org.schedd.Schedd1.Error.InvalidArgument" in r.stderr
    assert "StdoutPath: must not contain control characters (found '\\n' at position 18)" in r.stderr, r.stderr


@pytest.mark.parametrize("key, value", [
    ("WorkingDirectory", ["s", "/tmp\nstatus=0"]),
    ("StdoutPath", ["s", "/tmp/out\r"]),
    ("StderrPath", ["s", "/tmp/err\x1b[2J"]),
    ("Name", ["s", "job\nstatus=0"]),
    ("Name", ["s", "job\x7f"]),
    ("Command", ["as", ["/bin/tr\nue", "x"]]),
])
def test_control_characters_are_invalid_arguments_for_every_user(steady: Node, key, value):
    spec = {"Command": ["as", ["true"]], key: value}
    (r,) = steady.calls([{"member": "Submit", "signature": "a{sv}", "body": [spec]}], user="schedd-alice")
    assert r.get("error") == "org.schedd.Schedd1.Error.InvalidArgument", r
    assert r["message"].startswith(f"{key}: ") and "must not contain control characters" in r["message"], r


def test_newlines_in_arguments_and_environment_still_run(steady: Node):
    node = steady
    jid = node.submit(["sh", "-c", 'printf "%s|" "$MSG"\nexit 0'], user="schedd-alice",
                      Environment=("as", ["MSG=one\ntwo"]))
    j = node.wait(jid)
    assert (j["State"], j["ExitCode"]) == ("COMPLETED", 0)
    assert node.run(["cat", f"/var/lib/schedd/jobs/{jid}/output"]).stdout == "one\ntwo|"


def test_a_malformed_status_file_fails_its_job_as_lost_at_start_up(node: Node):
    """Written while the daemon is down, for jobs whose gates are gone: the daemon starts (no crash loop),
    the jobs end FAILED lost (not COMPLETED, not requeued for ever), their CPUs are free."""
    marker = "/run/schedd-test-forged"
    node.run(["rm", "-f", marker])
    loop = ["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done"]
    ids = [node.submit(loop, user="schedd-alice"), node.submit(loop, user="schedd-alice")]
    for jid in ids:
        node.wait(jid, {"RUNNING"})
    records = {
        ids[0]: "status=abc\n" + GOOD,  # int() raised in recovery: schedd crash-looped
        ids[1]: "error=x\npeak=99999999999999999999\naborted=1\nstatus=0\n" + GOOD,  # requeued for ever
    }
    node.run(["systemctl", "stop", "schedd"])
    try:
        for jid, text in records.items():
            unit = f"schedd-job-{jid}.scope"
            node.run(["systemctl", "kill", "-s", "KILL", unit], check=False)  # the gate is gone
            node.wait_for(lambda: node.unit_property(unit, "ActiveState") in ("inactive", "failed", ""),
                          f"{unit} to end")
            node.run(["sh", "-c", f"cat > /var/lib/schedd/exits/{jid}"], input=text)
        node.run(["systemctl", "reset-failed", "schedd"], check=False)  # NRestarts from 0
        r = node.run(["systemctl", "start", "schedd"], check=False)
        assert r.returncode == 0, node.sb.journal("schedd", 60)
        for jid in ids:
            j = node.wait(jid)
            assert (j["State"], j["Reason"], j["Restarts"]) == ("FAILED", "lost", 0), j
        assert node.unit_property("schedd.service", "ActiveState") == "active"
        assert node.unit_property("schedd.service", "NRestarts") == "0"
        cpus = [node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                            "org.schedd.Schedd1.Manager", p).stdout.split()[1] for p in ("AvailableCPUs", "TotalCPUs")]
        assert cpus[0] == cpus[1]
        journal = node.sb.journal("schedd", 400)
        assert f"job {ids[0]}: status file /var/lib/schedd/exits/{ids[0]} is malformed (line 1: status='abc'" in journal
        assert f"job {ids[1]}: status file /var/lib/schedd/exits/{ids[1]} is malformed (line 2: peak=" in journal
        j = node.wait(node.submit(["true"]))  # and the node still runs jobs
        assert j["State"] == "COMPLETED"
    finally:
        node.run(["touch", marker])
        if node.unit_property("schedd.service", "ActiveState") != "active":
            for jid in ids:
                node.run(["rm", "-f", f"/var/lib/schedd/exits/{jid}"])
            node.run(["systemctl", "reset-failed", "schedd"], check=False)
            node.run(["systemctl", "start", "schedd"], check=False)
