"""Start one container job inside its scope: what the gate execs for a job with a Container.

Run by the gate as root (it has to be: the local image store is root's), pinned to the job's CPUs,
inside the job's scope, as ``python3 -I -S container_launch.py LAUNCH_FILE`` with a fixed, clean
environment -- nothing of the job's environment reaches this process or podman itself
(CONTAINERS_CONF, TMPDIR and the like would be read by a root podman); the job's variables go in
through podman's --env-file, a root-only file the daemon wrote.

What the gate does for any other job as the user, this does here with the user's rights
(setgroups/setegid/seteuid, then back): open the output files and enter the working directory.
The directory is then bind-mounted by its open descriptor onto a root-only staging point
(LAUNCH_FILE's "stage"), and podman mounts that point at the same path inside the container: a
user who swaps a path component for a symlink after the check cannot have root mount a directory
they could not reach. Then exec podman (same pid, same scope, same CPUs): `podman run` waits for
the container and exits with its status, which the gate records as for any job.

Standard library only (-S: no site-packages to import); exit codes are systemd's (200 CHDIR,
209 STDOUT, 216 GROUP, 217 USER, 203 EXEC), as the gate's.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

MS_BIND = 4096


def _fail(code: int, msg: str) -> None:
    try:
        os.write(2, f"schedd: {msg}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass
    os._exit(code)


def _as_user(spec: dict) -> tuple[int, int, int]:
    """(stdout fd, stderr fd, working directory fd), each reached with the user's rights only."""
    uid, gid, groups = spec["uid"], spec["gid"], spec["groups"]
    try:
        os.setgroups(groups)
        os.setegid(gid)
    except OSError as e:
        _fail(216, f"cannot take the groups of uid {uid}: {e.strerror}")
    try:
        os.seteuid(uid)
    except OSError as e:
        _fail(217, f"cannot take uid {uid}: {e.strerror}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        out = os.open(spec["stdout"], flags, 0o666)
    except OSError as e:
        _fail(209, f"cannot open {spec['stdout']} for writing: {e.strerror}")
    if spec["stderr"] == spec["stdout"]:
        err = out
    else:
        try:
            err = os.open(spec["stderr"], flags, 0o666)
        except OSError as e:
            os.dup2(out, 2)
            _fail(209, f"cannot open {spec['stderr']} for writing: {e.strerror}")
    os.dup2(out, 1)
    os.dup2(err, 2)
    try:
        os.chdir(spec["cwd"])
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        _fail(200, f"cannot change to working directory {spec['cwd']}: {e.strerror}")
    os.seteuid(0)
    os.setegid(0)
    os.setgroups([])
    os.chdir("/")
    return out, err, cwd


def _bind(fd: int, stage: str) -> None:
    """Mount the directory open on fd (not whatever its path names now) at stage."""
    parent = os.path.dirname(stage)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    os.chmod(parent, 0o700)
    try:
        os.mkdir(stage, 0o700)
    except FileExistsError:
        pass
    libc = ctypes.CDLL(None, use_errno=True)
    src = f"/proc/self/fd/{fd}".encode()
    if libc.mount(src, stage.encode(), None, MS_BIND, None) != 0:
        e = ctypes.get_errno()
        _fail(200, f"cannot bind the working directory into the container: {os.strerror(e)}")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        _fail(2, "usage: container_launch.py LAUNCH_FILE")
    try:
        with open(argv[1], "rb") as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        _fail(203, f"cannot read the container launch file: {e}")
    _out, _err, cwd = _as_user(spec)
    if spec["stage"]:  # "" for a job in "/": the image's own root, nothing of the host's is bound
        _bind(cwd, spec["stage"])
    os.close(cwd)
    podman = spec["argv"]
    try:
        os.execve(podman[0], podman, spec["env"])
    except OSError as e:
        _fail(203, f"cannot execute {podman[0]}: {e.strerror}")


if __name__ == "__main__":
    main(sys.argv)
