"""The state directory on a shared machine (issue 11): private files, a requeue across a restart, a
full disk, and the sync before every Submit's answer."""

from __future__ import annotations

import os
import re
import secrets
import sys

import pytest

from conftest import CONFIG, Node
from sandbox import REPO, Sandbox

STATE = "/var/lib/schedd"
NO_SPACE = "org.schedd.Schedd1.Error.NoSpace"


def manager_prop(node: Node, prop: str) -> int:
    return int(node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager",
                           prop).stdout.split()[1])


def submit_call(spec: dict) -> dict:
    return {"member": "Submit", "signature": "a{sv}", "body": [spec]}


def test_no_user_reads_another_users_secrets_under_the_state_directory(node: Node, users):
    token = f"tok-{secrets.token_hex(12)}"
    done = node.submit(["sh", "-c", 'echo "$API_TOKEN"'], user="schedd-alice",
                       Environment=("as", [f"API_TOKEN={token}"]))
    running = node.submit(["sleep", "300"], user="schedd-alice", Environment=("as", [f"API_TOKEN={token}"]))
    try:
        assert node.wait(done)["State"] == "COMPLETED"
        node.wait(running, {"RUNNING"})
        # alice's own output is hers to read (through the state directory), bob's is not.
        out = f"{STATE}/jobs/{done}/output"
        assert node.run(["cat", out], user="schedd-alice").stdout.strip() == token
        files = node.run(["find", STATE, "-type", "f", "!", "-user", "schedd-bob"]).stdout.split()  # not his own
        for name in ("schedd.db", "schedd.db-wal", "schedd.db-shm"):
            assert f"{STATE}/{name}" in files
        assert any(f.startswith(f"{STATE}/exits/") for f in files)
        r = node.run(["grep", "-r", "-l", "-a", token, STATE], user="schedd-bob", check=False)
        assert r.stdout == "", f"bob found alice's token in {r.stdout}"
        for f in files:
            r = node.run(["sh", "-c", 'exec cat -- "$1" >/dev/null', "sh", f], user="schedd-bob", check=False)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (f, r)
        assert node.run(["ls", f"{STATE}/exits"], user="schedd-bob", check=False).returncode != 0
        assert node.run(["ls", f"{STATE}/jobs"], user="schedd-bob", check=False).returncode != 0  # nothing to list
        modes = dict(line.split() for line in node.run(
            ["stat", "-c", "%n %a", f"{STATE}/schedd.db", f"{STATE}/schedd.db-wal", f"{STATE}/schedd.db-shm",
             f"{STATE}/exits", f"{STATE}/jobs/{done}"]).stdout.splitlines())
        assert set(modes.values()) == {"600", "700"}, modes
        assert node.run(["stat", "-c", "%U", f"{STATE}/jobs/{done}"]).stdout.strip() == "schedd-alice"
        # The secret is there for root (the daemon's own store): the test would prove nothing otherwise.
        assert node.run(["grep", "-r", "-l", "-a", token, STATE]).stdout.strip() != ""
    finally:
        node.manager_call("Cancel", "t", str(running), check=False)


def test_a_requeued_job_stays_pending_across_a_restart_and_runs_again(node: Node):
    cpus = manager_prop(node, "TotalCPUs")
    again, free = "/run/schedd-test-requeue-again", "/run/schedd-test-requeue-free"
    node.run(["rm", "-f", again, free])
    jid = node.submit(["sh", "-c", f"while [ ! -e {again} ]; do sleep 0.02; done"], CPUs=("u", cpus),
                      StdoutPath=("s", "/dev/null"))
    node.wait(jid, {"RUNNING"})
    blocker = node.submit(["sh", "-c", f"while [ ! -e {free} ]; do sleep 0.02; done"], CPUs=("u", cpus),
                          Priority=("i", 10), StdoutPath=("s", "/dev/null"))
    assert node.job(blocker)["State"] == "PENDING"  # the node is full
    node.manager_call("Requeue", "t", str(jid))  # its run ends by SIGTERM; the blocker takes the node
    node.wait(blocker, {"RUNNING"})
    j = node.job(jid)
    assert (j["State"], j["Restarts"]) == ("PENDING", 1), j
    node.run(["touch", again])  # its next run succeeds
    node.run(["systemctl", "restart", "schedd"])
    j = node.job(jid)
    assert (j["State"], j["Reason"], j["Restarts"]) == ("PENDING", "requeued", 1), j  # not its last run's end
    node.run(["touch", free])
    j = node.wait(jid)
    assert (j["State"], j["ExitCode"], j["Restarts"]) == ("COMPLETED", 0, 1), j


