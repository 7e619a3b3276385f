"""The per-user path: `schedd --user` under `systemd --user`, jobs as scopes of the user manager."""

from __future__ import annotations

import json

from conftest import Node


def test_user_daemon_runs_jobs_as_scopes_of_the_user_manager(sandbox_node: Node, users):
    node, alice = sandbox_node, users["schedd-alice"]
    uid = alice.pw_uid
    node.run(["systemctl", "start", f"user@{uid}.service"])
    try:
        node.run(["systemctl", "--user", "start", "schedd"], user="schedd-alice")
        assert node.run(["systemctl", "--user", "show", "-P", "ActiveState", "schedd"],
                        user="schedd-alice").stdout.strip() == "active"
        r = node.run(["busctl", "--user", "--json=short", "--", "call", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                      "org.schedd.Schedd1.Manager", "Submit", "a{sv}", "1", "Command", "as", "3", "sh", "-c",
                      "id -u; grep name=systemd /proc/self/cgroup || grep '^0::' /proc/self/cgroup"],
                     user="schedd-alice")
        jid = json.loads(r.stdout)["data"][0][0]

        def state():
            out = node.run(["busctl", "--user", "--json=short", "call", "org.schedd.Schedd1",
                            "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager", "GetJob", "t", str(jid)],
                           user="schedd-alice").stdout
            j = {k: v["data"] for k, v in json.loads(out)["data"][0].items()}
            return j if j["State"] in ("COMPLETED", "FAILED") else None

        j = node.wait_for(state, "the user job to finish")
        assert j["State"] == "COMPLETED"
        assert j["StdoutPath"] == f"{alice.pw_dir}/.local/state/schedd/jobs/{jid}/output"
        uid_line, cgroup = node.run(["cat", j["StdoutPath"]]).stdout.splitlines()
        assert uid_line == str(uid)
        assert cgroup.endswith(f"/user@{uid}.service/schedd.slice/schedd-job-{jid}.scope")
        executor = node.run(["busctl", "--user", "get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                             "org.schedd.Schedd1.Manager", "Executor"], user="schedd-alice").stdout.strip()
        assert executor == 's "systemd"'
        # And through schedctl --user, which finds the session bus from XDG_RUNTIME_DIR.
        r = node.run(["schedctl", "--user", "--json", "submit", "--", "sh", "-c", "exit 6"], user="schedd-alice",
                     cwd=alice.pw_dir)
        second = json.loads(r.stdout)["id"]
        assert node.run(["schedctl", "--user", "wait", str(second)], user="schedd-alice", check=False).returncode == 6
    finally:
        node.run(["systemctl", "stop", f"user@{uid}.service"], check=False)
