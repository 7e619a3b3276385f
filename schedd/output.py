"""Reading a job's output file for a client (ReadOutput, and peers asking for a forwarded job's logs).

The daemon runs as root but must never read a file for someone who could not: the
job opens its output files as its own user, so a file the job wrote is owned by that
user. Anything else at that path (a link to /etc/shadow, a file someone else owns)
is refused, whatever the path says.
"""

from __future__ import annotations

import os
import stat

from .errors import AccessDenied, InvalidArgument

MAX_CHUNK = 1 << 20  # bytes per call: D-Bus messages and HTTP answers stay small


def _open_owned(path: str, uid: int) -> int:
    """An fd on the job's output file, or AccessDenied: only a regular file its user owns."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise AccessDenied(f"cannot read {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise AccessDenied(f"{path} is not a regular file; schedd reads only output files the job wrote")
    if uid != 0 and st.st_uid != uid:
        os.close(fd)
        raise AccessDenied(f"{path} is not owned by the job's user (uid {uid}); schedd reads only output "
                           "files the job wrote")
    return fd


def read_output(path: str, uid: int, offset: int, limit: int = MAX_CHUNK) -> bytes:
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


def read_tail(path: str, uid: int, limit: int) -> bytes:
    """The last `limit` bytes of the job's output (the dashboard's job detail); b'' before it exists."""
    try:
        fd = _open_owned(path, uid)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, limit, max(0, os.fstat(fd).st_size - limit))
    finally:
        os.close(fd)
