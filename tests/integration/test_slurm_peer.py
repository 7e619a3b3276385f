"""A Slurm cluster as a federation peer: Debian's real Slurm 22.05 (slurmctld, slurmd, slurmrestd with
JWT; tests/slurmcluster.py) in one test systemd, a schedd node naming it `[[peers]] kind = "slurm"` in
another. Jobs go there with Node=hpc (or `any`) and run in Slurm as the submitting user; schedctl
mirrors their states, exit codes and output; Slurm's own squeue is the witness.
"""

from __future__ import annotations

import json
import shutil
import os
import time
from pathlib import Path

import pytest
from conftest import CONFIG, USERS, Node, free_port, running_schedd, write_tokens

from prereq import require
from sandbox import REPO, Sandbox, wait_for
from slurmcluster import SlurmCluster, missing

ALICE, BOB = USERS
PEER = "hpc"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


@pytest.fixture(scope="module")
def slurm(users):
    require(missing())
    c = SlurmCluster(f"slurm-{os.getpid()}")
    try:
        c.start()
        yield c
    finally:
        logs = c.logs() if c.sb.pid else ""
        (REPO / "artifacts").mkdir(exist_ok=True)
        (REPO / "artifacts" / "slurm-peer-slurm-logs.txt").write_text(logs)
        c.stop()


@pytest.fixture(scope="module")
def node(slurm: SlurmCluster):
    port = free_port()
    sb = Sandbox(f"slurm-origin-{os.getpid()}")
    # The test users are system accounts (useradd --system): uid_min lets them through, not uid 1.
    sb.prepare(config=CONFIG + '[federation]\nuid_min = 100\n' + f'[http]\nlisten = "127.0.0.1:{port}"\ntoken_file = "/etc/schedd/token"\n'
                               'heartbeat_interval = "500ms"\n'
                               f'[[peers]]\nname = "{PEER}"\nkind = "slurm"\nurl = "{slurm.url}"\n'
                               'jwt_key_file = "/etc/schedd/slurm-jwt.key"\nquery_user = "slurm"\n')
    write_tokens(sb)
    key = sb.etc / "slurm-jwt.key"
    shutil.copyfile(slurm.key_path, key)
    key.chmod(0o600)
    with running_schedd(sb, "schedd-slurm-peer-journal.txt"):
        n = Node(sb)
        wait_for(lambda: peer_row(n).get("State") == "up", "the Slurm peer is up", 30)
        yield n


def peer_row(node: Node) -> dict:
    rows = json.loads(node.schedctl("--json", "nodes").stdout)
    rows = rows.get("nodes", rows) if isinstance(rows, dict) else rows
    return next((r for r in rows if r.get("Name") == PEER), {})


def show(node: Node, job_id: int, user: str = ALICE) -> dict:
    return json.loads(node.schedctl("--json", "show", str(job_id), user=user).stdout)


def submit(node: Node, *cmd: str, user: str = ALICE, opts: tuple[str, ...] = ("--node", PEER)) -> int:
    r = node.schedctl("--json", "submit", *opts, "--", *cmd, user=user, cwd=f"/var/tmp/{user}")
    return int(json.loads(r.stdout)["id"])


def wait_state(node: Node, job_id: int, states: set[str], timeout: float = 60.0, user: str = ALICE) -> dict:
    last: dict = {}

    def check():
        nonlocal last
        last = show(node, job_id, user)
        return last if last["State"] in states else None

    try:
        return wait_for(check, f"job {job_id} in {states}", timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}; last {json.dumps(last)}\n{node.sb.journal('schedd', 40)}") from None


def slurm_jobs_of(slurm: SlurmCluster, origin_id: int) -> list[tuple[int, str]]:
    """(Slurm id, state) of every Slurm job that is a copy of schedd job origin_id (by its tag)."""
    r = slurm.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i|%T|%k"])
    out = []
    for line in r.stdout.splitlines():
        jid, state, comment = line.split("|", 2)
        if comment.endswith(f":{origin_id}:1") or f":{origin_id}:" in comment:
            if comment.split(":")[2] == str(origin_id):
                out.append((int(jid), state))
    return out


def test_the_slurm_peer_is_listed_with_its_capacity(node: Node, slurm: SlurmCluster):
    row = peer_row(node)
    assert row["State"] == "up" and row["URL"] == slurm.url and not row["Local"]
    assert row["TotalCPUs"] == os.cpu_count()
    assert row["TotalMemory"] == slurm.memory_mb << 20
    status, body, _ = _http(node, "/metrics")
    assert status == 200 and f'schedd_peer_up{{peer="{PEER}"}} 1.0' in body
    assert f'schedd_peer_cpus{{peer="{PEER}"}} {float(os.cpu_count())}' in body
    status, body, _ = _http(node, "/ui/state")  # the dashboard's nodes
    nodes = json.loads(body)["nodes"]
    hpc = next(n for n in nodes if n["Name"] == PEER)
    assert status == 200 and hpc["State"] == "up" and hpc["TotalCPUs"] == os.cpu_count()


