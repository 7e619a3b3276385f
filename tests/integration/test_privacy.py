"""Issue 11 items 9 and 10, through the real system bus as unprivileged users:
who may raise a job's priority, and who sees a job's command line, paths and environment.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import subprocess
import time

from conftest import Node, client

ALICE, BOB = "schedd-alice", "schedd-bob"
JOB = "org.schedd.Schedd1.Job"
SECRET_ARG, SECRET_ENV, SECRET_DIR = "s3cret-arg", "s3cret-env", "s3cret-dir"
PRIVATE = ("Command", "WorkingDirectory", "StdoutPath", "StderrPath")
DENIED = ("Priority: 100 is above 0, the most an ordinary user may ask (max_user_priority); only root or a user "
          "polkit allows org.schedd.Schedd1.set-priority may raise it")


def submit_one(node: Node, spec: dict, user: str | None) -> dict:
    (r,) = node.calls([{"member": "Submit", "signature": "a{sv}", "body": [spec]}], user=user)
    return r


# -- item 9: priority --------------------------------------------------------------------------


def bobs_jobs(node: Node) -> int:
    return len([j for j in list_jobs(node, None) if j["UserName"] == BOB])


def test_an_ordinary_user_may_not_raise_priority(node: Node, users):
    before = bobs_jobs(node)
    r = submit_one(node, {"Command": ["as", ["true"]], "Priority": ["i", 100]}, BOB)
    assert r.get("error") == "org.schedd.Schedd1.Error.AccessDenied" and r["message"] == DENIED, r
    r = submit_one(node, {"Command": ["as", ["true"]], "Priority": ["i", 2**31 - 1]}, BOB)
    assert r.get("error") == "org.schedd.Schedd1.Error.AccessDenied", r
    (r,) = node.calls([{"member": "SubmitMany", "signature": "aa{sv}", "body": [[
        {"Command": ["as", ["true"]], "Hold": ["b", True]},
        {"Command": ["as", ["true"]], "Hold": ["b", True], "Priority": ["i", 100]}]]}], user=BOB)
    assert r.get("error", "").endswith("AccessDenied") and r["message"] == f"spec 1: {DENIED}", r
    # schedctl, with the option and with a JSON job file: the same refusal, said on stderr.
    r = node.schedctl("submit", "--priority", "100", "--", "true", user=BOB, check=False, cwd="/var/tmp/schedd-bob")
    assert r.returncode != 0 and "max_user_priority" in r.stderr, r
    node.run(["sh", "-c", "cat > /var/tmp/schedd-bob/high.json && chmod 644 /var/tmp/schedd-bob/high.json"],
             input='{"command": "true", "priority": 100}')
    r = node.schedctl("submit", "--file", "/var/tmp/schedd-bob/high.json", user=BOB, check=False,
                      cwd="/var/tmp/schedd-bob")
    assert r.returncode != 0 and "Priority: 100 is above 0" in r.stderr, r
    assert bobs_jobs(node) == before  # refused, not clamped: nothing was queued
    # Lowering is anyone's; root may raise.
    low = submit_one(node, {"Command": ["as", ["true"]], "Priority": ["i", -5]}, BOB)
    assert node.wait(low["ok"][0][0])["Priority"] == -5
    high = submit_one(node, {"Command": ["as", ["true"]], "Priority": ["i", 100]}, None)
    assert node.wait(high["ok"][0][0])["Priority"] == 100


RULE = """polkit.addRule(function(action, subject) {
    if (action.id == "%s" && subject.user == "schedd-bob") {
        return polkit.Result.YES;
    }
});
"""


def test_polkit_may_let_a_user_raise_priority(node: Node, users):
    """set-priority alone raises priority but shows nothing; manage-jobs implies set-priority and shows
    others' private keys (a real polkitd, rules granting bob one action at a time)."""
    rules = "/etc/polkit-1/rules.d/50-schedd-test-privacy.rules"
    node.run(["rm", "-f", rules])
    node.run(["systemctl", "start", "polkit"])
    alices = alice_job(node)
    raised: list[int] = []

    def bob_may() -> bool:
        r = submit_one(node, {"Command": ["as", ["true"]], "Priority": ["i", 100], "Hold": ["b", True]}, BOB)
        raised.extend(r.get("ok", [[]])[0][:1])
        return "ok" in r

    try:
        assert not bob_may() and get_job(node, alices, BOB)["Command"] == []
        node.run(["sh", "-c", f"cat > {rules}"], input=RULE % "org.schedd.Schedd1.set-priority")
        node.wait_for(bob_may, "polkitd to load the set-priority rule")  # it watches rules.d itself
        assert node.job(raised[-1])["Priority"] == 100
        assert get_job(node, alices, BOB)["Command"] == []  # ordering is not reading
        node.run(["sh", "-c", f"cat > {rules}"], input=RULE % "org.schedd.Schedd1.manage-jobs")
        # polkit's earlier "no" to bob may be reused for a few seconds (dbus_service.OPERATOR_TTL_S).
        node.wait_for(lambda: get_job(node, alices, BOB)["Command"][-1:] == [f"echo {SECRET_ARG}"],
                      "bob, now an operator, to see alice's command", timeout=30)
        assert bob_may()  # manage-jobs alone (the set-priority rule is gone) implies set-priority
        assert "allowed by polkit" in node.sb.journal("schedd", 80)
    finally:
        node.run(["rm", "-f", rules])
        # Revoked too, once polkitd reloads and the reused answer expires: later tests see bob as nobody.
        node.wait_for(lambda: get_job(node, alices, BOB)["Command"] == [], "bob to be no operator again", timeout=30)
        for jid in (alices, *raised):
            node.manager_call("Cancel", "t", str(jid), check=False)


