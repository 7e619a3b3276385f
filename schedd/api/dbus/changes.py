"""Which D-Bus properties an engine change touches.

The engine reports the Job fields a transition wrote and the manager facts that moved
(schedd.core.engine.events); only this adapter knows property names. Which fields each
property is computed from is declared once, beside its getter (schedd.api.jobview.JOB_KEYS).
"""

from __future__ import annotations

from collections.abc import Iterable

from schedd.api.jobview import JOB_KEYS
from schedd.core.engine.events import COUNTS, JOB_FIELDS, RESOURCES


def _by_field() -> dict[str, tuple[str, ...]]:
    """Job field -> the job properties that read it, from the view's declaration (jobview.JOB_KEYS).
    Fields no property reads (handle, origin and remote bookkeeping, spec.hold, ...) are absent."""
    out: dict[str, list[str]] = {}
    for key in JOB_KEYS:
        for f in key.fields:
            out.setdefault(f, []).append(key.name)
    return {f: tuple(props) for f, props in out.items()}


JOB_PROPERTIES_OF: dict[str, tuple[str, ...]] = _by_field()
assert JOB_PROPERTIES_OF.keys() - {"id"} <= JOB_FIELDS

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