def _http(node: Node, path: str):
    import urllib.request

    cfg = (node.sb.etc / "schedd.toml").read_text()
    port = cfg.split('listen = "127.0.0.1:')[1].split('"')[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.status, r.read().decode(), dict(r.headers)


def test_a_job_runs_in_slurm_as_its_user_and_is_mirrored(node: Node, slurm: SlurmCluster):
    jid = submit(node, "sh", "-c", "echo hello from $(id -un); sleep 3")
    running = wait_state(node, jid, {"RUNNING"} | TERMINAL)
    assert running["State"] == "RUNNING", running
    copies = slurm_jobs_of(slurm, jid)
    assert len(copies) == 1
    state, user, _name = slurm.squeue()[copies[0][0]]
    assert user == ALICE and state == "RUNNING"
    done = wait_state(node, jid, TERMINAL)
    assert (done["State"], done["ExitCode"], done["Reason"]) == ("COMPLETED", 0, "success"), done
    assert done["StartTime"] > 0 and done["EndTime"] >= done["StartTime"]
    logs = node.schedctl("logs", str(jid), user=ALICE).stdout
    assert logs == f"hello from {ALICE}\n"
    assert slurm.squeue()[copies[0][0]][0] == "COMPLETED"


def test_exit_3_reads_failed_3(node: Node):
    jid = submit(node, "sh", "-c", "exit 3")
    done = wait_state(node, jid, TERMINAL)
    assert (done["State"], done["ExitCode"], done["Reason"]) == ("FAILED", 3, "exit-code"), done
    human = node.schedctl("show", str(jid), user=ALICE).stdout
    assert "FAILED" in human and "3" in human


def test_cancel_through_schedd_cancels_it_in_slurm(node: Node, slurm: SlurmCluster):
    jid = submit(node, "sleep", "300")
    wait_state(node, jid, {"RUNNING"})
    node.schedctl("cancel", str(jid), user=ALICE)
    assert wait_state(node, jid, TERMINAL)["State"] == "CANCELLED"
    (sid, _), = slurm_jobs_of(slurm, jid)
    wait_for(lambda: slurm.squeue()[sid][0] == "CANCELLED", f"squeue shows Slurm job {sid} CANCELLED", 30)


def test_hold_and_release_through_schedd_hold_and_release_it_in_slurm(node: Node, slurm: SlurmCluster):
    jid = submit(node, "true", opts=("--node", PEER, "--hold"))
    assert wait_state(node, jid, {"HELD"})["State"] == "HELD"
    (sid, state), = slurm_jobs_of(slurm, jid)
    assert state == "PENDING"
    reason = slurm.run(["squeue", "-h", "-j", str(sid), "-o", "%r"]).stdout.strip()
    assert reason == "JobHeldUser"
    node.schedctl("release", str(jid), user=ALICE)
    assert wait_state(node, jid, TERMINAL)["State"] == "COMPLETED"
    jid = submit(node, "sleep", "300", opts=("--node", PEER, "--hold"))
    wait_state(node, jid, {"HELD"})
    node.schedctl("release", str(jid), user=ALICE)
    wait_state(node, jid, {"RUNNING"})
    r = node.schedctl("suspend", str(jid), user=ALICE, check=False)
    assert r.returncode != 0 and "slurmrestd" in r.stderr  # said plainly, not pretended
    node.schedctl("cancel", str(jid), user=ALICE)
    wait_state(node, jid, TERMINAL)


def test_after_among_jobs_sent_to_slurm_is_slurms_afterok(node: Node, slurm: SlurmCluster):
    first = submit(node, "sleep", "3")
    second = submit(node, "true", opts=("--node", PEER, "--after", str(first)))
    (sid, _), = slurm_jobs_of(slurm, second)
    assert slurm.run(["squeue", "-h", "-j", str(sid), "-o", "%E"]).stdout.strip().startswith("afterok:")
    assert show(node, second)["State"] == "PENDING"
    a, b = wait_state(node, first, TERMINAL), wait_state(node, second, TERMINAL)
    assert a["State"] == b["State"] == "COMPLETED" and b["StartTime"] >= a["EndTime"]
    failing = submit(node, "false")
    never = submit(node, "true", opts=("--node", PEER, "--after", str(failing)))
    assert wait_state(node, failing, TERMINAL)["State"] == "FAILED"
    assert (lambda j: (j["State"], j["Reason"]))(wait_state(node, never, TERMINAL)) == ("FAILED", "dependency")


def test_any_goes_to_slurm_when_this_node_is_full(node: Node):
    blocker = submit(node, "sleep", "120", opts=("--cpus", str(os.cpu_count())))
    try:
        wait_state(node, blocker, {"RUNNING"})
        jid = submit(node, "true", opts=("--node", "any"))
        done = wait_state(node, jid, TERMINAL)
        assert (done["State"], done["Node"]) == ("COMPLETED", PEER), done
    finally:
        node.schedctl("cancel", str(blocker), user=ALICE)


def test_sbatch_through_schedds_slurm_commands_reaches_the_slurm_peer(node: Node, slurm: SlurmCluster):
    links = f"/var/tmp/slurmpeer-links-{os.getpid()}"
    node.sb.run(["/opt/schedd/venv/bin/schedd-slurm", "install-links", links])
    node.sb.run(["chmod", "755", links])
    try:
        r = node.sb.run(["env", f"PATH={links}:/usr/local/bin:/usr/bin:/bin", "sbatch", "--parsable", "-w", PEER,
                         "--array=0-2", "--wrap", "echo sbatch task $SCHEDD_ARRAY_TASK_ID"], user=ALICE,
                        cwd=f"/var/tmp/{ALICE}")
        first = int(r.stdout.strip().split(";")[0].split("_")[0])
        for i in range(first, first + 3):
            assert wait_state(node, i, TERMINAL)["State"] == "COMPLETED"
            assert len(slurm_jobs_of(slurm, i)) == 1
        # sbatch's own -o default (slurm-%A_%a.out in the directory it ran in, schedd's ids), nothing else said
        assert Path(f"/var/tmp/{ALICE}/slurm-{first}_2.out").read_text() == "sbatch task 2\n"
        assert node.schedctl("logs", str(first + 2), user=ALICE).stdout == ""
    finally:
        node.sb.run(["rm", "-rf", links], check=False)


def test_root_jobs_never_go_to_slurm(node: Node, slurm: SlurmCluster):
    r = node.schedctl("submit", "--node", PEER, "--", "true", check=False)
    assert r.returncode != 0 and "root" in r.stderr
    assert not any(user == "root" for _s, user, _n in slurm.squeue().values())


def test_system_accounts_jobs_never_go_to_slurm(node: Node, slurm: SlurmCluster):
    """A token for a system account (daemon here; Slurm's own `slurm` alike) would act as it in Slurm."""
    r = node.schedctl("submit", "--node", PEER, "--", "true", user="daemon", cwd="/", check=False)
    assert r.returncode != 0 and "system account" in r.stderr, r.stderr
    assert not any(user == "daemon" for _s, user, _n in slurm.squeue().values())


def test_no_requeue_reaches_slurm_as_no_requeue(node: Node, slurm: SlurmCluster):
    """Slurm 22.05 reads a submission's "requeue" key as --requeue whatever its value."""
    ids = {}
    for opts in (("--no-requeue",), ()):
        jid = submit(node, "true", opts=("--node", PEER, "--hold", *opts))
        wait_state(node, jid, {"HELD"})
        (sid, _), = slurm_jobs_of(slurm, jid)
        ids[opts] = (jid, sid)
    try:
        for opts, want in ((("--no-requeue",), "Requeue=0"), ((), "Requeue=1")):
            shown = slurm.run(["scontrol", "show", "job", str(ids[opts][1])]).stdout
            assert want in shown.split(), shown
    finally:
        for jid, _sid in ids.values():
            node.schedctl("cancel", str(jid), user=ALICE)


def test_an_array_of_10_runs_there(node: Node, slurm: SlurmCluster):
    r = node.schedctl("--json", "submit", "--node", PEER, "--array", "0-9", "--", "sh", "-c",
                      "echo task $SCHEDD_ARRAY_TASK_ID", user=ALICE, cwd=f"/var/tmp/{ALICE}")
    first = int(json.loads(r.stdout)["id"])
    ids = list(range(first, first + 10))
    ends = [wait_state(node, i, TERMINAL, timeout=120) for i in ids]
    assert [(e["State"], e["ArrayJobId"], e["ArrayTaskId"]) for e in ends] == \
        [("COMPLETED", first, t) for t in range(10)], ends
    for i, t in zip(ids, range(10)):
        assert len(slurm_jobs_of(slurm, i)) == 1
        assert node.schedctl("logs", str(i), user=ALICE).stdout == f"task {t}\n"


def test_slurmrestd_stopped_then_started_loses_nothing_and_runs_nothing_twice(node: Node, slurm: SlurmCluster):
    marks = Path(f"/var/tmp/{ALICE}/restd-marks-{os.getpid()}")
    if marks.exists():
        marks.unlink()
    during = submit(node, "sh", "-c", f"echo ran >> {marks}; sleep 4")
    doomed = submit(node, "sleep", "300")
    wait_state(node, during, {"RUNNING"})
    wait_state(node, doomed, {"RUNNING"})
    (doomed_sid, _), = slurm_jobs_of(slurm, doomed)
    slurm.stop_rest()
    try:
        wait_for(lambda: peer_row(node).get("State") == "down", "the Slurm peer is down", 30)
        # Slurm is not a node that died: the job is neither requeued nor failed while Slurm runs it.
        assert show(node, during)["State"] == "RUNNING"
        (sid, _), = slurm_jobs_of(slurm, during)
        wait_for(lambda: slurm.squeue()[sid][0] == "COMPLETED", "Slurm finishes the job on its own", 60)
        assert show(node, during)["State"] == "RUNNING"  # the last state it mirrored
        later = submit(node, "sh", "-c", f"echo later >> {marks}")
        assert show(node, later)["State"] == "PENDING"  # waits for the peer
        node.schedctl("cancel", str(doomed), user=ALICE)  # ours to decide: carried out when Slurm is back
        assert show(node, doomed)["State"] == "CANCELLED"
        assert slurm.squeue()[doomed_sid][0] == "RUNNING"
    finally:
        slurm.start_rest()
    wait_for(lambda: peer_row(node).get("State") == "up", "the Slurm peer is up again", 30)
    assert wait_state(node, during, TERMINAL)["State"] == "COMPLETED"
    assert wait_state(node, later, TERMINAL)["State"] == "COMPLETED"
    assert len(slurm_jobs_of(slurm, during)) == 1 and len(slurm_jobs_of(slurm, later)) == 1
    assert sorted(marks.read_text().splitlines()) == ["later", "ran"]
    wait_for(lambda: slurm.squeue()[doomed_sid][0] == "CANCELLED", "the cancel reaches Slurm once it is back", 30)


def test_a_schedd_restart_keeps_its_jobs_on_slurm(node: Node, slurm: SlurmCluster):
    jid = submit(node, "sh", "-c", "sleep 3; exit 5")
    wait_state(node, jid, {"RUNNING"})
    node.sb.run(["systemctl", "restart", "schedd"], timeout=60)
    done = wait_state(node, jid, TERMINAL)
    assert (done["State"], done["ExitCode"]) == ("FAILED", 5), done
    assert len(slurm_jobs_of(slurm, jid)) == 1


def test_latency_forwarded_to_slurm_against_local(node: Node):
    """Submit to COMPLETED, as schedctl sees it, for `true` here and on Slurm (the report's figure)."""
    def one(opts: tuple[str, ...]) -> float:
        t0 = time.monotonic()
        jid = submit(node, "true", opts=opts)
        wait_state(node, jid, TERMINAL, timeout=60)
        return time.monotonic() - t0

    local = sorted(one(()) for _ in range(5))
    remote = sorted(one(("--node", PEER)) for _ in range(5))
    (REPO / "artifacts").mkdir(exist_ok=True)
    text = (f"submit->COMPLETED of `true` (median of 5): local {local[2]:.3f}s, forwarded to Slurm {remote[2]:.3f}s, "
            f"extra {remote[2] - local[2]:.3f}s\nlocal {local}\nslurm {remote}\n")
    (REPO / "artifacts" / "slurm-peer-latency.txt").write_text(text)
    print(text)
    assert remote[2] < 30


def test_slurm_names_a_job_it_does_not_know_not_found(node: Node, slurm: SlurmCluster):
    """What a copy ends FAILED lost on: real slurmrestd's answer for a job id slurmctld does not know
    reads NotFound (a copy it still has reads as itself)."""
    import asyncio

    from schedd.cluster.slurm.mapping import jobs_of
    from schedd.cluster.slurm.restd import Restd
    from schedd.cluster.slurm.token import Tokens
    from schedd.cluster.wire import PeerRefused
    from schedd.errors import NotFound

    async def ask(jid: int):
        r = Restd(PEER, slurm.url, Tokens(Path(slurm.key_path).read_bytes(), 600))
        r.open()
        try:
            return await r.call("GET", f"/job/{jid}", ALICE)
        finally:
            await r.close()

    with pytest.raises(PeerRefused) as err:
        asyncio.run(ask(4_000_000))
    assert isinstance(err.value.error, NotFound), err.value.error
    jid = submit(node, "true", opts=("--node", PEER, "--hold"))
    wait_state(node, jid, {"HELD"})
    (sid, _), = slurm_jobs_of(slurm, jid)
    try:
        (there,) = jobs_of(asyncio.run(ask(sid)))[0]
        assert (there.job_id, there.user_name, there.tag.origin_id) == (sid, ALICE, jid)
    finally:
        node.schedctl("cancel", str(jid), user=ALICE)