# -- item 10: private data -----------------------------------------------------------------------


def alice_job(node: Node, **extra) -> int:
    node.run(["install", "-d", "-o", ALICE, "-m", "0755", f"/var/tmp/schedd-alice/{SECRET_DIR}"])
    return node.submit(["sh", "-c", f"echo {SECRET_ARG}"], user=ALICE, Hold=("b", True),
                       WorkingDirectory=("s", f"/var/tmp/schedd-alice/{SECRET_DIR}"),
                       Environment=("as", [f"API_TOKEN={SECRET_ENV}"]),
                       StdoutPath=("s", f"/var/tmp/schedd-alice/{SECRET_DIR}/out-%j.log"), **extra)


def plain(out: str) -> dict:
    return {k: v["data"] for k, v in json.loads(out)["data"][0].items()}


def get_job(node: Node, jid: int, user: str | None) -> dict:
    return plain(node.manager_call("GetJob", "t", str(jid), user=user).stdout)


def list_jobs(node: Node, user: str | None, properties: tuple[str, ...] | None = None) -> list[dict]:
    """ListJobs by busctl; properties: only those (its Properties filter)."""
    flt = ["0"] if properties is None else ["1", "Properties", "as", str(len(properties)), *properties]
    r = node.manager_call("ListJobs", "a{sv}", *flt, user=user)
    return [{k: v["data"] for k, v in row.items()} for row in json.loads(r.stdout)["data"][0]]


def views(node: Node, jid: int, user: str | None) -> dict[str, str]:
    """Every way a local user reads a job: raw text of each answer."""
    path = f"/org/schedd/Schedd1/job/{jid}"
    out = {
        "GetJob": node.manager_call("GetJob", "t", str(jid), user=user).stdout,
        "ListJobs": json.dumps([j for j in list_jobs(node, user) if j["Id"] == jid]),
        "ListJobs Properties": json.dumps([j for j in list_jobs(node, user, PRIVATE) if j["Id"] == jid]),
        "get-property": node.busctl("--json=short", "get-property", "org.schedd.Schedd1", path, JOB, "Command",
                                    user=user).stdout,
        "GetAll": node.busctl("--json=short", "call", "org.schedd.Schedd1", path, "org.freedesktop.DBus.Properties",
                              "GetAll", "s", JOB, user=user).stdout,
        "introspect": node.busctl("introspect", "org.schedd.Schedd1", path, user=user).stdout,
        "GetManagedObjects": node.busctl("--json=short", "call", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                                         "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", user=user).stdout,
        "schedctl show": node.schedctl("show", str(jid), user=user, cwd="/").stdout,
        "schedctl --json show": node.schedctl("--json", "show", str(jid), user=user, cwd="/").stdout,
        "schedctl --json queue": node.schedctl("--json", "queue", user=user, cwd="/").stdout,
    }
    return out