def test_every_submit_is_synced_to_disk_before_its_answer(node: Node):
    """Trace the daemon around one Submit: the WAL frame holding the job is written, then fdatasync'd
    (or fsync'd), and only then is the answer written to the bus. Fails if the sync is dropped
    (synchronous=OFF or NORMAL) or moved after the reply."""
    pid = node.unit_property("schedd.service", "MainPID")
    marker = f"durable-{secrets.token_hex(8)}"
    log = "/run/schedd-test-strace.out"
    node.run(["rm", "-f", log, "/run/schedd-test-strace.pid"])
    tracer = node.sb.popen(["sh", "-c", 'echo $$ > /run/schedd-test-strace.pid; exec strace -f -tt -y -s 65536 '
                            '-e trace=fsync,fdatasync,pwrite64,write,writev,sendmsg,sendto '
                            f'-o {log} -p {pid}'],
                           stdout=open(os.devnull, "wb"), stderr=open(os.devnull, "wb"))
    try:
        # strace has attached once the daemon's threads show it as their tracer.
        node.wait_for(lambda: node.run(["sh", "-c", f"grep -h TracerPid /proc/{pid}/task/*/status"]).stdout.split()
                      .count("0") == 0, "strace to attach")
        jid = node.submit(["echo", marker], StdoutPath=("s", "/dev/null"))
    finally:
        node.run(["sh", "-c", "kill -INT $(cat /run/schedd-test-strace.pid)"], check=False)
        tracer.wait(20)
    lines = node.run(["cat", log]).stdout.splitlines()
    job_path = f"/org/schedd/Schedd1/job/{jid}"

    def first(pred, after: int = -1) -> int:
        return next((i for i, line in enumerate(lines) if i > after and pred(line)), -1)

    frame = first(lambda ln: ln.split()[2].startswith("pwrite64(") and "schedd.db-wal>" in ln and marker in ln)
    synced = first(lambda ln: re.search(r" f(data)?sync\(\d+</var/lib/schedd/schedd\.db(-wal)?>", ln) is not None,
                   after=frame)
    reply = first(lambda ln: re.search(r" (sendmsg|sendto|write|writev)\(\d+<(socket|UNIX)", ln) is not None
                  and job_path in ln)
    detail = "\n".join(ln[:300] for ln in lines if "schedd.db" in ln or job_path in ln)
    assert frame >= 0, f"the job's row was never written to the WAL\n{detail}"
    assert reply >= 0, f"no answer carrying {job_path} on the bus\n{detail}"
    assert 0 <= synced < reply, f"the WAL was not synced between the job's row and its answer\n{detail}"
    assert node.wait(jid)["State"] == "COMPLETED"


# -- a full disk -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_node(users):
    """A node whose state directory is a 3 MiB tmpfs, mounted inside the sandbox before schedd starts."""
    sb = Sandbox(f"full-{os.getpid()}")
    sb.prepare(config=CONFIG)
    sb.boot()
    try:
        sb.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0711", "schedd-state", STATE])
        sb.run(["systemctl", "start", "schedd"], timeout=60)
        yield Node(sb)
    finally:
        artifacts = REPO / "artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "schedd-full-journal.txt").write_text(sb.journal("schedd", 2000))
        sb.stop()
        sb.cleanup()


def test_a_full_disk_gives_no_space_keeps_the_daemon_and_loses_nothing_acknowledged(small_node: Node):
    node = small_node
    pid = node.unit_property("schedd.service", "MainPID")
    quiet = {"StdoutPath": ["s", "/dev/null"]}
    acked: dict[int, str] = {}
    for _ in range(3):
        jid = node.calls([submit_call({"Command": ["as", ["true"]], **quiet})])[0]["ok"][0][0]
        acked[jid] = "COMPLETED"
    for jid in acked:
        node.wait(jid)
    held = node.submit(["true"], Hold=("b", True), StdoutPath=("s", "/dev/null"))
    acked[held] = "HELD"
    node.run(["sh", "-c", f"dd if=/dev/zero of={STATE}/filler bs=4k 2>/dev/null; true"])
    big = {"Command": ["as", ["true"]], "Hold": ["b", True],
           "Environment": ["as", ["PAD=" + "x" * 90_000, "PAD2=" + "y" * 90_000]], **quiet}
    # The WAL may still have room for a few: those are acknowledged, and must last.
    out = node.calls([submit_call(big)] * 40)
    refusals = [r for r in out if "error" in r]
    acked.update({r["ok"][0][0]: "HELD" for r in out if "ok" in r})
    assert refusals, "the full state directory never refused a Submit"
    assert {r["error"] for r in refusals} == {NO_SPACE}, refusals
    refusal = refusals[0]
    assert refusal["message"] == (f"cannot record the job: the state directory {STATE} is full "
                                  "(No space left on device); free space there"), refusal
    # A change nobody can undo (the job is cancelled in memory either way) while the disk is full.
    r = node.calls([{"member": "Cancel", "signature": "t", "body": [held]}])[0]
    assert r.get("error") in (None, NO_SPACE), r
    assert "error" not in r or "the change is in effect and is recorded once there is room" in r["message"], r
    acked[held] = "CANCELLED"
    assert node.daemon_pid_and_restarts() == (pid, "0")  # alive, never restarted
    assert node.job(held)["State"] == "CANCELLED"
    node.run(["rm", f"{STATE}/filler"])

    def row_state(jid: int) -> str:
        return node.run(["python3", "-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("
                         "'SELECT state FROM jobs WHERE id = ?', (int(sys.argv[2]),)).fetchone()[0])",
                         f"{STATE}/schedd.db", str(jid)]).stdout.strip()

    node.wait_for(lambda: row_state(held) == "CANCELLED", "the failed write to land once space returned", timeout=30)
    after = node.submit(["true"], StdoutPath=("s", "/dev/null"))
    assert node.wait(after)["State"] == "COMPLETED"
    acked[after] = "COMPLETED"
    node.run(["systemctl", "restart", "schedd"])
    assert {jid: node.job(jid)["State"] for jid in acked} == acked
    print(f"[disk-full] {len(acked)} acknowledged jobs all kept; refusal: {refusal['message']}", file=sys.stderr)
