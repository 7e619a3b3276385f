"""--dependency: Slurm's kinds parsed, and the verdicts the job's launcher reaches on what it waits for.

afterok is schedd's own After: the daemon keeps the job pending, and a dependency that fails ends it
FAILED with reason `dependency` (DependencyNeverSatisfied). The other kinds have no key in schedd, so
the launcher (job.py) waits for them inside the job's allocation, holding its CPUs, polling schedd:
  - afterany:ID  the job ended (any state);
  - after:ID     the job started (or ended);
  - afternotok:ID  the job ended in a state other than COMPLETED (FAILED, CANCELLED, TIMEOUT,
    OUT_OF_MEMORY, NODE_FAIL: Slurm's test is "finished and not complete"); for an array id, once
    every task ended and at least one did not complete. When it COMPLETED instead the dependency
    can never be satisfied: the launcher cancels its own job before the script runs (Slurm's
    kill_invalid_depend; a job left pending for ever would hold its CPUs for ever here);
  - singleton    no earlier job (a lower id) of the same user and name is still unfinished.
A dependency whose job schedd no longer knows (purged after keep_finished) counts as satisfied,
as in Slurm, where a dependency on a job gone from the controller is lifted.
"""

from __future__ import annotations

from typing import Any

from schedd_slurm import common
from schedd_slurm.options import SlurmUsage

KINDS = ("afterok", "afterany", "after", "afternotok", "singleton")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
UNFINISHED = ("PENDING", "HELD", "RUNNING", "SUSPENDED")  # ListJobs' states of a job not yet ended
GONE = "GONE"  # a job schedd answers NotFound for


def problem(detail: str = "") -> SlurmUsage:
    return SlurmUsage("Batch job submission failed: Job dependency problem" + (f" ({detail})" if detail else ""))


def parse(text: str) -> list[tuple[str, list[common.JobRef]]]:
    """`kind:ID[:ID...]` clauses separated by `,` (or `?`, read the same way: all must hold) ->
    [(kind, refs)]; singleton has no ids. `+time` after an id (after:ID+MIN) is accepted and not acted on."""
    sep = "?" if "?" in text else ","
    out: list[tuple[str, list[common.JobRef]]] = []
    for clause in text.split(sep):
        kind, colon, ids = clause.strip().partition(":")
        kind = kind.strip().lower()
        if kind == "singleton":
            if colon:
                raise problem("singleton takes no job ids")
            out.append((kind, []))
            continue
        if kind not in KINDS:
            if kind in ("aftercorr", "afterburstbuffer"):
                raise problem(f"{kind} is not supported by schedd: use afterok, afterany, afternotok, after "
                              f"or singleton")
            raise problem(f"{kind or clause!r} is not a dependency kind: use afterok, afterany, afternotok, after "
                          f"or singleton")
        refs = common.parse_refs([r.split("+")[0] for r in ids.split(":") if r], "sbatch")
        if not refs:
            raise problem(f"{kind} needs a job id")
        out.append((kind, refs))
    return out


def not_ok_verdict(states: list[str]) -> bool | None:
    """One afternotok job (an array id: its tasks' states): None while any has not ended, True once
    all ended and one did not complete (or is gone), False when every one COMPLETED: never satisfiable."""
    if any(s not in TERMINAL and s != GONE for s in states):
        return None
    return any(s != "COMPLETED" for s in states)


def started(job: dict[str, Any] | None) -> bool:
    """after: the job started (or ended without starting, e.g. cancelled while pending), or is gone."""
    return job is None or bool(job.get("StartTime")) or job["State"] in TERMINAL


def ended(job: dict[str, Any] | None) -> bool:
    return job is None or job["State"] in TERMINAL


def singleton_blockers(rows: list[dict[str, Any]], job_id: int, name: str, uid: int) -> list[int]:
    """The jobs a singleton job waits for: submitted earlier (a lower id: ids are handed out in
    submit order, an array's tasks included), same user and name, not ended. Later ones never count,
    so two singleton jobs waiting in their launchers cannot wait for each other."""
    return [r["Id"] for r in rows
            if r["Id"] < job_id and r.get("Name") == name and r.get("User", uid) == uid
            and r["State"] in UNFINISHED]


def describe(after: list[int], waits: dict[str, Any]) -> str:
    """scontrol's Dependency= text: the clauses as Slurm spells them, or (null)."""
    parts = [f"afterok:{a}" for a in after]
    parts += [f"afterany:{a}" for a in waits.get("afterany", [])]
    parts += [f"after:{a}" for a in waits.get("after", [])]
    parts += [f"afternotok:{g[0]}" for g in waits.get("afternotok", []) if g]
    if waits.get("singleton"):
        parts.append("singleton")
    return ",".join(parts) or "(null)"
