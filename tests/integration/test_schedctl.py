"""The same checks through schedctl, as a user would type them (inside the test systemd)."""

from __future__ import annotations

import json
import os

from conftest import Node


def submit(node: Node, *args: str, user: str | None = None, cwd: str | None = None) -> int:
    r = node.schedctl("--json", "submit", *args, user=user, cwd=cwd)
    return json.loads(r.stdout)["id"]


def show(node: Node, jid: int, user: str | None = None) -> dict:
    return json.loads(node.schedctl("show", str(jid), "--json", user=user).stdout)


def test_submit_wait_logs(node: Node):
    r = node.schedctl("submit", "--name", "greet", "--", "sh", "-c", "echo hello $SCHEDD_JOB_NAME")
    assert r.stdout.startswith("Submitted job ")
    jid = int(r.stdout.split()[-1])
    w = node.schedctl("wait", str(jid))
    assert w.stdout.strip() == f"job {jid} COMPLETED (success)"
    assert node.schedctl("logs", str(jid)).stdout == "hello greet\n"


def test_submit_resources_become_the_scope(node: Node):
    jid = submit(node, "--mem", "96M", "--cpus", "1", "--", "sleep", "300")
    node.wait(jid, {"RUNNING"})
    assert node.unit_property(f"schedd-job-{jid}.scope", "MemoryMax") == str(96 << 20)
    j = show(node, jid)
    assert (j["Memory"], j["CPUs"], len(j["AssignedCPUs"])) == (96 << 20, 1, 1)
    node.schedctl("cancel", str(jid))
    assert show(node, jid)["State"] == "CANCELLED"


def test_affinity_through_schedctl(node: Node):
    jid = submit(node, "--cpus", "1", "--", "python3", "-c", "import os; print(sorted(os.sched_getaffinity(0)))")
    node.schedctl("wait", str(jid))
    assert node.schedctl("logs", str(jid)).stdout.strip() == str(show(node, jid)["AssignedCPUs"])


def test_oom_and_exit_codes_through_wait(node: Node):
    hog = submit(node, "--mem", "64M", "--", "python3", "-c", "x = bytearray(400 << 20)")
    r = node.schedctl("wait", str(hog), check=False)
    assert r.returncode == 137 and "FAILED (oom-kill)" in r.stdout  # SIGKILL by the OOM killer: 128+9
    three = submit(node, "--", "sh", "-c", "exit 3")
    r = node.schedctl("wait", str(three), check=False)
    assert r.returncode == 3
    j = show(node, three)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "exit-code", 3)


def test_logs_follow_until_the_end(node: Node):
    jid = submit(node, "--", "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done")
    r = node.schedctl("logs", "-f", str(jid), timeout=30)
    assert r.stdout.splitlines() == ["line 1", "line 2", "line 3"]
    assert show(node, jid)["State"] == "COMPLETED"


def test_cancel_through_schedctl_kills_the_job(node: Node):
    jid = submit(node, "--", "sh", "-c", "sleep 1000 & wait")
    node.wait(jid, {"RUNNING"})
    unit = f"schedd-job-{jid}.scope"
    node.schedctl("cancel", str(jid))
    assert show(node, jid)["State"] == "CANCELLED"
    assert node.unit_property(unit, "ActiveState") in ("inactive", "")
    assert "sleep 1000" not in node.run(["ps", "-eo", "args"]).stdout


def test_priority_order_through_schedctl(node: Node):
    ncpu = str(len(os.sched_getaffinity(0)))
    marker = "/run/schedd-test-go2"
    node.run(["rm", "-f", marker])
    blocker = submit(node, "--cpus", ncpu, "--", "sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done")
    node.wait(blocker, {"RUNNING"})
    ids = {n: submit(node, "--cpus", ncpu, "--priority", p, "--name", n, "--", "true")
           for n, p in (("A", "0"), ("B", "10"), ("C", "5"))}
    queue = json.loads(node.schedctl("queue", "--json").stdout)
    assert [j["Name"] for j in queue if j["State"] == "PENDING"] == ["A", "B", "C"]  # listed by id
    node.run(["touch", marker])
    node.schedctl("wait", *map(str, ids.values()))
    starts = {n: show(node, i)["StartTime"] for n, i in ids.items()}
    assert sorted(starts, key=starts.get) == ["B", "C", "A"]


def test_users_through_schedctl(node: Node, users):
    jid = submit(node, "--", "sh", "-c", "id -un; sleep 300", user="schedd-alice", cwd="/var/tmp/schedd-alice")
    node.wait(jid, {"RUNNING"})
    r = node.schedctl("cancel", str(jid), user="schedd-bob", check=False)
    assert r.returncode == 1 and "only its owner or root" in r.stderr
    assert show(node, jid, user="schedd-bob")["State"] == "RUNNING"
    node.wait_for(lambda: node.schedctl("logs", str(jid), user="schedd-alice").stdout, "alice's output")
    assert node.schedctl("logs", str(jid), user="schedd-alice").stdout == "schedd-alice\n"
    r = node.schedctl("logs", str(jid), user="schedd-bob", check=False)
    assert r.returncode != 0  # bob cannot read alice's output: the file is opened with bob's rights
    node.schedctl("cancel", str(jid), user="schedd-alice")
    assert show(node, jid)["State"] == "CANCELLED"


def test_job_file(node: Node):
    node.run(["sh", "-c", "cat > /run/job.json <<'X'\n"
              '{"job_id": "123", "command": "sh -c \'echo from-file $SCHEDD_CPUS\'", '
              '"resources": {"cpu": 1, "memory": "128M"}, "priority": 1, "output": "/run/job-%j.log"}\nX'])
    r = node.schedctl("--json", "submit", "--file", "/run/job.json")
    assert "job ids are assigned by the daemon" in r.stderr
    jid = json.loads(r.stdout)["id"]
    node.schedctl("wait", str(jid))
    j = show(node, jid)
    assert (j["Memory"], j["Priority"], j["StdoutPath"]) == (128 << 20, 1, f"/run/job-{jid}.log")
    assert node.run(["cat", f"/run/job-{jid}.log"]).stdout.startswith("from-file ")


def test_bad_input_through_schedctl(node: Node):
    before = node.daemon_pid_and_restarts()
    for args, words in ((["submit", "--mem", "lots", "--", "true"], "not a size"),
                        (["submit", "--time", "soon", "--", "true"], "not a duration"),
                        (["submit", "--cpus", "4096", "--", "true"], "asks for 4096 CPUs"),
                        (["submit", "--chdir", "/no/such/dir", "--", "true"], "WorkingDirectory"),
                        (["submit", "--after", "99999999", "--", "true"], "job 99999999 does not exist"),
                        (["show", "99999999"], "no job 99999999"),
                        (["submit"], "give the command")):
        r = node.schedctl(*args, check=False)
        assert r.returncode != 0 and words in r.stderr, (args, r.stderr)
        assert r.stdout == ""
    assert node.daemon_pid_and_restarts() == before


def test_status_and_nodes(node: Node):
    st = json.loads(node.schedctl("status", "--json").stdout)
    assert st["Executor"] == "systemd" and st["NodeName"] == "testnode"
    assert st["TotalMemory"] == 4 << 30
    nodes = json.loads(node.schedctl("nodes", "--json").stdout)
    assert [(n["Name"], n["State"], n["Local"]) for n in nodes] == [("testnode", "up", True)]
    assert "testnode*" in node.schedctl("nodes").stdout
