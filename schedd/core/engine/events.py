"""What the engine tells its listeners, in the engine's own words.

The engine says which Job fields a transition wrote, and which manager facts moved; it never
names a D-Bus property. Each front end turns these into its own vocabulary (the D-Bus adapter:
schedd.api.dbus.changes), as systemd's core says "this unit changed" and dbus-unit.c decides
which properties that touches.

Field names are Job attribute names (`state`, `start_time`, ...), a JobSpec attribute as
`spec.<name>` (`spec.stdout_path`).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Protocol

from schedd.core.model import Job, JobSpec, JobState

JOB_FIELDS = frozenset(f.name for f in fields(Job) if f.name != "spec") | frozenset(
    f"spec.{f.name}" for f in fields(JobSpec))

# Manager facts: the queue's totals (pending incl. held, running incl. suspended) and the free resources.
COUNTS = "counts"
RESOURCES = "resources"
MANAGER_FACTS = frozenset({COUNTS, RESOURCES})

TRANSITION = frozenset({"state", "reason"})  # every transition writes both (Engine._set)
START_FIELDS = frozenset({"start_time", "assigned_cpus", "assigned_gpus", "node"})  # a run began
END_FIELDS = frozenset({"exit_code", "end_time", "cpu_time_usec", "memory_peak"})  # a run ended
# What a run leaves on a job and a requeue clears (Engine._clear_run), so the next run starts fresh.
RUN_FIELDS = frozenset({"exit_code", "start_time", "end_time", "cpu_time_usec", "memory_peak",
                        "assigned_cpus", "assigned_gpus", "suspended_usec", "suspend_time", "handle"})
assert START_FIELDS | END_FIELDS | RUN_FIELDS | TRANSITION <= JOB_FIELDS


class Listener(Protocol):
    """A front end that mirrors the engine's jobs (the D-Bus adapter, metrics, the dashboard, the federation)."""

    def job_added(self, job: Job) -> None: ...
    def job_changed(self, job: Job, fields: frozenset[str], old_state: JobState) -> None: ...
    def job_released(self, job: Job) -> None: ...
    # A live job left memory for the store (a held one: loading.py) or came back: no change a
    # client sees, its path answers either way; a mirror drops or takes its reference.
    def job_unloaded(self, job: Job) -> None: ...
    def job_loaded(self, job: Job) -> None: ...
    def manager_changed(self, facts: frozenset[str]) -> None: ...
    # Optional. drain: awaited between slices of a big batch, to let a backlog of the listener's catch up.
