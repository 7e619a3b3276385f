"""Which D-Bus properties an engine change touches.

The engine reports the Job fields a transition wrote and the manager facts that moved
(schedd.core.engine.events); only this adapter knows property names. A property computed from
several fields (JOB_GETTERS in service.py) is listed under each field it reads that can change:
WaitUSec under start_time, RunUSec under end_time (it reads 0 until the job ends, and every way
back from an end -- a requeue -- writes end_time too), SuspendedUSec under both suspension fields.
"""

from __future__ import annotations

from collections.abc import Iterable

from schedd.core.engine.events import COUNTS, JOB_FIELDS, RESOURCES

# Job field -> the job properties that read it. Fields with no property (handle, origin and
# remote bookkeeping, spec.hold, ...) are simply absent.
JOB_PROPERTIES_OF: dict[str, tuple[str, ...]] = {
    "state": ("State",),
    "reason": ("Reason",),
    "exit_code": ("ExitCode",),
    "assigned_cpus": ("AssignedCPUs",),
    "assigned_gpus": ("AssignedGPUs",),
    "node": ("Node",),
    "submit_time": ("SubmitTime", "WaitUSec"),
    "start_time": ("StartTime", "WaitUSec"),
    "end_time": ("EndTime", "RunUSec"),
    "cpu_time_usec": ("CPUTimeUSec",),
    "memory_peak": ("MemoryPeak",),
    "restarts": ("Restarts",),
    "array_job_id": ("ArrayJobId",),
    "suspended_usec": ("SuspendedUSec",),
    "suspend_time": ("SuspendedUSec",),
    "spec.name": ("Name",),
    "spec.command": ("Command",),
    "spec.uid": ("User",),
    "spec.user_name": ("UserName",),
    "spec.priority": ("Priority",),
    "spec.cpus": ("CPUs",),
    "spec.memory": ("Memory",),
    "spec.gpus": ("GPUs",),
    "spec.working_directory": ("WorkingDirectory",),
    "spec.stdout_path": ("StdoutPath",),
    "spec.stderr_path": ("StderrPath",),
    "spec.runtime_max_usec": ("RuntimeMaxUSec",),
    "spec.after": ("After",),
    "spec.array_task_id": ("ArrayTaskId",),
    "spec.array_max_running": ("ArrayMaxRunning",),
}
assert JOB_PROPERTIES_OF.keys() <= JOB_FIELDS

MANAGER_PROPERTIES_OF: dict[str, tuple[str, ...]] = {
    COUNTS: ("PendingJobs", "RunningJobs"),
    RESOURCES: ("AvailableCPUs", "AvailableMemory", "AvailableGPUs"),
}


def job_properties(fields: Iterable[str]) -> set[str]:
    """The job properties whose values the changed fields may have changed."""
    return {p for f in fields for p in JOB_PROPERTIES_OF.get(f, ())}


def manager_properties(facts: Iterable[str]) -> set[str]:
    """The Manager properties behind the changed facts."""
    return {p for f in facts for p in MANAGER_PROPERTIES_OF[f]}
