"""Reading a job's output file for a client (ReadOutput, peers asking for a forwarded job's logs,
the dashboard's tail).

The daemon runs as root but must never read a file for someone who could not: the
job opens its output files as its own user, so a file the job wrote is owned by that
user. Anything else at that path (a link to /etc/shadow, a file someone else owns, a
FIFO, a tty, a device such as /dev/watchdog) is refused, whatever the path says.

The path is first opened with O_PATH|O_NOFOLLOW, which opens nothing behind it (no
device driver's open, no FIFO rendezvous, no controlling terminal); only once fstat
shows a regular file of the job's user is it reopened for reading through
/proc/self/fd. All of it runs on a small pool of threads, never on the event loop: a
stalled mount blocks a thread, not the daemon, and each user's files (the job's user, who
chose the path) may hold at most PER_USER of those threads, so one user's stalled mount
leaves the others' reads their threads.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from schedd.errors import AccessDenied, InvalidArgument, InvalidState

MAX_CHUNK = 1 << 20  # bytes per call: D-Bus messages and HTTP answers stay small
READ_TIMEOUT_S = 10.0  # a caller is answered by then even if the file system never answers
# Its own threads: a read stuck on a dead mount must not take the loop's default executor with it.
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="schedd-output")
PER_USER = 2  # threads one user's output files may hold at once (counted until the read really ends)
_in_flight: Counter[int] = Counter()  # uid of the files' owner -> reads under way (on the loop only)
T = TypeVar("T")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _open_owned(path: str, uid: int) -> int:
    """An fd (O_RDONLY) on the job's output file, or AccessDenied: only a regular file its user owns."""
    try:
        pfd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise AccessDenied(f"cannot read {path}: {e.strerror}") from None
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode):
            raise AccessDenied(f"{path} is {_kind(st.st_mode)}, not a regular file; schedd reads only output "
                               "files the job wrote")
        if uid != 0 and st.st_uid != uid:
            raise AccessDenied(f"{path} is not owned by the job's user (uid {uid}); schedd reads only output "
                               "files the job wrote")
        try:
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise AccessDenied(f"cannot read {path}: {e.strerror}") from None
        again = os.fstat(fd)
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):  # never: the magic link is the same file
            os.close(fd)
            raise AccessDenied(f"{path} changed while it was opened; try again")
        return fd
    finally:
        os.close(pfd)


def read_output_blocking(path: str, uid: int, offset: int, limit: int = MAX_CHUNK) -> bytes:
    """Up to limit bytes of the job's output from offset; b'' at the end or before the file exists."""
    if not path:
        return b""
    if not 0 <= offset < 2**63:
        raise InvalidArgument(f"offset {offset} is not a position in a file")
    limit = max(0, min(limit, MAX_CHUNK))
    try:
        fd = _open_owned(path, uid)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, limit, offset)
    finally:
        os.close(fd)


def read_tail_blocking(path: str, uid: int, limit: int) -> bytes:
    """The last `limit` bytes of the job's output (the dashboard's job detail); b'' before it exists."""
    if not path:
        return b""
    try:
        fd = _open_owned(path, uid)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, limit, max(0, os.fstat(fd).st_size - limit))
    finally:
        os.close(fd)


async def _off_loop(path: str, uid: int, fn: Callable[..., T], *args: object) -> T:
    if _in_flight[uid] >= PER_USER:
        raise InvalidState(f"{_in_flight[uid]} reads of uid {uid}'s output files are still under way (is their file "
                           "system stalled?); try again later")
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(_POOL, fn, *args)
    _in_flight[uid] += 1

    def done(_f: asyncio.Future) -> None:
        _in_flight[uid] -= 1
        if _in_flight[uid] <= 0:
            del _in_flight[uid]

    fut.add_done_callback(done)
    try:
        return await asyncio.wait_for(asyncio.shield(fut), READ_TIMEOUT_S)
    except TimeoutError:
        raise InvalidState(f"reading {path} did not finish in {READ_TIMEOUT_S:g} s (is its file system "
                           "stalled?); try again later") from None


async def read_output(path: str, uid: int, offset: int, limit: int = MAX_CHUNK) -> bytes:
    """read_output_blocking, off the event loop."""
    if not 0 <= offset < 2**63:
        raise InvalidArgument(f"offset {offset} is not a position in a file")
    if not path:
        return b""
    return await _off_loop(path, uid, read_output_blocking, path, uid, offset, limit)


async def read_tail(path: str, uid: int, limit: int) -> bytes:
    """read_tail_blocking, off the event loop."""
    if not path:
        return b""
    return await _off_loop(path, uid, read_tail_blocking, path, uid, limit)
