"""Container jobs below the daemon: the image name's rules, what podman is asked for (and never
given), the launcher's steps as the user, the node's container feature in placement and heartbeats,
and the refusal where no runtime is."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from prereq import require
from schedd.cluster.api import _features
from schedd.config import ConfigError, ContainerConfig, load
from schedd.core.model import Job, JobSpec
from schedd.core.placement import CONTAINER, Need, NodeView, check_satisfiable, choose
from schedd.core.spec import check_image
from schedd.errors import InvalidArgument, Unsatisfiable
from schedd.executor.container import LAUNCHER, PODMAN_ENV, ContainerRuntime, unstage
from schedd.executor.exits import ExecutorError
from schedd.executor.fake import FakeExecutor

G = 1 << 30


def job(tmp_path: Path, *, image: str = "localhost/busybox:1", env: list[str] | None = None, uid: int | None = None,
        cwd: str | None = None) -> Job:
    pw = pwd.getpwuid(os.getuid() if uid is None else uid)
    spec = JobSpec(command=["sh", "-c", "echo $SECRET"], name="t", cpus=1, memory=1 << 28, uid=pw.pw_uid,
                   gid=pw.pw_gid, user_name=pw.pw_name, working_directory=cwd or str(tmp_path),
                   environment=env or [], stdout_path=str(tmp_path / "out"), container=image)
    spec.stderr_path = spec.stdout_path
    return Job(id=7, spec=spec, restarts=1)


# -- the image name ----------------------------------------------------------------------------

@pytest.mark.parametrize("image", ["debian:12", "localhost/busybox:1", "docker.io/library/alpine:3.19",
                                   "quay.io/a/b@sha256:" + "ab" * 32, "52a39f03d660", "reg:5000/x/y_z-1:T.2"])
def test_image_names_the_store_uses_are_taken(image: str) -> None:
    assert check_image(image) == image


@pytest.mark.parametrize("image", ["-v/:/host", "--privileged", "a b", "a\nb", "", "../etc", "a//b", "é",
                                   "x;rm -rf /", "a" * 300, "/abs/path"])
def test_anything_a_runtime_could_read_otherwise_is_refused(image: str) -> None:
    with pytest.raises(InvalidArgument, match="Container: .* is not an image name"):
        check_image(image)


# -- what podman is asked for --------------------------------------------------------------------

def test_launch_asks_podman_for_the_user_and_no_privilege(tmp_path: Path) -> None:
    rt = ContainerRuntime("/usr/bin/podman", tmp_path / "state", storage_root="/srv/store", run_root="/run/x")
    rt.state_dir.mkdir()
    j = job(tmp_path)
    command, gate_env = rt.launch(j, [j.spec.gid, 27], ["/dev/nvidia0"], "/o", "/e", {"SECRET": "s3cr3t", "A": "1"})
    assert command[:4] == [sys.executable, "-I", "-S", str(LAUNCHER)]
    assert gate_env == {"PATH": PODMAN_ENV["PATH"]}  # nothing of the job's environment reaches root's processes
    launch = json.loads(Path(command[4]).read_text())
    argv = launch["argv"]
    assert argv[:5] == ["/usr/bin/podman", "--root", "/srv/store", "--runroot", "/run/x"]
    for flag in ("--pull=never", "--cgroups=disabled", f"--user={j.spec.uid}:{j.spec.gid}", "--cap-drop=all",
                 "--security-opt=no-new-privileges", "--rm", "--network=host", "--device=/dev/nvidia0",
                 "--group-add=27", f"--workdir={tmp_path}"):
        assert flag in argv
    assert not any(a.startswith("--privileged") or a.startswith("--cap-add") or a.startswith("-v") for a in argv)
    mounts = [a for a in argv if a.startswith("--mount=")]
    assert mounts == [f"--mount=type=bind,src={rt.stage_root}/schedd-job-7-1,dst={tmp_path},nosuid,nodev,"
                      "bind-nonrecursive=true"]
    assert argv[argv.index("--") + 1:] == ["localhost/busybox:1", "sh", "-c", "echo $SECRET"]
    assert not any("s3cr3t" in a for a in argv)  # values never on a command line (/proc/PID/cmdline)
    env_file = Path(next(a for a in argv if a.startswith("--env-file=")).split("=", 1)[1])
    assert env_file.read_text() == "SECRET=s3cr3t\nA=1\n"
    for f in (env_file, Path(command[4])):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert launch["env"] == PODMAN_ENV and launch["uid"] == j.spec.uid and launch["stdout"] == "/o"
    assert "--init" not in argv  # no init binary named: the command is PID 1
    rt.init = "/usr/bin/catatonit"
    argv = json.loads(Path(rt.launch(j, [j.spec.gid], [], "/o", "/e", {})[0][4]).read_text())["argv"]
    assert argv[argv.index("--") - 2:argv.index("--")] == ["--init", "--init-path=/usr/bin/catatonit"]


def test_submit_refuses_a_newline_in_a_container_jobs_environment() -> None:
    from schedd.core.spec import Limits, build_spec
    from dbus_fast import Variant

    limits = Limits(node_name="a", total_cpus=1, total_memory=G, total_gpus=0, default_memory=1 << 28,
                    min_memory=1 << 22, max_argv_bytes=1 << 20, max_env_entries=10)
    props = {"Command": Variant("as", ["true"]), "Container": Variant("s", "x:1"),
             "Environment": Variant("as", ["A=1", "B=two\nlines"])}
    with pytest.raises(InvalidArgument, match="Environment: entry 1 \\(B\\) holds a newline"):
        build_spec(props, caller_uid=os.getuid(), limits=limits)
    del props["Container"]
    assert build_spec(props, caller_uid=os.getuid(), limits=limits).container == ""


@pytest.mark.parametrize("name", ["x,src=", 'say"hi'])
def test_a_directory_that_could_add_mount_options_is_refused(tmp_path: Path, name: str) -> None:
    """podman reads --mount as comma-separated options: a directory named 'x,src=/root' would bind /root."""
    from schedd.core.spec import Limits, build_spec
    from dbus_fast import Variant

    d = tmp_path / name
    d.mkdir()
    limits = Limits(node_name="a", total_cpus=1, total_memory=G, total_gpus=0, default_memory=1 << 28,
                    min_memory=1 << 22, max_argv_bytes=1 << 20, max_env_entries=10)
    props = {"Command": Variant("as", ["true"]), "Container": Variant("s", "x:1"),
             "WorkingDirectory": Variant("s", str(d))}
    with pytest.raises(InvalidArgument, match="WorkingDirectory: .* which a container job's directory may not hold"):
        build_spec(props, caller_uid=0, limits=limits)
    del props["Container"]
    assert build_spec(props, caller_uid=0, limits=limits).working_directory == str(d)  # fine for a plain job
    rt = ContainerRuntime("/usr/bin/podman", tmp_path)
    with pytest.raises(ExecutorError):
        rt.launch(job(tmp_path, cwd=str(d)), [0], [], "/o", "/o", {})


# -- the launcher, as root, with a stand-in podman ---------------------------------------------------

FAKE_PODMAN = """#!/bin/sh
# prints what it was given: its environment, its ids, and the staged working directory's inode
echo "argv=$*"
env | sort | tr '\\n' ' '; echo
echo "ids=$(id -u):$(id -g)"
echo "stage=$(stat -c %i "$STAGE")"
echo to-stderr >&2
"""


def test_the_launcher_opens_the_output_and_binds_the_directory_with_the_users_rights() -> None:
    require(None if os.geteuid() == 0 else "needs root (the launcher mounts and changes ids)")
    nobody = pwd.getpwnam("nobody")
    tmp_path = Path(tempfile.mkdtemp(prefix="schedd-ctr-", dir="/var/tmp"))  # pytest's tmp is root's only (0700)
    work = tmp_path / "work"
    work.mkdir()
    os.chown(work, nobody.pw_uid, nobody.pw_gid)
    os.chmod(tmp_path, 0o755)
    stage = tmp_path / "stage" / "schedd-job-1"
    fake = tmp_path / "podman"
    fake.write_text(FAKE_PODMAN.replace("$STAGE", str(stage)))
    fake.chmod(0o755)
    spec = {"uid": nobody.pw_uid, "gid": nobody.pw_gid, "groups": [nobody.pw_gid], "cwd": str(work),
            "stdout": str(work / "out"), "stderr": str(work / "out"), "stage": str(stage),
            "argv": [str(fake), "run", "IMAGE"], "env": PODMAN_ENV}
    launch = tmp_path / "launch.json"
    launch.write_text(json.dumps(spec))
    try:
        r = subprocess.run([sys.executable, "-I", "-S", str(LAUNCHER), str(launch)], capture_output=True,
                           text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "CONTAINERS_CONF": "/evil"})
        assert r.returncode == 0, r.stderr
        out = (work / "out").read_text()
        assert (work / "out").stat().st_uid == nobody.pw_uid  # created by the user, not by root
        assert "argv=run IMAGE" in out and "to-stderr" in out
        assert "CONTAINERS_CONF" not in out and "HOME=/root" in out  # podman's environment is fixed
        assert "ids=0:0" in out  # podman itself is root (the image store is root's): --user maps the job
        assert f"stage={work.stat().st_ino}" in out  # the very directory the user entered
        # A directory the user cannot enter is not bound for them, and says why in their output.
        spec["cwd"] = str(tmp_path / "private")
        os.mkdir(spec["cwd"], 0o700)
        launch.write_text(json.dumps(spec))
        unstage(str(stage))
        r = subprocess.run([sys.executable, "-I", "-S", str(LAUNCHER), str(launch)], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 200
        assert "cannot change to working directory" in (work / "out").read_text()
        assert not stage.exists()  # refused before anything was bound
    finally:
        unstage(str(stage))
        assert not stage.exists()
        shutil.rmtree(tmp_path)


# -- where Container jobs may go ----------------------------------------------------------------------

def nodes() -> list[NodeView]:
    return [NodeView("a", True, local=True, total_cpus=4, free_cpus=4, total_memory=8 * G, free_memory=8 * G),
            NodeView("b", True, total_cpus=4, free_cpus=1, total_memory=8 * G, free_memory=8 * G,
                     features=frozenset({CONTAINER}))]


def test_container_jobs_go_only_to_nodes_that_run_them() -> None:
    assert choose("any", Need(1, G), nodes()) == "a"
    assert choose("any", Need(1, G, container=True), nodes()) == "b"
    check_satisfiable("b", Need(1, G, container=True), nodes())
    with pytest.raises(Unsatisfiable, match="Container: node a has no container runtime"):
        check_satisfiable("", Need(1, G, container=True), nodes())
    with pytest.raises(Unsatisfiable, match="Container: no node of this cluster runs containers"):
        check_satisfiable("any", Need(1, G, container=True), nodes()[:1])


def test_a_heartbeat_names_the_features_and_an_older_one_none() -> None:
    assert _features(["container"]) == frozenset({CONTAINER})
    assert _features([]) == frozenset()
    for bad in ("container", [1], [""], ["x"] * 33):
        with pytest.raises(InvalidArgument, match="Features"):
            _features(bad)


# -- a node without a runtime ---------------------------------------------------------------------------

def test_an_executor_without_a_runtime_refuses_container_at_submit(tmp_path: Path) -> None:
    ex = FakeExecutor(lambda *_: None)
    assert "container" not in ex.features
    with pytest.raises(InvalidArgument, match="has no container runtime; it cannot run image 'localhost/busybox:1'"):
        asyncio.run(ex.check_specs([job(tmp_path).spec]))
    asyncio.run(ex.check_specs([JobSpec(command=["true"], name="t", cpus=1, memory=G)]))


def test_the_runtime_is_found_only_where_it_can_run(tmp_path: Path) -> None:
    assert ContainerRuntime.probe(ContainerConfig(runtime="none"), tmp_path / "s") is None
    assert ContainerRuntime.probe(ContainerConfig(podman=str(tmp_path / "no-podman")), tmp_path / "s") is None
    if os.geteuid() != 0:
        assert ContainerRuntime.probe(ContainerConfig(podman="/bin/true"), tmp_path / "s") is None


def test_the_containers_section_of_the_config(tmp_path: Path) -> None:
    f = tmp_path / "schedd.toml"
    f.write_text('[containers]\nruntime = "podman"\nstorage_root = "/srv/images"\nnetwork = "none"\n')
    c = load(f, False).containers
    assert (c.runtime, c.storage_root, c.network, c.podman) == ("podman", "/srv/images", "none", "/usr/bin/podman")
    f.write_text('[containers]\nstorage_driver = "vfs"\n')
    rt = ContainerRuntime("/usr/bin/podman", tmp_path, storage_driver=load(f, False).containers.storage_driver)
    assert rt._global() == ["/usr/bin/podman", "--storage-driver", "vfs"]
    for text in ('runtime = "docker"', 'network = "bridge"', 'storage_root = "rel"', 'bogus = 1',
                 'storage_driver = "--privileged"'):
        f.write_text(f"[containers]\n{text}\n")
        with pytest.raises(ConfigError):
            load(f, False)
