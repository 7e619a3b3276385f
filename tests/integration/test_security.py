"""Who may do what: the bus policy, the job owner rules, configured limits."""

from __future__ import annotations


from conftest import Node, client


def test_non_root_cannot_own_the_bus_name(node: Node, users):
    r = node.run([*client("own_name.py")], user="schedd-alice")
    assert r.stdout.startswith("error org.freedesktop.DBus.Error.AccessDenied"), r.stdout
    assert node.unit_property("schedd.service", "ActiveState") == "active"


def test_job_gets_the_users_supplementary_groups(node: Node, users):
    node.run(["sh", "-c", "getent group schedd-test-extra >/dev/null || groupadd schedd-test-extra; "
                          "usermod -aG schedd-test-extra schedd-alice"])
    jid = node.submit(["id", "-Gn"], user="schedd-alice")
    j = node.wait(jid)
    assert j["State"] == "COMPLETED"
    groups = node.run(["cat", j["StdoutPath"]]).stdout.split()
    assert "schedd-test-extra" in groups and "schedd-alice" in groups
    assert "root" not in groups


def test_only_owner_or_root_may_hold_release_and_cancel(node: Node, users):
    jid = node.submit(["true"], user="schedd-alice", Hold=("b", True))
    for member in ("Release", "Hold", "Cancel", "Requeue"):
        r = node.gdbus_manager(member, str(jid), user="schedd-bob")
        assert "org.schedd.Schedd1.Error.AccessDenied" in r.stderr, (member, r.stderr)
    r = node.sb.run(["gdbus", "call", "--system", "--dest", "org.schedd.Schedd1", "--object-path",
                     f"/org/schedd/Schedd1/job/{jid}", "--method", "org.schedd.Schedd1.Job.Cancel"],
                    user="schedd-bob", check=False)
    assert "AccessDenied" in r.stderr
    assert node.job(jid)["State"] == "HELD"
    node.manager_call("Release", "t", str(jid), user="schedd-alice")
    assert node.wait(jid)["State"] == "COMPLETED"
    r = node.gdbus_manager("Cancel", str(jid))  # root, but the job is done
    assert "InvalidState" in r.stderr


def test_user_cannot_run_in_a_directory_they_cannot_enter(node: Node, users):
    node.run(["sh", "-c", "mkdir -p /var/tmp/root-only/inside && chmod 700 /var/tmp/root-only"])
    specs = [{"Command": ["as", ["pwd"]], "WorkingDirectory": ["s", d]}
             for d in ("/var/tmp/root-only", "/var/tmp/root-only/inside", "/var/tmp/root-only/missing")]
    out = node.calls([{"member": "Submit", "signature": "a{sv}", "body": [s]} for s in specs], user="schedd-alice")
    # Refused with the user's own error, and the same one whether the path exists or not:
    # the root daemon's stat must not tell alice what lies inside a directory she cannot enter.
    assert [o.get("error") for o in out] == ["org.schedd.Schedd1.Error.InvalidArgument"] * 3, out
    assert out[1]["message"].replace("inside", "X") == out[2]["message"].replace("missing", "X")
    assert "Permission denied (user schedd-alice cannot enter /var/tmp/root-only)" in out[1]["message"]
    # Root may; a directory alice can enter is checked as before.
    assert node.wait(node.submit(["pwd"], WorkingDirectory=("s", "/var/tmp/root-only/inside")))["State"] == "COMPLETED"
    (o,) = node.calls([{"member": "Submit", "signature": "a{sv}",
                        "body": [{"Command": ["as", ["pwd"]], "WorkingDirectory": ["s", "/var/tmp/no-such"]}]}],
                      user="schedd-alice")
    assert "No such file or directory" in o["message"], o


def held(n: int) -> list[dict]:
    return [{"Command": ["as", ["true"]], "Hold": ["b", True], "Memory": ["t", 16 << 20]}] * n


