"""Container jobs: a job with a Container runs its command in that image, inside its own scope.

Runtime: root podman (Debian 12: podman 4.3 with crun), run *by the job's gate inside the job's
scope* with ``--cgroups=disabled``: podman, conmon and the container's processes are all the scope's
processes, so its MemoryMax, CPUs (the gate's affinity, inherited), stop/kill, freeze and
accounting apply to the container exactly as to any job, and a daemon restart re-adopts it through
its gate like any other. (``--cgroups=split`` would do the same on a pure v2 host but fails on this
hybrid one; systemd-nspawn --keep-unit needs directory images, not an image store.)

Nothing of the submitter's gains privilege: the container runs as the submitter (``--user
UID:GID`` plus their groups, no user namespace, so files it writes are theirs), with
``no-new-privileges``, every capability dropped, no device but the job's GPUs, the host's network
only as any job has it (or none), nothing mounted from the host but the job's working directory (at
its own path, reached with the user's rights: container_launch.py), images only from the local
store (``--pull=never``), and podman started with a fixed environment and fixed options -- the image
name is checked by schedd.core.spec and follows ``--``.

Nothing outside schedd.executor knows this: the gate runs container_launch.py (as root, clean
environment) instead of the command, and the systemd executor cleans up after each container run.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from schedd.core.model import Job
from schedd.core.spec import check_image
from schedd.errors import InvalidArgument
from schedd.executor.exits import ExecutorError

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("container_launch.py")
STAGE_ROOT = "/run/schedd/containers"  # root-only: where each job's working directory is bound for podman
PODMAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
# A static init for PID 1 of the container (podman --init): it forwards SIGTERM to the command, which as
# PID 1 itself would ignore a signal it does not handle. Debian's catatonit, where podman's own path is not.
INIT_PATHS = ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit")
MNT_DETACH = 2
_KNOWN_TTL = 30.0  # seconds an image found in the store is taken as there without asking again
LOOKUPS = 4  # podman processes at most asking the store at once, whatever the flood of submits
LOOKUP_TIMEOUT = 30.0  # seconds a lookup may take before its podman is killed and the submit refused


def container_name(job_id: int, run: int) -> str:
    return f"schedd-job-{job_id}" + (f"-{run}" if run else "")


@dataclass
class ContainerRuntime:
    """Root podman over the node's local image store."""

    podman: str
    state_dir: Path  # root-only: each run's launch and environment files
    storage_root: str = ""
    run_root: str = ""
    network: str = "host"
    storage_driver: str = ""
    init: str = ""  # INIT_PATHS' first found: the container's PID 1; "" = the command is
    stage_root: str = STAGE_ROOT
    lookup_timeout: float = LOOKUP_TIMEOUT
    _known: dict[str, float] = field(default_factory=dict)
    _asking: dict[str, "asyncio.Future[None]"] = field(default_factory=dict)  # image -> its lookup under way
    _lookups: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(LOOKUPS))

    @classmethod
    def probe(cls, cfg, state_dir: Path) -> "ContainerRuntime | None":
        """The runtime the config asks for, if this node has it; None (with a log line why) otherwise."""
        if cfg.runtime == "none":
            return None
        why = None
        if os.geteuid() != 0:
            why = "containers need the system daemon (root): the local image store is root's"
        elif not os.access(cfg.podman, os.X_OK):
            why = f"{cfg.podman} is not installed (apt-get install podman crun)"
        if why is not None:
            (log.error if cfg.runtime == "podman" else log.info)("Container jobs refused on this node: %s", why)
            return None
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state_dir, 0o700)
        init = next((p for p in INIT_PATHS if os.access(p, os.X_OK)), "")
        return cls(cfg.podman, state_dir, cfg.storage_root, cfg.run_root, cfg.network, cfg.storage_driver, init)

    def _global(self) -> list[str]:
        g = [self.podman]
        if self.storage_root:
            g += ["--root", self.storage_root]
        if self.run_root:
            g += ["--runroot", self.run_root]
        if self.storage_driver:
            g += ["--storage-driver", self.storage_driver]
        return g

    # -- at submit -------------------------------------------------------------------

    async def check_image(self, image: str) -> None:
        """InvalidArgument unless the image is in the local store (asked without blocking the loop).

        A flood of submits cannot make a flood of root podmans: submits of one image share one lookup,
        found images are remembered briefly, at most LOOKUPS podmans ask at once, and one that does not
        answer within lookup_timeout is killed (the submit is refused, saying so)."""
        seen = self._known.get(image)
        if seen is not None and time.monotonic() - seen < _KNOWN_TTL:
            return
        pending = self._asking.get(image)
        if pending is None:
            pending = asyncio.ensure_future(self._look_up(image))
            self._asking[image] = pending
            pending.add_done_callback(lambda _f: self._asking.pop(image, None))
        await asyncio.shield(pending)  # one submitter giving up does not cancel the others' lookup

    async def _look_up(self, image: str) -> None:
        async with self._lookups:
            code, err = await self._podman(["image", "exists", "--", image], self.lookup_timeout,
                                           f"look up image {image!r} in this node's store")
        if code == 0:
            self._known[image] = time.monotonic()
            if len(self._known) > 1024:
                self._known.clear()
            return
        if code == 1:
            raise InvalidArgument(f"Container: image {image!r} is not in this node's local image store "
                                  "(images are not pulled; load it with podman pull/load/import as root)")
        raise InvalidArgument(f"Container: cannot look up image {image!r}: {err or f'podman exit {code}'}")

    async def _podman(self, args: list[str], timeout: float, what: str, *, stdout: bool = False) -> tuple[int, str]:
        """(exit status, its stderr's start -- or with stdout, its output) of one podman command;
        InvalidArgument if it cannot run or does not end in time -- then it is killed and reaped, never
        left running as root."""
        pipe, null = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._global(), *args, env=PODMAN_ENV, start_new_session=True,
                stdin=null, stdout=pipe if stdout else null, stderr=null if stdout else pipe)
        except OSError as e:
            raise InvalidArgument(f"Container: cannot {what}: {e}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except BaseException as e:  # timeout or cancel: podman (and whatever it started) goes with it
            _kill_group(proc.pid)
            await proc.wait()
            if isinstance(e, asyncio.TimeoutError):
                raise InvalidArgument(f"Container: cannot {what}: podman did not answer in {timeout:g} s") from None
            raise
        if stdout:
            return proc.returncode, out.decode(errors="replace")
        return proc.returncode, err.decode(errors="replace").strip()[:300]

    # -- at start --------------------------------------------------------------------

    def launch(self, job: Job, groups: list[int], devices: list[str], out: str, err: str,
               env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        """Write this run's launch files; (the gate's command, the gate's environment) that start it."""
        s = job.spec
        try:  # checked at submit; again here for a job stored (or forwarded by a peer) under older rules
            check_image(s.container)
        except InvalidArgument as e:
            raise ExecutorError(str(e)) from None
        if "," in s.working_directory or '"' in s.working_directory:  # refused at submit (schedd.core.spec)
            raise ExecutorError(f"Container: working directory {s.working_directory!r} cannot be mounted")
        name = container_name(job.id, job.restarts)
        env_file = self.state_dir / f"{name}.env"
        # The working directory at its own path -- but "/" would hide the image itself: there it is the image's.
        stage = f"{self.stage_root}/{name}" if s.working_directory != "/" else ""
        lines = [f"{k}={v}\n" for k, v in env.items() if "\n" not in v and "\n" not in k]
        _write_private(env_file, "".join(lines))
        argv = [*self._global(), "run", "--rm", "--replace", "--name", name, "--label", f"schedd.job={job.id}",
                "--pull=never", "--cgroups=disabled", f"--network={self.network}", "--log-driver=passthrough",
                f"--user={s.uid}:{s.gid}", "--security-opt=no-new-privileges", "--cap-drop=all",
                "--systemd=false", "--entrypoint=[]", f"--env-file={env_file}", f"--workdir={s.working_directory}"]
        if stage:
            argv.append(f"--mount=type=bind,src={stage},dst={s.working_directory},nosuid,nodev,bind-nonrecursive=true")
        argv += [f"--group-add={g}" for g in sorted(set(groups) - {s.gid})]
        argv += [f"--device={d}" for d in devices]
        if self.init:
            argv += ["--init", f"--init-path={self.init}"]
        argv += ["--", s.container, *s.command]
        launch = {"uid": s.uid, "gid": s.gid, "groups": sorted(set(groups)), "cwd": s.working_directory,
                  "stdout": out, "stderr": err, "stage": stage, "argv": argv, "env": PODMAN_ENV}
        path = self.state_dir / f"{name}.json"
        _write_private(path, json.dumps(launch))
        return [sys.executable, "-I", "-S", str(LAUNCHER), str(path)], {"PATH": PODMAN_ENV["PATH"]}

    # -- after a run ------------------------------------------------------------------

    async def cleanup(self, job_id: int, run: int, killed: bool = True) -> None:
        """Remove what a run leaves: its mount and files, and (killed: podman did not see it to its end,
        so its --rm may not have happened) the container record."""
        name = container_name(job_id, run)
        if killed:
            await self._remove(job_id, name)
        unstage(f"{self.stage_root}/{name}")  # absent for a job in "/": nothing to do
        for ext in (".json", ".env"):
            try:
                (self.state_dir / f"{name}{ext}").unlink()
            except FileNotFoundError:
                pass

    async def _remove(self, job_id: int, name: str) -> None:
        try:
            code, err = await self._podman(["rm", "--force", "--ignore", "--time=0", "--", name], 60,
                                           f"remove container {name}")
            if code:
                log.warning("job %d: podman rm %s: %s", job_id, name, err)
        except InvalidArgument as e:
            log.warning("job %d: %s", job_id, e)


    async def sweep(self, known: set[int]) -> list[str]:
        """After a daemon restart: remove what container runs of jobs no longer active left behind (a
        crash between a run's end and its cleanup): their container records in root's store, their
        staging binds and launch files. The names swept."""
        gone: set[str] = set()
        for d in (Path(self.stage_root), self.state_dir):
            try:
                names = [p.name.split(".", 1)[0] for p in d.iterdir()]
            except OSError:
                continue
            gone.update(n for n in names if _job_of(n) is not None and _job_of(n) not in known)
        try:
            code, out = await self._podman(["ps", "--all", "--filter", "label=schedd.job", "--format", "{{.Names}}"],
                                           60, "list leftover containers", stdout=True)
            if code == 0:
                gone.update(n for n in out.split() if _job_of(n) is not None and _job_of(n) not in known)
        except InvalidArgument as e:
            log.warning("cannot list leftover containers: %s", e)
        for name in sorted(gone):
            job_id = _job_of(name)
            await self._remove(job_id, name)
            unstage(f"{self.stage_root}/{name}")
            for ext in (".json", ".env"):
                try:
                    (self.state_dir / f"{name}{ext}").unlink()
                except FileNotFoundError:
                    pass
        if gone:
            log.info("removed leftovers of %d container run(s): %s", len(gone), ", ".join(sorted(gone)))
        return sorted(gone)


_NAME = re.compile(r"schedd-job-([0-9]+)(?:-[0-9]+)?")


def _job_of(name: str) -> int | None:
    m = _NAME.fullmatch(name)
    return int(m.group(1)) if m else None

def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def unstage(stage: str) -> None:
    """Unmount (lazily: the container may hold it a moment longer) and remove a staging point."""
    if not os.path.isdir(stage):
        return
    libc = _libc()
    for _ in range(8):  # a bind of the same file system: ismount cannot tell, umount2 can (EINVAL: none left)
        if libc.umount2(stage.encode(), MNT_DETACH) != 0:
            e = ctypes.get_errno()
            if e != errno.EINVAL:
                log.warning("cannot unmount %s: %s", stage, os.strerror(e))
                return
            break
    try:
        os.rmdir(stage)
    except OSError as e:
        log.warning("cannot remove %s: %s", stage, e)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
