"""Spawning and watching the gate: the small supervisor every job runs under.

The gate is ``schedd-gate``, compiled from gate.c at install time where a compiler was there;
without it (or with $SCHEDD_GATE_PERL set) its twin gate.pl, the same protocol in perl, runs.

The daemon never forks itself for a job: the gate is started with posix_spawn
(vfork+exec), waits on a pipe until the executor has placed it, then forks the
job, waits for it and records the status in ``<state>/exits/<id>[.<run>]``. Exits are
seen through a pidfd on the event loop, which works the same for our own
children and for gates adopted after a restart.

With the compiled gate, gates come ready-made from a pool (`schedd.executor.gatepool`): the job
is written to a waiting gate's pipe instead of being put on a new gate's argv, and the release is
the same "go". SCHEDD_GATE_POOL=0 turns the pool off (every gate spawned, as gate.pl's always are).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pwd
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from schedd.core.model import Job
from schedd.executor.exits import ExecutorError, ExitInfo
from schedd.executor.gatepool import SIGDEF, GatePool, job_message, proc_start_time  # noqa: F401 - also ours to export

log = logging.getLogger(__name__)

GATE_SCRIPT = (Path(__file__).with_name("gate.pl")).read_text()
PERL = shutil.which("perl", path="/usr/bin:/bin") or "/usr/bin/perl"
GATE_BINARY = Path(__file__).with_name("schedd-gate")  # gate.c, built at install time if a compiler was there


def gate_command() -> list[str]:
    """The compiled gate (~0.3 ms a job) if installed, else the same protocol in perl (~3-5 ms)."""
    if os.access(GATE_BINARY, os.X_OK) and not os.environ.get("SCHEDD_GATE_PERL"):
        return [str(GATE_BINARY)]
    return [PERL, "-e", GATE_SCRIPT]


# The gate's own exit codes when it fails before the job's program runs (any other exit mirrors the job's).
_GATE_FAILURES = {120: "gate could not read its release pipe", 121: "released without go (daemon gave up)",
                  122: "gate could not open its status file", 123: "gate could not fork"}


def _high_fd(fd: int) -> int:
    """Move fd above the gate's fixed slots (3-5) so the dup2 actions cannot clobber each other."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


@dataclass(slots=True)
class Gate:
    job_id: int
    pid: int
    start_time: int | None
    release_fd: int | None = None

    def handle(self) -> dict:
        return {"pid": self.pid, "start": self.start_time}

    def release(self) -> None:
        """Let the job run."""
        fd, self.release_fd = self.release_fd, None
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)

    def abort(self) -> None:
        """Make the gate exit without running anything, and reap it."""
        if self.release_fd is not None:
            os.close(self.release_fd)
            self.release_fd = None
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