def test_queued_jobs_per_user_are_capped_with_a_clear_error(node: Node, users):
    before = node.manager_call("ListJobs", "a{sv}", "0").stdout
    (r,) = node.calls([{"member": "SubmitMany", "signature": "aa{sv}", "body": [held(1001)]}], user="schedd-bob")
    assert r["error"] == "org.schedd.Schedd1.Error.InvalidArgument", r
    assert "at most 1000 per user (max_pending_per_user)" in r["message"]
    assert node.manager_call("ListJobs", "a{sv}", "0").stdout == before  # all-or-nothing: none was queued
    (r,) = node.calls([{"member": "SubmitMany", "signature": "aa{sv}", "body": [held(1000)]}], user="schedd-bob")
    ids = r["ok"][0]
    assert len(ids) == 1000
    (r,) = node.calls([{"member": "Submit", "signature": "a{sv}", "body": held(1)}], user="schedd-bob")
    assert "max_pending_per_user" in r["message"]
    (r,) = node.calls([{"member": "Submit", "signature": "a{sv}", "body": held(1)}], user="schedd-alice")
    assert "ok" in r  # another user is not affected by bob's queue
    out = node.calls([{"member": "Cancel", "signature": "t", "body": [i]} for i in ids + [r["ok"][0][0]]],
                     concurrency=32)
    assert all("ok" in o for o in out)


def test_argv_size_limits(node: Node):
    big = [{"member": "Submit", "signature": "a{sv}", "body": [{"Command": ["as", ["echo", "x" * n]]}]}
           for n in (100000, 100000)]
    big[1]["body"][0]["Environment"] = ["as", ["A=" + "y" * 100000]]
    one, two = node.calls(big)
    assert "ok" in one
    assert two["error"].endswith("InvalidArgument") and "at most 200000 (max_argv_bytes" in two["message"]
    (r,) = node.calls([{"member": "Submit", "signature": "a{sv}", "body": [{"Command": ["as", ["echo", "x" * 140000]]}]}])
    assert "argument 1 is 140001 bytes; the kernel accepts at most 131071" in r["message"]
    assert node.wait(one["ok"][0][0])["State"] == "COMPLETED"


RULE = """polkit.addRule(function(action, subject) {
    if (action.id == "org.schedd.Schedd1.manage-jobs" && subject.user == "schedd-bob") {
        return polkit.Result.YES;
    }
});
"""


def test_polkit_decides_who_else_may_manage_a_job(node: Node, users):
    """A real polkitd: bob gets org.schedd.Schedd1.manage-jobs from a rule, alice does not."""
    rules = "/etc/polkit-1/rules.d/50-schedd-test.rules"
    node.run(["rm", "-f", rules])
    node.run(["systemctl", "start", "polkit"])
    alices = node.submit(["sleep", "300"], user="schedd-alice", Hold=("b", True))
    bobs = node.submit(["sleep", "300"], user="schedd-bob", Hold=("b", True))
    try:
        r = node.gdbus_manager("Cancel", str(alices), user="schedd-bob")
        assert "AccessDenied" in r.stderr  # polkit's default for the action is auth_admin: no agent, no
        node.run(["sh", "-c", f"cat > {rules}"], input=RULE)

        def bob_may() -> bool:
            return node.gdbus_manager("Release", str(alices), user="schedd-bob").returncode == 0

        node.wait_for(bob_may, "polkitd to load the rule")  # it watches rules.d itself
        node.gdbus_manager("Hold", str(alices), user="schedd-bob")
        assert node.gdbus_manager("Cancel", str(alices), user="schedd-bob").returncode == 0
        assert node.job(alices)["State"] == "CANCELLED"
        r = node.gdbus_manager("Cancel", str(bobs), user="schedd-alice")
        assert "AccessDenied" in r.stderr and node.job(bobs)["State"] == "HELD"
        assert "allowed by polkit" in node.sb.journal("schedd", 50)
    finally:
        node.run(["rm", "-f", rules])
        node.manager_call("Cancel", "t", str(bobs), check=False)
