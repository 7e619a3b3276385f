"""A job as the contract's keys show it, for every API: D-Bus properties and GetJob, the dashboard,
the peer API.

One row per Job property (the names and D-Bus signatures are protocol.JOB_PROPERTIES): how its
plain value is read from a Job, and which Job fields it is computed from (named as the engine
reports changed fields: "start_time", "spec.name"), so which properties a change touches can be
derived from here. The D-Bus adapter wraps the values in Variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable

from schedd.core import stats
from schedd.core.model import Job, now_usec
from schedd.protocol import JOB_PROPERTIES


@dataclass(frozen=True, slots=True)
class JobKey:
    name: str
    get: Callable[[Job], Any]
    fields: tuple[str, ...]  # the Job fields whose change can change the value
    direct: bool = False  # the value is its one field as it is (no conversion)


def _field(name: str, field: str) -> JobKey:
    """A property that is one Job field as it is."""
    return JobKey(name, attrgetter(field), (field,), direct=True)


def _suspended_usec(j: Job) -> int:
    return j.suspended_usec + (now_usec() - j.suspend_time if j.suspend_time else 0)


JOB_KEYS: tuple[JobKey, ...] = (
    _field("Id", "id"),
    _field("Name", "spec.name"),
    _field("Command", "spec.command"),
    _field("User", "spec.uid"),
    _field("UserName", "spec.user_name"),
    JobKey("State", attrgetter("state.value"), ("state",)),
    _field("Reason", "reason"),
    _field("ExitCode", "exit_code"),
    _field("Priority", "spec.priority"),
    _field("CPUs", "spec.cpus"),
    _field("Memory", "spec.memory"),
    _field("GPUs", "spec.gpus"),
    _field("AssignedCPUs", "assigned_cpus"),
    _field("AssignedGPUs", "assigned_gpus"),
    JobKey("Unit", attrgetter("unit"), ("id",)),
    _field("Node", "node"),
    _field("WorkingDirectory", "spec.working_directory"),
    _field("StdoutPath", "spec.stdout_path"),
    _field("StderrPath", "spec.stderr_path"),
    _field("SubmitTime", "submit_time"),
    _field("StartTime", "start_time"),
    _field("EndTime", "end_time"),
    _field("CPUTimeUSec", "cpu_time_usec"),
    _field("MemoryPeak", "memory_peak"),
    _field("RuntimeMaxUSec", "spec.runtime_max_usec"),
    _field("After", "spec.after"),
    _field("Restarts", "restarts"),
    _field("ArrayJobId", "array_job_id"),
    JobKey("ArrayTaskId", lambda j: j.spec.array_task_id or 0, ("spec.array_task_id",)),
    _field("ArrayMaxRunning", "spec.array_max_running"),
    JobKey("SuspendedUSec", _suspended_usec, ("suspended_usec", "suspend_time")),
    # Fixed once known (0 before, like the times): a property must not change without PropertiesChanged.
    JobKey("WaitUSec", lambda j: stats.wait_usec(j.submit_time, j.start_time) if j.start_time else 0,
           ("submit_time", "start_time")),
    # Reads 0 until end_time is set, and every write of start_time after an end (a requeue)
    # writes end_time too: end_time alone decides when it changes.
    JobKey("RunUSec", lambda j: stats.run_usec(j.start_time, j.end_time) if j.end_time else 0,
           ("end_time",)),
    _field("Container", "spec.container"),
    _field("BeginTime", "spec.begin_time"),
    _field("AfterAny", "spec.after_any"),
    _field("AfterNotOk", "spec.after_not_ok"),
)

JOB_GETTERS: dict[str, Callable[[Job], Any]] = {k.name: k.get for k in JOB_KEYS}
assert list(JOB_GETTERS) == list(JOB_PROPERTIES)


def job_record(job: Job) -> dict[str, Any]:
    """Every property of the job, in the contract's order: what GetJob answers, as plain values."""
    return {k.name: k.get(job) for k in JOB_KEYS}
