"""What one user may hold queued: a count of jobs and the bytes of their command lines.

A queued job (PENDING or HELD) pins its argv and environment in the daemon's memory, in the
store and on the bus; the caps bound what one user can make the daemon hold for everyone.
A batch that is still being validated (a big SubmitMany yields to the loop between chunks)
holds a reservation, so that submits arriving meanwhile see its jobs as already queued.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from schedd.errors import InvalidArgument
from schedd.core.model import JobSpec


def exec_bytes(spec: JobSpec) -> int:
    """Bytes the job's argv and environment take (as execve counts them: each string and its NUL).

    Counted once: build_spec records the sum it checks against max_argv_bytes; a spec loaded from
    the store is counted at its first use. Every queued/unqueued transition asks again."""
    if not spec.exec_size:
        spec.exec_size = sum(len(s.encode("utf-8", "surrogateescape")) + 1 for s in (*spec.command, *spec.environment))
    return spec.exec_size


@dataclass(slots=True)
class Usage:
    jobs: int = 0
    bytes: int = 0


class Caps(Protocol):
    """The configured caps ([jobs] in schedd.toml), read at each check so a changed config applies."""

    max_pending_per_user: int
    max_queued_bytes_per_user: int


_NONE = Usage()


class Quotas:
    """Per-uid usage of queued jobs plus reservations of batches in flight, against the caps."""

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.queued: dict[int, Usage] = defaultdict(Usage)
        self.reserved: dict[int, Usage] = defaultdict(Usage)
        # Queued jobs kept on disk (engine/loading.py), their bytes counted from their stored JSON
        # (never less than what loading them counts exactly).
        self.on_disk: dict[int, Usage] = defaultdict(Usage)

    def jobs(self, uid: int) -> int:
        """Queued jobs of uid, those on disk and those of its batches being submitted included."""
        return (self.queued.get(uid, _NONE).jobs + self.on_disk.get(uid, _NONE).jobs
                + self.reserved.get(uid, _NONE).jobs)

    def bytes(self, uid: int) -> int:
        return (self.queued.get(uid, _NONE).bytes + self.on_disk.get(uid, _NONE).bytes
                + self.reserved.get(uid, _NONE).bytes)

    def to_disk(self, uid: int, jobs: int, nbytes: int) -> None:
        d = self.on_disk[uid]
        d.jobs += jobs
        d.bytes += nbytes

    def from_disk(self, uid: int, jobs: int, nbytes: int) -> None:
        d = self.on_disk[uid]
        d.jobs -= jobs
        d.bytes -= nbytes
        if d.jobs <= 0 and d.bytes <= 0:
            del self.on_disk[uid]

    # -- queued jobs (the engine calls these on every transition into or out of PENDING/HELD) --

    def enter(self, uid: int, nbytes: int) -> None:
        u = self.queued[uid]
        u.jobs += 1
        u.bytes += nbytes

    def leave(self, uid: int, nbytes: int) -> None:
        u = self.queued[uid]
        u.jobs -= 1
        u.bytes -= nbytes
        if u.jobs <= 0 and u.bytes <= 0:
            del self.queued[uid]

    # -- checks and reservations ------------------------------------------------------

    def check_jobs(self, uid: int, more: int) -> None:
        """InvalidArgument unless uid may queue `more` jobs besides what it holds."""
        have, cap = self.jobs(uid), self.caps.max_pending_per_user
        if have + more > cap:
            asks = f" and asks for {more} more" if more > 1 else ""
            raise InvalidArgument(
                f"uid {uid} has {have} queued jobs (pending or held){asks}; this daemon queues at most "
                f"{cap} per user (max_pending_per_user): wait for some to start"
            )

    def check_bytes(self, uid: int, more: int, batch: int = 0) -> None:
        """InvalidArgument unless uid may queue `more` bytes; `batch`: bytes its request reserved already."""
        have, cap = self.bytes(uid), self.caps.max_queued_bytes_per_user
        if have + more > cap:
            asks = f"asks for {batch + more} more" if not batch else f"asks for {batch + more} or more"
            raise InvalidArgument(
                f"uid {uid} holds {have - batch} bytes of Command and Environment in queued jobs (pending or held) "
                f"and {asks}; this daemon holds at most {cap} bytes per user (max_queued_bytes_per_user): "
                f"wait for some to start, or pass large data in files"
            )

    def reserve(self, uid: int, jobs: int, nbytes: int, batch: int = 0) -> None:
        """Check both caps for jobs of a request being built, then count them as taken.
        batch: bytes this request has reserved for uid before (for the words of a refusal)."""
        if jobs:
            self.check_jobs(uid, jobs)
        self.check_bytes(uid, nbytes, batch)
        r = self.reserved[uid]
        r.jobs += jobs
        r.bytes += nbytes

    def unreserve(self, uid: int, jobs: int, nbytes: int) -> None:
        r = self.reserved[uid]
        r.jobs -= jobs
        r.bytes -= nbytes
        if r.jobs <= 0 and r.bytes <= 0:
            del self.reserved[uid]
