"""A pool of pre-forked gates, so that no gate is spawned between "the scheduler picked this job" and
StartTransientUnit.

`schedd-gate --zygote` (gate.c) runs beside the daemon and forks one gate for each request byte
on a SOCK_SEQPACKET socket; each fork is made with CLONE_PARENT, so the gate is the daemon's own
child (reaped by it, its wait status read as for a spawned gate), and the zygote answers with the
gate's pid and the write end of its release pipe (SCM_RIGHTS). A job is then handed to a ready
gate as one message on that pipe (GateRunner.spawn), and released there with "go" as before. The
pool asks for the replacements once the start is done (refill_later; at once when it is empty), so
the zygote's fork does not compete with systemd making the scope. Where the pool is empty or broken, GateRunner spawns a gate
the old way: the pool only ever makes starts cheaper, never impossible.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
from collections import deque
from dataclasses import dataclass

log = logging.getLogger(__name__)

# What a gate (and the zygote) is started with: no signal blocked, these at their defaults.
SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
JOB_MAGIC = b"SGJ1"


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (a guard against PID reuse)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])


def default_size() -> int:
    """As many ready gates as this node has CPUs to start jobs on (at least 2, at most 16)."""
    return max(2, min(len(os.sched_getaffinity(0)), 16))


@dataclass(slots=True)
class ReadyGate:
    pid: int
    start_time: int | None
    release_fd: int


def job_message(fields: list[str], args: list[str], env: list[str]) -> bytes:
    """What a pooled gate reads before its release: header, then NUL-terminated fields
    (STATUS_PATH UID GID GROUPS CWD STDOUT STDERR ACCT), NARGS, the arguments, the environment."""
    parts = [*fields, str(len(args)), *args, *env]
    body = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in parts)
    return JOB_MAGIC + struct.pack("=I", len(body)) + body


class GatePool:
    """Ready gates forked by one zygote; `take` hands one out and asks for its replacement."""

    def __init__(self, binary: str, size: int | None = None) -> None:
        self.binary = binary
        self.size = size or default_size()
        self._ready: deque[ReadyGate] = deque()
        self._asked = 0
        self._sock: socket.socket | None = None
        self._zygote: int | None = None
        self._zygote_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.broken = ""  # why the pool gives no gates any more (then every gate is spawned)
        self.taken = 0  # gates handed out
        self.missed = 0  # takes that found the pool empty (a gate was spawned instead)
        self._refill_due = False

    def start(self) -> None:
        """Spawn the zygote and ask it for a full pool (answers arrive on the event loop)."""
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        fd = fcntl_high(theirs.detach())
        try:
            self._zygote = os.posix_spawn(
                self.binary, [self.binary, "--zygote"], {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, fd, 3),
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                ],
                setsid=True, setsigmask=(), setsigdef=SIGDEF,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            os.close(fd)
        ours.setblocking(False)
        self._sock = ours
        self._zygote_fd = os.pidfd_open(self._zygote)
        self._loop.add_reader(ours.fileno(), self._on_answer)
        self._loop.add_reader(self._zygote_fd, self._zygote_ended)
        self._fill()

    def __len__(self) -> int:
        return len(self._ready)

    def _fill(self) -> None:
        while self._sock is not None and len(self._ready) + self._asked < self.size:
            try:
                self._sock.send(b"g")
            except BlockingIOError:
                return
            except OSError as e:
                self._break(f"cannot ask the gate zygote for a gate: {e}")
                return
            self._asked += 1

    def _on_answer(self) -> None:
        while self._sock is not None:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._sock, 16, 1, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._break(f"cannot read the gate zygote's answer: {e}")
                return
            if not data:
                self._break("the gate zygote closed its socket")
                return
            self._asked = max(0, self._asked - 1)
            (pid,) = struct.unpack("=i", data[:4]) if len(data) >= 4 else (0,)
            if pid <= 0 or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                log.warning("the gate zygote could not fork a gate (%s); spawning gates meanwhile",
                            os.strerror(-pid) if pid < 0 else "malformed answer")
                continue  # asked again at the next take
            self._ready.append(ReadyGate(pid, proc_start_time(pid), fds[0]))

    def take(self) -> ReadyGate | None:
        """A gate waiting for its job, or None (spawn one instead); a replacement is asked for."""
        while self._ready:
            g = self._ready.popleft()
            try:
                gone = os.waitpid(g.pid, os.WNOHANG)[0] != 0
            except ChildProcessError:
                gone = True
            if gone:  # died unused (killed from outside): not worth a job
                os.close(g.release_fd)
                continue
            if not self._ready:
                self._fill()  # the last one: its replacements now, else the next start may find none
            self.taken += 1
            return g
        self._fill()
        self.missed += 1
        return None

    def refill_later(self) -> None:
        """Ask for the gates taken since, once the start that took one is done: the zygote's fork then
        does not compete for a CPU with systemd making the scope (on a small node it did, on the path
        from submit to RUNNING). Two loop turns later: after the start's own signals are written."""
        if self._loop is not None and self._sock is not None and not self._refill_due:
            self._refill_due = True
            self._loop.call_soon(self._loop.call_soon, self._refill)

    def _refill(self) -> None:
        self._refill_due = False
        self._fill()

    def _zygote_ended(self) -> None:
        self._break("the gate zygote exited")

    def _break(self, why: str) -> None:
        if not self.broken:
            log.warning("%s; gates are spawned one by one from now on", why)
        self.broken = why
        self.close()

    def close(self) -> None:
        """Stop the zygote and the unused gates (each exits when its pipe closes), and reap them."""
        if self._sock is not None:
            log.info("gate pool: %d gates handed out, %d starts found it empty", self.taken, self.missed)
        loop = self._loop
        if self._sock is not None:
            if loop is not None:
                loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._zygote_fd is not None:
            if loop is not None:
                loop.remove_reader(self._zygote_fd)
            os.close(self._zygote_fd)
            self._zygote_fd = None
        pids = [g.pid for g in self._ready]
        for g in self._ready:
            os.close(g.release_fd)
            try:
                os.kill(g.pid, signal.SIGKILL)  # unused: nothing of a job can be lost (and a stopped one would hang us)
            except ProcessLookupError:
                pass
        self._ready.clear()
        self._asked = 0
        if self._zygote is not None:
            try:
                os.kill(self._zygote, signal.SIGKILL)  # it holds nothing; a stopped one would hang the wait
            except ProcessLookupError:
                pass
            pids.append(self._zygote)
            self._zygote = None
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def fcntl_high(fd: int) -> int:
    """fd moved above the slots (3-5) the gate's dup2 actions write, close-on-exec."""
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new