@contextlib.contextmanager
def watcher(node: Node, user: str):
    """A D-Bus client of `user` subscribed to schedd's signals; yields a function reading its lines."""
    p = node.sb.popen([*client("watch_signals.py"), "120"], user=user, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      text=True)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)

    def lines_until(pred, what: str, timeout: float = 20.0) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while not any(pred(line) for line in got):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no signal line for {what} in {timeout}s; got {got}")
            line = p.stdout.readline()
            if not line:
                raise AssertionError(f"the watcher of {user} ended; got {got}")
            got.append(line.strip())
        return got

    try:
        lines_until(lambda line: line == "ready", "the match rule")
        yield lines_until
    finally:
        p.stdin.close()  # the watcher ends on EOF
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_others_see_no_command_paths_or_environment(node: Node, users):
    with watcher(node, BOB) as bob_hears:
        jid = alice_job(node)
        path = f"/org/schedd/Schedd1/job/{jid}"
        heard = bob_hears(lambda line: f'"InterfacesAdded", "path": "/org/schedd/Schedd1", "body": ["{path}"'
                          in line, "InterfacesAdded of alice's job")
    added = [json.loads(line) for line in heard if line.startswith("{") and path in line
             and json.loads(line)["member"] == "InterfacesAdded"][0]
    props = added["body"][1][JOB]
    assert props["Command"] == [] and props["StdoutPath"] == props["WorkingDirectory"] == props["StderrPath"] == ""
    assert props["UserName"] == ALICE and props["State"] == "HELD" and props["Name"] == "sh"
    assert not any(s in "\n".join(heard) for s in (SECRET_ARG, SECRET_ENV, SECRET_DIR))

    bob = views(node, jid, BOB)
    for how, text in bob.items():
        for secret in (SECRET_ARG, SECRET_ENV, SECRET_DIR):
            assert secret not in text, (how, secret, text)
    j = plain(bob["GetJob"])
    assert [j[k] for k in PRIVATE] == [[], "", "", ""]
    (row,) = json.loads(bob["ListJobs Properties"])  # only what was asked, and as redacted
    assert row == {"Id": jid, "Command": [], "WorkingDirectory": "", "StdoutPath": "", "StderrPath": ""}, row
    assert (j["UserName"], j["State"], j["Name"], j["Id"]) == (ALICE, "HELD", "sh", jid)  # the rest is public
    assert json.loads(bob["get-property"]) == {"type": "as", "data": []}
    assert {k: v["data"] for k, v in json.loads(bob["GetAll"])["data"][0].items()}["StdoutPath"] == ""
    assert "Command=\n" in bob["schedctl show"] and "UserName=schedd-alice\n" in bob["schedctl show"]
    assert json.loads(bob["schedctl --json show"])["Command"] == []
    r = node.schedctl("logs", str(jid), user=BOB, check=False, cwd="/")
    assert r.returncode != 0 and "shown only to its owner and root" in r.stderr, r.stderr

    # The owner and root see everything but the environment, which is no property at all.
    for who in (ALICE, None):
        seen = views(node, jid, who)
        for how in ("GetJob", "ListJobs", "ListJobs Properties", "get-property", "GetAll", "introspect",
                    "GetManagedObjects", "schedctl show", "schedctl --json show"):
            assert SECRET_ARG in seen[how], (who, how, seen[how])
        for how, text in seen.items():
            assert SECRET_ENV not in text and "Environment" not in text, (who, how)
        j = plain(seen["GetJob"])
        assert j["StdoutPath"] == f"/var/tmp/schedd-alice/{SECRET_DIR}/out-{jid}.log"
        assert j["WorkingDirectory"] == f"/var/tmp/schedd-alice/{SECRET_DIR}"
    node.manager_call("Cancel", "t", str(jid))


def test_bobs_own_jobs_are_his_to_read(node: Node, users):
    """Redaction is per reader on one connection: bob sees his own job whole, alice's redacted."""
    mine = node.submit(["echo", "bobs-own-arg"], user=BOB, Hold=("b", True))
    theirs = alice_job(node)
    rows = {j["Id"]: j for j in list_jobs(node, BOB)}
    assert rows[mine]["Command"] == ["echo", "bobs-own-arg"] and rows[theirs]["Command"] == []
    objs = json.loads(node.busctl("--json=short", "call", "org.schedd.Schedd1", "/", "org.freedesktop.DBus.ObjectManager",
                                  "GetManagedObjects", user=BOB).stdout)["data"][0]
    assert objs[f"/org/schedd/Schedd1/job/{mine}"][JOB]["Command"]["data"] == ["echo", "bobs-own-arg"]
    assert objs[f"/org/schedd/Schedd1/job/{theirs}"][JOB]["Command"]["data"] == []
    for jid in (mine, theirs):
        node.manager_call("Cancel", "t", str(jid))


def test_private_data_false_shows_command_but_never_environment(node: Node, users):
    conf = node.sb.etc / "schedd.toml"
    before = conf.read_text()
    conf.write_text(before.replace("[jobs]\n", "[jobs]\nprivate_data = false\n", 1))
    try:
        node.run(["systemctl", "restart", "schedd"])
        node.wait_for(lambda: node.unit_property("schedd.service", "ActiveState") == "active", "schedd active")
        with watcher(node, BOB) as bob_hears:
            jid = alice_job(node)
            heard = bob_hears(lambda line: "InterfacesAdded" in line and f"/job/{jid}\"" in line, "InterfacesAdded")
        assert SECRET_ARG in "\n".join(heard) and SECRET_ENV not in "\n".join(heard)
        bob = views(node, jid, BOB)
        for how in ("GetJob", "ListJobs", "get-property", "GetAll", "GetManagedObjects", "schedctl --json show"):
            assert SECRET_ARG in bob[how], (how, bob[how])
        for how, text in bob.items():
            assert SECRET_ENV not in text and "Environment" not in text, how
        node.manager_call("Cancel", "t", str(jid))
    finally:
        conf.write_text(before)
        node.run(["systemctl", "restart", "schedd"])
        node.wait_for(lambda: node.unit_property("schedd.service", "ActiveState") == "active", "schedd active")