class GateRunner:
    """Spawns gates and turns their ends into ExitInfo callbacks."""

    def __init__(self, status_dir: Path, *, accounting: bool) -> None:
        self.status_dir = status_dir
        self.accounting = accounting
        status_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(status_dir, 0o700)  # exit files name users' paths and errors: root only, also if made before
        self._watched: dict[int, tuple[int, int, int]] = {}  # job id -> (pid, pidfd, run)
        self._root = os.geteuid() == 0
        self.gate = gate_command()
        self.kind = "c" if self.gate[0] == str(GATE_BINARY) else "perl"
        self.pool: GatePool | None = None
        self.containers = None  # a ContainerRuntime where this node runs Container jobs

    def open_pool(self, size: int | None = None) -> None:
        """Keep `size` gates ready (on the running loop), where the gate is the compiled one and the pool
        is not turned off; without it, or if it cannot start, every gate is spawned (a warning says why)."""
        if self.pool is not None or os.environ.get("SCHEDD_GATE_POOL", "1") == "0":
            return
        if len(self.gate) != 1 or self.gate[0].endswith(".pl") or self.gate[0] == PERL:
            return  # gate.pl has no zygote
        pool = GatePool(self.gate[0], size)
        try:
            pool.start()
        except OSError as e:
            log.warning("cannot start the gate pool (%s); gates are spawned one by one", e)
            return
        self.pool = pool

    def close_pool(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def status_path(self, job_id: int, run: int = 0) -> Path:
        """One file per run of a job (run = its restart count): a requeued job never reads its last run's end."""
        return self.status_dir / (f"{job_id}.{run}" if run else str(job_id))

    def spawn(self, job: Job, cpus: tuple[int, ...], devices: list[str] | None = None) -> Gate:
        """A gate for the job, blocked until released: a ready one from the pool, else a new one.

        A job with a Container: the gate stays root and runs the container launcher instead (it
        takes the user's rights itself to reach their files, then starts the image as them)."""
        s = job.spec
        if self._root and s.uid != 0:
            groups = os.getgrouplist(s.user_name, s.gid) if s.user_name else [s.gid]
            ident = [str(s.uid), str(s.gid), " ".join(str(g) for g in [s.gid, *groups])]
        else:
            ident = ["-", "-", "-"]
        out, err = s.stdout_path, s.stderr_path or s.stdout_path
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            **_user_env(s.uid, s.user_name),
            **dict(e.split("=", 1) for e in s.environment),
            "SCHEDD_JOB_ID": str(job.id),
            "SCHEDD_JOB_NAME": s.name,
            "SCHEDD_CPUS": ",".join(map(str, cpus)),
        }
        if job.assigned_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, job.assigned_gpus))
        if job.array_job_id:
            env["SCHEDD_ARRAY_JOB_ID"] = str(job.array_job_id)
            env["SCHEDD_ARRAY_TASK_ID"] = str(s.array_task_id)
        command = s.command
        fields = [*ident, s.working_directory, out, err, "1" if self.accounting else "0"]
        if s.container:
            if self.containers is None or not self._root:
                raise ExecutorError("Container: this node has no container runtime (podman, as root)")
            groups = os.getgrouplist(s.user_name, s.gid) if s.user_name else [s.gid]
            command, env = self.containers.launch(job, groups, devices or [], out, err, env)
            fields = ["-", "-", "-", "/", "/dev/null", "/dev/null", fields[-1]]
        status = self.status_path(job.id, job.restarts)
        if self.pool is not None:
            gate = self._hand_over(job.id, status, fields, command, env)
            if gate is not None:
                return gate
        return self._spawn(job.id, status, fields, command, env)

    def _hand_over(self, job_id: int, status: Path, fields: list[str], command: list[str],
                   env: dict[str, str]) -> Gate | None:
        """Write the job to a ready gate of the pool (it opens its status file itself); None if none is ready."""
        ready = self.pool.take() if self.pool is not None else None
        if ready is None:
            return None
        msg = job_message([str(status), *fields], command, [f"{k}={v}" for k, v in env.items()])
        gate = Gate(job_id, ready.pid, ready.start_time, ready.release_fd)
        try:
            view = memoryview(msg)
            while view:
                view = view[os.write(ready.release_fd, view):]
        except OSError as e:  # the gate died meanwhile: spawn one instead
            log.warning("job %d: a pooled gate did not take its job (%s); spawning one", job_id, e)
            gate.abort()
            return None
        return gate

    def _spawn(self, job_id: int, status: Path, fields: list[str], command: list[str],
               env: dict[str, str]) -> Gate:
        argv = [*self.gate, *fields, "--", *command]
        sfd = _high_fd(os.open(status, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
        r, w = os.pipe2(os.O_CLOEXEC)
        r = _high_fd(r)
        efd = _high_fd(os.memfd_create("schedd-env", os.MFD_CLOEXEC))
        try:
            os.write(efd, b"".join(f"{k}={v}\0".encode("utf-8", "surrogateescape") for k, v in env.items()))
            os.lseek(efd, 0, os.SEEK_SET)
            pid = os.posix_spawn(
                argv[0], argv, {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, r, 3),
                    (os.POSIX_SPAWN_DUP2, sfd, 4),
                    (os.POSIX_SPAWN_DUP2, efd, 5),
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                ],
                setsid=True,
                setsigmask=(),
                setsigdef=SIGDEF,
            )
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
            os.close(sfd)
            os.close(efd)
        return Gate(job_id, pid, proc_start_time(pid), w)

    # -- watching -----------------------------------------------------------

    def watch(self, job_id: int, pid: int, start_time: int | None, on_exit, run: int = 0) -> bool:
        """Call on_exit(job_id, ExitInfo) when the gate ends. False if it is already gone."""
        if start_time is not None and proc_start_time(pid) != start_time:
            return False
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        if start_time is not None and proc_start_time(pid) != start_time:
            os.close(pidfd)  # the pid was reused between our two looks
            return False
        loop = asyncio.get_running_loop()
        self._watched[job_id] = (pid, pidfd, run)
        loop.add_reader(pidfd, self._ended, job_id, on_exit)
        if self.pool is not None:
            self.pool.refill_later()  # a start is done (or a gate adopted): the pool's gates taken are replaced
        return True

    def start_done(self) -> None:
        """A start ended without a watch (it failed or was withdrawn): the gate it took is replaced too."""
        if self.pool is not None:
            self.pool.refill_later()

    def _ended(self, job_id: int, on_exit) -> None:
        pid, pidfd, run = self._watched.pop(job_id)
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        wait_status = None
        try:
            _, wait_status = os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # adopted after a restart: not ours to reap
        on_exit(job_id, self.read_status(job_id, wait_status, run))

    def unwatch_all(self) -> None:
        loop = asyncio.get_running_loop()
        for pid, pidfd, _run in self._watched.values():
            loop.remove_reader(pidfd)
            os.close(pidfd)
        self._watched.clear()

    def read_status(self, job_id: int, gate_wait_status: int | None = None, run: int = 0) -> ExitInfo:
        """How the job ended, from its status file; the gate's own wait status where it recorded nothing.

        Never raises: a file the gate cannot have written gives a lost result with
        ``malformed`` saying what was wrong (and a warning naming the job).
        """
        path = self.status_path(job_id, run)
        try:
            try:
                with open(path, "rb") as f:
                    data = f.read(MAX_STATUS_BYTES + 1)
            except FileNotFoundError:
                data = b""
            info = parse_status(data)
        except (OSError, StatusError) as e:
            why = str(e) if isinstance(e, StatusError) else f"cannot read it: {e.strerror or e}"
            log.warning("job %d: status file %s is malformed (%s); its result is lost", job_id, path, why)
            info = ExitInfo(lost=True, malformed=why)
        except Exception as e:  # a bug here must not leave the job running for ever
            log.exception("job %d: cannot read status file %s; its result is lost", job_id, path)
            info = ExitInfo(lost=True, malformed=f"unreadable ({type(e).__name__})")
        if info.lost and gate_wait_status is not None:
            _from_gate_exit(info, gate_wait_status)
        return info

    def forget(self, job_id: int, run: int = 0) -> None:
        try:
            self.status_path(job_id, run).unlink()
        except FileNotFoundError:
            pass


def _from_gate_exit(info: ExitInfo, wait_status: int) -> None:
    """Fill a lost result from the gate's own wait status (it mirrors the job's, or tells why it never ran)."""
    _set_exit(info, wait_status)
    if os.WIFEXITED(wait_status) and not info.malformed:
        code = os.WEXITSTATUS(wait_status)
        info.aborted |= code == 121
        info.gate_failed = code in _GATE_FAILURES
        info.error = info.error or _GATE_FAILURES.get(code, "")


def _set_exit(info: ExitInfo, wait_status: int) -> None:
    """exit_code (128+N for signal N, the shell's convention) and signal, from a wait status: any
    low bits are a signal (a status file claiming 0x7f is no success)."""
    if wait_status & 0x7F:
        info.signal = wait_status & 0x7F
        info.exit_code = 128 + info.signal
    else:
        info.exit_code = (wait_status >> 8) & 0xFF


# -- the status file ------------------------------------------------------------
# What a gate writes to fd 4, and nothing else: "aborted=1" alone (never released), or an
# optional "error=" line (the child's setup failure, escaped to printable ASCII) followed by
# the record below, one "key=value" line each, in this order, "end=1" last.

MAX_STATUS_BYTES = 64 << 10  # an error line is at most ~16 KiB (4 KiB message, escaped)
_WAIT_STATUS_MAX = 0xFFFF
_COUNTER_MAX = 2**63 - 1  # what SQLite's INTEGER holds
RECORD_KEYS = ("status", "oom_kill", "peak", "cpu_usec", "stragglers", "end")
_RANGES = {"status": _WAIT_STATUS_MAX, "oom_kill": _COUNTER_MAX, "peak": _COUNTER_MAX,
           "cpu_usec": _COUNTER_MAX, "stragglers": _COUNTER_MAX, "end": 1}
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


class StatusError(ValueError):
    """A status file no gate writes: what is wrong with it, in words."""


def parse_status(data: bytes) -> ExitInfo:
    """The gate's record in `data`; ExitInfo(lost=True) if it holds none; StatusError if malformed."""
    if not data:
        return ExitInfo(lost=True)  # the gate ended (or was killed) before it wrote anything
    if len(data) > MAX_STATUS_BYTES:
        raise StatusError(f"larger than {MAX_STATUS_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise StatusError(f"byte 0x{data[e.start]:02x} at offset {e.start} is not ASCII") from None
    if not text.endswith("\n"):
        raise StatusError("truncated: its last line is incomplete")
    lines = text[:-1].split("\n")
    if lines == ["aborted=1"]:
        return ExitInfo(lost=True, aborted=True)
    error, first = "", 1
    if lines[0].startswith("error="):
        error, first = lines.pop(0)[len("error="):], 2
        if not _PRINTABLE.fullmatch(error):
            raise StatusError("the error line holds control characters")
    values: dict[str, int] = {}
    for n, line in enumerate(lines, first):
        key, sep, value = line.partition("=")
        if not sep:
            raise StatusError(f"line {n} is not key=value")
        if key not in _RANGES:
            raise StatusError(f"line {n}: unknown key {key[:40]!r}")
        if key in values:
            raise StatusError(f"line {n}: duplicate key {key!r}")
        if not _DECIMAL.fullmatch(value) or int(value) > _RANGES[key]:
            raise StatusError(f"line {n}: {key}={value[:40]!r} is not an integer in 0..{_RANGES[key]}")
        values[key] = int(value)
    missing = [k for k in RECORD_KEYS if k not in values]
    if "end" not in values:
        raise StatusError("truncated: no end marker")
    if missing:
        raise StatusError(f"{', '.join(missing)} missing")
    if tuple(values) != RECORD_KEYS:
        raise StatusError("its keys are not in the gate's order")
    if values["end"] != 1:
        raise StatusError("end=0 is not the gate's end marker")
    info = ExitInfo(error=error, oom_killed=values["oom_kill"] > 0, cpu_usec=values["cpu_usec"],
                    memory_peak=values["peak"], stragglers=values["stragglers"])
    _set_exit(info, values["status"])
    return info


def _user_env(uid: int, name: str) -> dict[str, str]:
    """HOME, USER, LOGNAME and SHELL of the job's user, as a login would set them."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return {}
    return {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name, "SHELL": pw.pw_shell or "/bin/sh"}
