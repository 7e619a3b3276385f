"""The data model: job states, the validated request (JobSpec) and the job record (Job)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from schedd import unit_name
from schedd.protocol import STATES, TERMINAL


class JobState(StrEnum):
    PENDING = "PENDING"
    HELD = "HELD"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def active(self) -> bool:
        """Holds an allocation (processes may exist)."""
        return self in (JobState.RUNNING, JobState.SUSPENDED)

    @property
    def queued(self) -> bool:
        """Waits to run (pending or held): what the per-user caps count and PendingJobs shows."""
        return self in (JobState.PENDING, JobState.HELD)


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
# The typed view of the contract's state names (protocol, for clients that do not load the core).
assert tuple(JobState) == STATES and {s.value for s in TERMINAL_STATES} == set(TERMINAL)


class Reason(StrEnum):
    """Why a job is where it is; systemd's result words where they fit."""

    SUCCESS = "success"
    EXIT_CODE = "exit-code"
    SIGNAL = "signal"
    OOM_KILL = "oom-kill"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    DEPENDENCY = "dependency"
    BEGIN_TIME = "begin-time"  # pending until its BeginTime (Slurm's BeginTime reason); holds nothing
    NODE_FAILURE = "node-failure"
    HELD = "held"
    RESOURCES = "resources"  # an executor could not start it (see the daemon log)
    LOST = "lost"  # its scope vanished while the daemon was down, no exit status recorded
    REQUEUED = "requeued"
    DRAINED = "drained"  # queued on a drained node (schedctl drain) that it may not leave


def now_usec() -> int:
    """Wall-clock µs since the epoch: systemd's convention for timestamps on the bus."""
    return time.time_ns() // 1000


@dataclass(slots=True)
class JobSpec:
    """A validated submission. Built in exactly one place: schedd.core.spec."""

    command: list[str]
    name: str
    cpus: int
    memory: int
    gpus: int = 0
    priority: int = 0
    working_directory: str = "/"
    environment: list[str] = field(default_factory=list)
    stdout_path: str = ""
    stderr_path: str = ""
    runtime_max_usec: int = 0
    hold: bool = False
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    after: list[int] = field(default_factory=list)
    # Not before this wall-clock time (µs since the epoch; 0: no such rule). Admission keeps it out
    # of the scheduler until then (engine/admission.py).
    begin_time: int = 0
    # Dependencies on any end (AfterAny) and on a failed end (AfterNotOk) of other jobs.
    after_any: list[int] = field(default_factory=list)
    after_not_ok: list[int] = field(default_factory=list)
    node: str = ""
    requeue: bool = True
    # Array tasks: the task's index (None: not an array task) and the array's cap on running tasks.
    array_task_id: int | None = None
    array_max_running: int = 0
    # The image the command runs in ("": none); only the executor knows how (schedd.executor.container).
    container: str = ""
    # Bytes of argv + environment as execve counts them (quota.exec_bytes), derived: 0 until counted.
    exec_size: int = field(default=0, compare=False, repr=False)

    def expand_paths(self, job_id: int, jobs_dir: str) -> None:
        """The output paths the job runs with: the default file jobs_dir/<id>/output when none is
        given, stderr with stdout when it has none, and %j in either as the job's id."""
        if not self.stdout_path:
            self.stdout_path = f"{jobs_dir}/{job_id}/output"
        self.stdout_path = self.stdout_path.replace("%j", str(job_id))
        self.stderr_path = (self.stderr_path or self.stdout_path).replace("%j", str(job_id))

    @property
    def owner(self) -> str:
        """Who it runs as, for people (logs, metrics labels, accounting): the name, else the uid."""
        return self.user_name or str(self.uid)


# One empty list shared by the empty list fields of jobs held in memory (most are empty: a held
# job has no CPUs, environment or dependencies; 56 bytes each, four per job). Nothing changes
# these lists in place -- the engine assigns new ones -- and tests/unit/test_scale_list.py checks
# that this one stays empty.
EMPTY: list = []

AWAITING_NODE = "*"  # Job.remote_node of a job of ours that waits for some node to take it


@dataclass(slots=True)
class Job:
    """A job as the daemon tracks it; the store keeps a durable copy of every field."""

    id: int
    spec: JobSpec
    state: JobState = JobState.PENDING
    reason: str = ""
    exit_code: int = 0
    assigned_cpus: list[int] = field(default_factory=list)
    assigned_gpus: list[int] = field(default_factory=list)
    node: str = ""  # where the current or last run is or was ("" until it starts); JobSpec.node is the request
    submit_time: int = 0
    start_time: int = 0
    end_time: int = 0
    cpu_time_usec: int = 0
    memory_peak: int = 0
    restarts: int = 0
    array_job_id: int = 0  # the id of the array's first task; 0: not an array task
    suspended_usec: int = 0  # time spent suspended in the current run (does not count toward the time limit)
    suspend_time: int = 0  # when the current suspension began; 0: not suspended
    # Executor's recovery data (JSON-able), e.g. the gate's pid and start time.
    handle: dict | None = None
    # Federation: a job run here for another node names its origin; a job of ours run
    # elsewhere names that node and its id there (0 while it is still to be forwarded).
    origin_node: str = ""
    origin_id: int = 0
    remote_node: str = ""
    remote_id: int = 0
    node_failures: int = 0  # how often a node running it went down (each may requeue it once)
    # Ours: how often it was forwarded (each forward is one attempt; retries of one share it). A copy:
    # the origin's attempt it is the copy of (a later attempt is a new copy, not a retried forward).
    attempt: int = 0
    # Ours: the node running its copy was granted the start (so it may be running there, whatever
    # the last state push said): a node failure then counts as a failure of a run.
    start_granted: bool = False

    @property
    def awaiting_node(self) -> bool:
        """Ours, to go to another node that is not chosen yet (every candidate was down or full)."""
        return self.remote_node == AWAITING_NODE

    @property
    def remote(self) -> bool:
        """Ours, but placed on a peer: no allocation, scope or scheduler entry here."""
        return bool(self.remote_node)

    def deadline(self) -> int | None:
        """When the time limit runs out (µs since the epoch); None without a limit or while suspended."""
        if not self.spec.runtime_max_usec or not self.start_time or self.suspend_time:
            return None
        return self.start_time + self.spec.runtime_max_usec + self.suspended_usec

    @property
    def unit(self) -> str:
        return unit_name(self.id)

    @property
    def uid(self) -> int:
        return self.spec.uid
