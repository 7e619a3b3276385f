"""Container jobs (Submit key Container) on a booted systemd, as an ordinary user.

The image is made here without any network: a root file system of Debian's busybox-static and its
applet links, with an os-release of its own, tarred and `podman import`ed into a store private to
this module ([containers] storage_root), from which the daemon runs it with root podman inside each
job's scope. What a user would check: the command runs in the image, as them, in their working
directory; the job's memory limit, CPUs, cancel, suspend, accounting and a daemon restart hold for
everything the container runs; an image the node does not have is refused at submit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import CONFIG, USERS, Node, extra_node
from prereq import require
from sandbox import STATE_ROOT
from ctr_image import OS_NAME, build_rootfs_tar, storage_options, why_not

IMAGE = "localhost/schedd-test-busybox:1"
ALICE = USERS[0]
RUN_ROOT = "/run/schedd-test-containers"


# The host's own hierarchy, and cgroup v2 only (on a hybrid host: the scope freezes instead of SIGSTOP).
# A v2-only sandbox on a hybrid host has no memory controller (it is v1's there): what needs one runs
# on the host's hierarchy only (HOST_ONLY), which on a v2 host is v2 with memory.
HIERARCHIES = {"host": (), "v2": ("systemd.unified_cgroup_hierarchy=1",)}
HOST_ONLY = pytest.mark.parametrize("ctr_node", ["host"], indirect=True)


@pytest.fixture(scope="module", params=sorted(HIERARCHIES))
def ctr_node(users, request):
    require(why_not())
    work = STATE_ROOT / f"ctr-image-{os.getpid()}"  # not the sandbox's own dir (containers-PID)
    work.mkdir(parents=True, exist_ok=True)
    tar = build_rootfs_tar(work)
    store = work / "storage"
    driver_line, driver = storage_options(store)
    config = (CONFIG + f'[containers]\nruntime = "podman"\nstorage_root = "{store}"\nrun_root = "{RUN_ROOT}"\n'
              + driver_line)
    try:
        with extra_node(f"containers-{request.param}", config, systemd_args=HIERARCHIES[request.param]) as n:
            n.podman = ["podman", "--root", str(store), "--runroot", RUN_ROOT, *driver]
            n.run([*n.podman, "import", str(tar), IMAGE], timeout=120)
            yield n
    finally:
        shutil.rmtree(work, ignore_errors=True)


GPU_DEVICES = [f"/dev/schedd-ctr-gpu{i}" for i in range(2)]  # stand-ins with NVIDIA's major (test_gpus.py)


@pytest.fixture(scope="module")
def gpu_ctr_node(users):
    """A node with two (stand-in) GPUs that runs containers: its scopes have DevicePolicy=closed."""
    require(why_not())
    for i, path in enumerate(GPU_DEVICES):
        if os.path.exists(path):
            os.unlink(path)
        os.mknod(path, 0o666 | 0o020000, os.makedev(195, 230 + i))
    work = STATE_ROOT / f"ctr-gpu-image-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    tar = build_rootfs_tar(work)
    store = work / "storage"
    driver_line, driver = storage_options(store)
    config = (CONFIG.replace("[resources]\n", '[resources]\ngpus = 2\ngpu_device = "/dev/schedd-ctr-gpu{index}"\n')
              + f'[containers]\nstorage_root = "{store}"\nrun_root = "{RUN_ROOT}"\n' + driver_line)
    try:
        with extra_node("containers-gpu", config) as n:
            n.podman = ["podman", "--root", str(store), "--runroot", RUN_ROOT, *driver]
            n.run([*n.podman, "import", str(tar), IMAGE], timeout=120)
            yield n
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for path in GPU_DEVICES:
            if os.path.exists(path):
                os.unlink(path)


@pytest.fixture
def node(ctr_node: Node) -> Node:
    ctr_node.idle()
    return ctr_node


def home(user: str = ALICE) -> str:
    import pwd

    return pwd.getpwnam(user).pw_dir


def submit(n: Node, command: list[str], **props) -> int:
    props.setdefault("Container", ("s", IMAGE))
    props.setdefault("WorkingDirectory", ("s", home()))
    return n.submit(command, user=ALICE, **props)


def output(n: Node, job: dict) -> str:
    return n.run(["cat", job["StdoutPath"]]).stdout


def podman(n: Node, *args: str) -> str:
    return n.run([*n.podman, *args]).stdout


def scope_pids(n: Node, unit: str) -> list[int]:
    r = n.run(["busctl", "--json=short", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
               "org.freedesktop.systemd1.Manager", "GetUnitProcesses", "s", unit], check=False)
    if r.returncode != 0:
        return []  # no such unit: nothing of it is left
    return [p[1] for p in json.loads(r.stdout)["data"][0]]


def test_a_job_runs_in_the_image_as_its_submitter_in_its_directory(node: Node, users):
    script = ('cat /etc/os-release; echo "uid=$(id -u) gid=$(id -g)"; echo "pwd=$(pwd)"; echo "greet=$GREETING"; '
              'grep -E "^(CapEff|NoNewPrivs)" /proc/self/status; ls /dev; echo made > made-inside; echo oops >&2')
    jid = submit(node, ["sh", "-c", script], Environment=("as", ["GREETING=hello there", "CONTAINERS_CONF=/nonexistent"]))
    j = node.wait(jid, timeout=60)
    out = output(node, j)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("COMPLETED", "success", 0), out
    assert j["Container"] == IMAGE
    pw = users[ALICE]
    assert f'PRETTY_NAME="{OS_NAME}"' in out  # the image's file, not the host's
    assert f"uid={pw.pw_uid} gid={pw.pw_gid}" in out
    assert f"pwd={home()}" in out
    assert "greet=hello there" in out  # the job's environment passes (CONTAINERS_CONF reached no podman)
    assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out
    assert "vda" not in out.split() and "sda" not in out.split()  # no host disk among the devices
    assert "oops" in out  # stderr with stdout, as for any job
    made = Path(home()) / "made-inside"
    assert made.read_text() == "made\n" and made.stat().st_uid == pw.pw_uid  # theirs, on the host
    made.unlink()
    assert j["CPUTimeUSec"] > 0  # accounting covers the container (memory: below)


@HOST_ONLY
def test_a_memory_hog_inside_ends_oom_kill(node: Node):
    jid = submit(node, ["dd", "if=/dev/zero", "of=/dev/null", "bs=400M", "count=1"], Memory=("t", 64 << 20))
    j = node.wait(jid, timeout=60)
    assert (j["State"], j["Reason"]) == ("FAILED", "oom-kill"), output(node, j)
    assert 0 < j["MemoryPeak"] <= 64 << 20  # the peak of everything in the scope, podman's too


def test_the_container_sees_only_the_jobs_cpus(node: Node):
    require(None if len(os.sched_getaffinity(0)) >= 2 else "needs two CPUs to tell one from all")
    jid = submit(node, ["sh", "-c", "nproc; grep Cpus_allowed_list /proc/self/status"], CPUs=("u", 1))
    j = node.wait(jid, timeout=60)
    out = output(node, j)
    assert j["State"] == "COMPLETED", out
    assert out.splitlines()[0] == "1"
    assert out.split()[-1] == str(j["AssignedCPUs"][0])


def test_cancel_leaves_nothing_of_the_container(node: Node):
    jid = submit(node, ["sleep", "300"])
    j = node.wait(jid, {"RUNNING"}, timeout=60)
    node.wait_for(lambda: f"schedd-job-{jid}" in podman(node, "ps", "--format", "{{.Names}}"), "container up", 30)
    pids = scope_pids(node, j["Unit"])
    assert len(pids) >= 3  # the gate, podman and conmon, and the container's sleep
    t0 = time.monotonic()
    node.manager_call("Cancel", "t", str(jid), user=ALICE)
    j = node.wait(jid, timeout=30)
    assert (j["State"], j["Reason"]) == ("CANCELLED", "cancelled")
    # SIGTERM ended it (the container's init, catatonit, passed it on), not the SIGKILL after kill_wait (5 s).
    assert time.monotonic() - t0 < 4.5
    assert scope_pids(node, j["Unit"]) == []
    left = node.run(["sh", "-c", f"for p in {' '.join(map(str, pids))}; do [ -e /proc/$p ] && echo $p; done; true"])
    assert left.stdout.split() == []  # not one of its processes outlived the cancel
    assert podman(node, "ps", "-a", "--format", "{{.Names}}").split() == []  # no container record left


def test_a_time_limit_ends_the_container(node: Node):
    jid = submit(node, ["sleep", "300"], RuntimeMaxUSec=("t", 1_000_000))
    j = node.wait(jid, timeout=60)
    assert (j["State"], j["Reason"]) == ("FAILED", "timeout")
    assert scope_pids(node, j["Unit"]) == []
    node.wait_for(lambda: podman(node, "ps", "-a", "--format", "{{.Names}}").split() == [], "no container left", 30)


def test_suspend_and_resume_reach_the_container(node: Node):
    marker = f"{home()}/ticks"
    node.run(["rm", "-f", marker])
    jid = submit(node, ["sh", "-c", f"i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo $i > {marker}; sleep 0.05; done"])
    j = node.wait(jid, {"RUNNING"}, timeout=60)
    node.wait_for(lambda: Path(marker).exists(), "the container ticking", 30)
    node.manager_call("Suspend", "t", str(jid))  # an operator's verb (Slurm's too)
    node.wait(jid, {"SUSPENDED"})

    value, since = Path(marker).read_text(), time.monotonic()
    while time.monotonic() - since < 1.0:  # a window to observe: the count must not move in it
        assert Path(marker).read_text() == value, "the container kept running while suspended"
        time.sleep(0.05)
    node.manager_call("Resume", "t", str(jid))
    node.wait(jid, {"RUNNING"})
    frozen = Path(marker).read_text()
    node.wait_for(lambda: Path(marker).read_text() != frozen, "ticks again after resume", 10)
    node.manager_call("Cancel", "t", str(jid), user=ALICE)
    node.wait(jid)
    Path(marker).unlink(missing_ok=True)


def test_a_daemon_restart_readopts_a_running_container_and_keeps_an_exit_from_while_it_was_down(node: Node):
    go = f"{home()}/go-%s"
    wait_go = 'while [ ! -e "$0" ]; do sleep 0.05; done; exit $1'
    first = submit(node, ["sh", "-c", wait_go, go % 1, "7"])
    second = submit(node, ["sh", "-c", wait_go, go % 2, "9"])
    units = {jid: node.wait(jid, {"RUNNING"}, timeout=60)["Unit"] for jid in (first, second)}
    node.run(["systemctl", "restart", "schedd"], timeout=60)
    assert node.job(first)["State"] == "RUNNING"  # re-adopted, not lost
    Path(go % 1).touch()
    j = node.wait(first, timeout=30)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "exit-code", 7)

    node.run(["systemctl", "stop", "schedd"], timeout=60)
    Path(go % 2).touch()
    node.wait_for(lambda: scope_pids(node, units[second]) == [], "the container to end while the daemon is down", 30)
    node.run(["systemctl", "start", "schedd"], timeout=60)
    j = node.wait(second, timeout=30)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "exit-code", 9)
    for i in (1, 2):
        Path(go % i).unlink(missing_ok=True)
    node.wait_for(lambda: podman(node, "ps", "-a", "--format", "{{.Names}}").split() == [], "no container left", 30)


@pytest.mark.parametrize("image, words", [
    ("localhost/no-such-image:1", "is not in this node's local image store"),
    ("--privileged", "is not an image name"),
    ("-v/:/host", "is not an image name"),
])
def test_an_image_the_node_cannot_run_is_refused_at_submit(node: Node, image: str, words: str):
    r = node.gdbus_manager("Submit", f"{{'Command': <['true']>, 'Container': <'{image}'>}}", user=ALICE)
    assert r.returncode != 0
    assert "org.schedd.Schedd1.Error.InvalidArgument" in r.stderr
    assert image in r.stderr and words in r.stderr


def test_schedctl_submit_container(node: Node):
    r = node.schedctl("submit", "--container", IMAGE, "--", "sh", "-c", "head -1 /etc/os-release", user=ALICE,
                      cwd=home())
    jid = int(r.stdout.split()[-1])
    j = node.wait(jid, timeout=60)
    assert output(node, j) == f'PRETTY_NAME="{OS_NAME}"\n'
    r = node.schedctl("submit", "--container", "localhost/absent:2", "--", "true", user=ALICE, check=False, cwd=home())
    assert r.returncode != 0 and "localhost/absent:2" in r.stderr


def test_a_job_in_the_root_directory_gets_the_images_root(node: Node):
    jid = submit(node, ["sh", "-c", "pwd; ls /"], WorkingDirectory=("s", "/"))
    j = node.wait(jid, timeout=60)
    out = output(node, j)
    assert j["State"] == "COMPLETED", out
    assert out.split() == ["/", "bin", "dev", "etc", "proc", "run", "sys", "tmp"]  # the image's, no host dir


def test_a_container_gets_its_jobs_gpus_and_no_other_device(gpu_ctr_node: Node):
    n = gpu_ctr_node
    probe = "; ".join(f'head -c1 {d} 2>&1 | sed "s|^|gpu{i}: |"' for i, d in enumerate(GPU_DEVICES))
    script = f'echo "cuda=$CUDA_VISIBLE_DEVICES"; {probe}; mknod /tmp/node c 195 231 2>&1 | sed "s/^/mknod: /"'
    with_gpu = submit(n, ["sh", "-c", script], GPUs=("u", 1))
    without = submit(n, ["sh", "-c", script])
    j = n.wait(with_gpu, timeout=60)
    out = output(n, j)
    assert j["State"] == "COMPLETED", out
    mine = j["AssignedGPUs"][0]
    assert f"cuda={mine}\n" in out
    assert f"gpu{mine}: head: {GPU_DEVICES[mine]}: No such device or address" in out  # opened: reaches the driver
    assert f"gpu{1 - mine}: head: {GPU_DEVICES[1 - mine]}: No such file or directory" in out  # not even there
    assert re.search(r"mknod: mknod: /tmp/node: (Operation not permitted|Permission denied)", out)  # none of its own
    out = output(n, n.wait(without, timeout=60))
    assert "No such device or address" not in out and out.count("No such file or directory") == 2
