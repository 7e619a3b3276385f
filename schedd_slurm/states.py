"""schedd's state and reason -> Slurm's state words and codes, exactly as clients compare them.

Plain `CANCELLED` (never `CANCELLED by <uid>`: Snakemake compares whole words), `TIMEOUT`,
`OUT_OF_MEMORY` and `NODE_FAIL` from schedd's reasons; a held job is PENDING with reason
JobHeldUser, as in Slurm.
"""

from __future__ import annotations

CODES = {
    "PENDING": "PD", "RUNNING": "R", "SUSPENDED": "S", "COMPLETED": "CD", "CANCELLED": "CA",
    "FAILED": "F", "TIMEOUT": "TO", "NODE_FAIL": "NF", "PREEMPTED": "PR", "BOOT_FAIL": "BF",
    "DEADLINE": "DL", "OUT_OF_MEMORY": "OOM", "COMPLETING": "CG", "REQUEUED": "RQ",
}
ALL = tuple(CODES)
# Without -t, squeue shows these only.
QUEUE_DEFAULT = ("PENDING", "RUNNING", "SUSPENDED", "COMPLETING")
# Slurm's state words -> the schedd states that may show as them (for ListJobs' States filter).
SCHEDD_STATES = {
    "PENDING": ("PENDING", "HELD"), "RUNNING": ("RUNNING",), "SUSPENDED": ("SUSPENDED",),
    "COMPLETED": ("COMPLETED",), "CANCELLED": ("CANCELLED",), "FAILED": ("FAILED",),
    "TIMEOUT": ("FAILED",), "NODE_FAIL": ("FAILED",), "OUT_OF_MEMORY": ("FAILED",),
    "PREEMPTED": (), "BOOT_FAIL": (), "DEADLINE": (), "COMPLETING": (), "REQUEUED": (),
}


def slurm_state(state: str, reason: str) -> str:
    """One job's Slurm state word."""
    if state in ("PENDING", "HELD"):
        return "PENDING"
    if state == "FAILED":
        return {"timeout": "TIMEOUT", "oom-kill": "OUT_OF_MEMORY", "node-failure": "NODE_FAIL"}.get(reason, "FAILED")
    if state == "CANCELLED" and reason == "timeout":
        return "TIMEOUT"
    if state in ("RUNNING", "SUSPENDED", "COMPLETED", "CANCELLED"):
        return state
    return "UNKNOWN"


def slurm_reason(state: str, reason: str, exit_code: int = 0) -> str:
    """squeue's %r / NODELIST(REASON) and scontrol's Reason: why it waits, or why it ended badly."""
    if state == "HELD":
        return "JobHeldUser"
    if state == "PENDING":
        return {"dependency": "Dependency", "requeued": "BeginTime", "begin-time": "BeginTime"}.get(reason, "Resources" if reason == "resources"
                                                                           else "Priority" if reason else "None")
    if state == "FAILED":
        if reason == "signal" and exit_code > 128:
            import signal

            try:
                name = signal.Signals(exit_code - 128).name[3:].capitalize()
            except ValueError:
                name = "Unknown"
            return f"RaisedSignal:{exit_code - 128}({name})"
        return {"dependency": "DependencyNeverSatisfied", "timeout": "TimeLimit", "oom-kill": "OutOfMemory",
                "node-failure": "NodeDown"}.get(reason, "NonZeroExitCode")
    return "None"


def parse_states(text: str, prog: str) -> set[str]:
    """squeue -t / sacct -s: comma list of names or codes, any case, `all`."""
    from schedd_slurm.options import SlurmUsage

    by_code = {c: n for n, c in CODES.items()}
    out: set[str] = set()
    for word in text.split(","):
        w = word.strip().upper()
        if not w:
            continue
        if w == "ALL":
            out.update(ALL)
        elif w in CODES:
            out.add(w)
        elif w in by_code:
            out.add(by_code[w])
        else:
            raise SlurmUsage(f"Invalid job state specified: {word}")
    return out
