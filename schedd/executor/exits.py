"""What the executor seam hands back: how a job ended (ExitInfo, through ExitCallback) and why a call
did not happen (ExecutorError, StartWithdrawn). Kept apart from the seam so a reader of an exit
need not read the executors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


class ExecutorError(Exception):
    """The executor could not reach what runs the jobs, or start, stop or signal a job; the message says
    why (a start that raises it marks the job failed)."""


class StartWithdrawn(Exception):
    """Raised by the awaitable start() is given: the job must not run after all (cancelled while it
    was being started). The executor undoes what it did so far and lets it through."""


@dataclass(slots=True)
class ExitInfo:
    """How a job's main process ended, as recorded inside its scope."""

    exit_code: int = 0  # the exit code, or 128+N when killed by signal N (the shell's convention)
    signal: int = 0
    oom_killed: bool = False
    cpu_usec: int = 0
    memory_peak: int = 0
    error: str = ""  # a setup failure (chdir, open output, exec), in words
    lost: bool = False  # no status was recorded (the supervisor itself was killed)
    stragglers: int = 0  # processes left in the job's cgroup after its main process ended
    aborted: bool = False  # the program never started (the gate was never released): safe to run again
    malformed: str = ""  # the status file is not one a gate writes (what is wrong, in words): the result is lost
    # The gate itself failed before it could run the program or record its end (it could not read its
    # release pipe or open its status file, was released without go, could not fork): exit_code is the
    # gate's own, not the job's.
    gate_failed: bool = False


ExitCallback = Callable[[int, ExitInfo], None]