def test_the_job_subtree_shows_private_keys_to_their_readers_only(node: Node, users):
    """Each private key read alone through the job's path (each busctl a new connection: the daemon
    finds out who reads before it answers), GetManagedObjects above the manager, and gdbus's
    recursive introspection (which reads every property): secrets for alice and root, none for bob."""
    jid = alice_job(node)
    path = f"/org/schedd/Schedd1/job/{jid}"
    empty = {"Command": [], "WorkingDirectory": "", "StdoutPath": "", "StderrPath": ""}
    for key in PRIVATE:
        bob = json.loads(node.busctl("--json=short", "get-property", "org.schedd.Schedd1", path, JOB, key,
                                     user=BOB).stdout)["data"]
        assert bob == empty[key], key
        for who in (ALICE, None):
            seen = json.loads(node.busctl("--json=short", "get-property", "org.schedd.Schedd1", path, JOB, key,
                                          user=who).stdout)["data"]
            assert seen != empty[key] and (SECRET_ARG in str(seen) or SECRET_DIR in str(seen)), (who, key, seen)
    for at in ("/", "/org/schedd"):
        for who, sees in ((BOB, False), (ALICE, True), (None, True)):
            out = node.busctl("--json=short", "call", "org.schedd.Schedd1", at, "org.freedesktop.DBus.ObjectManager",
                              "GetManagedObjects", user=who).stdout
            objs = json.loads(out)["data"][0]
            assert "/org/schedd/Schedd1" in objs and path in objs, (at, who)
            assert (SECRET_ARG in out) is sees and (SECRET_DIR in out) is sees, (at, who)
            assert SECRET_ENV not in out
    recurse = ["gdbus", "introspect", "--system", "--dest", "org.schedd.Schedd1", "--object-path",
               "/org/schedd/Schedd1", "--recurse"]
    bob = node.run(recurse, user=BOB).stdout
    assert f"node {path} " in bob and "readonly as Command = [];" in bob
    assert not any(s in bob for s in (SECRET_ARG, SECRET_ENV, SECRET_DIR))
    alice = node.run(recurse, user=ALICE).stdout
    assert SECRET_ARG in alice and SECRET_ENV not in alice
    node.manager_call("Cancel", "t", str(jid))


def node_row_of(node: Node) -> dict:
    (r,) = node.calls([{"member": "ListNodes", "signature": "", "body": []}])
    return r["ok"][0][0]


def test_only_root_or_polkits_manage_nodes_may_drain(node: Node, users):
    """DrainNode/ResumeNode: refused to an ordinary user, allowed by polkit's manage-nodes (a real polkitd)."""
    name = node_row_of(node)["Name"]
    rules = "/etc/polkit-1/rules.d/50-schedd-test-nodes.rules"
    node.run(["rm", "-f", rules])
    node.run(["systemctl", "start", "polkit"])

    def bob_drains() -> dict:
        (r,) = node.calls([{"member": "DrainNode", "signature": "ss", "body": [name, "bob's maintenance"]}], user=BOB)
        return r

    try:
        r = bob_drains()
        assert r.get("error") == "org.schedd.Schedd1.Error.AccessDenied", r
        assert "org.schedd.Schedd1.manage-nodes" in r["message"]
        assert node_row_of(node)["State"] == "up"
        node.run(["sh", "-c", f"cat > {rules}"], input=RULE % "org.schedd.Schedd1.manage-nodes")
        node.wait_for(lambda: "ok" in bob_drains(), "polkitd to load the manage-nodes rule")
        row = node_row_of(node)
        assert row["State"] in ("draining", "drained") and row["DrainReason"] == "bob's maintenance", row
        assert row["DrainedBy"] == f"{BOB} on {name}", row
        (r,) = node.calls([{"member": "ResumeNode", "signature": "s", "body": [name]}], user=BOB)
        assert "ok" in r, r
        assert node_row_of(node)["State"] == "up"
        (r,) = node.calls([{"member": "DrainNode", "signature": "ss", "body": ["no-such-node", ""]}])
        assert r.get("error") == "org.schedd.Schedd1.Error.NotFound", r
    finally:
        node.run(["rm", "-f", rules])
        node.manager_call("ResumeNode", "s", name, check=False)
