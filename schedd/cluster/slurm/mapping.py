"""schedd <-> Slurm, pure: a forwarded spec as a slurmrestd v0.0.38 job submission, a Slurm job as the
federation's record of a copy (schedd.cluster.wire.job_state_json's keys), Slurm's nodes as a load.

Shapes from Slurm 22.05's src/plugins/openapi/v0.0.38 (jobs.c: the submission keys are sbatch's long
options; dump_job_info: the job record; nodes.c: the node record). Everything slurmrestd sends is
checked here: a record that is not what Slurm sends is refused (BadRecord), never half applied.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

MIB = 1 << 20
U32 = (1 << 32) - 1
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
COMMENT = re.compile(r"schedd:([A-Za-z0-9_.-]{1,64}):(\d{1,19}):(\d{1,9})")  # origin, its id, attempt (fullmatch)

# Slurm job_state_string() -> (schedd state, reason). Reasons are schedd's (systemd's words).
STATES: dict[str, tuple[str, str]] = {
    "PENDING": ("PENDING", ""),
    "REQUEUED": ("PENDING", "requeued"),
    "REQUEUE_FED": ("PENDING", "requeued"),
    "REQUEUE_HOLD": ("HELD", "held"),
    "RESV_DEL_HOLD": ("HELD", "held"),  # held by Slurm: its reservation was deleted
    "CONFIGURING": ("RUNNING", ""),
    "RUNNING": ("RUNNING", ""),
    "COMPLETING": ("RUNNING", ""),
    "RESIZING": ("RUNNING", ""),
    "SIGNALING": ("RUNNING", ""),
    "STAGE_OUT": ("RUNNING", ""),
    "SUSPENDED": ("SUSPENDED", ""),
    "STOPPED": ("SUSPENDED", ""),
    "COMPLETED": ("COMPLETED", "success"),
    "FAILED": ("FAILED", "exit-code"),
    "SPECIAL_EXIT": ("FAILED", "exit-code"),
    "TIMEOUT": ("FAILED", "timeout"),
    "DEADLINE": ("FAILED", "timeout"),
    "OUT_OF_MEMORY": ("FAILED", "oom-kill"),
    "NODE_FAIL": ("FAILED", "node-failure"),
    "BOOT_FAIL": ("FAILED", "node-failure"),
    "PREEMPTED": ("FAILED", "signal"),
    "CANCELLED": ("CANCELLED", "cancelled"),
    "REVOKED": ("CANCELLED", "cancelled"),
}
HELD_REASONS = {"JobHeldUser", "JobHeldAdmin"}  # PENDING for these is schedd's HELD
DEPENDENCY_REASONS = {"DependencyNeverSatisfied"}  # PENDING for ever: schedd ends it FAILED dependency
# FAILED by slurmctld itself, the job's program never having run to an end (job_mgr.c sets exit_code = 1,
# which as a wait status would read "killed by signal 1"): schedd's `resources`, exit code 0.
NOT_RUN_REASONS = {"JobLaunchFailure", "SystemFailure", "BadConstraints"}
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
# Node states (nodes.c _get_long_node_state, lower case) whose CPUs count as the cluster's.
USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing"}
UNUSABLE_FLAGS = {"DRAIN", "DRAINING", "DRAINED", "FAIL", "MAINTENANCE", "RESERVED", "POWERED_DOWN",
                  "POWERING_DOWN", "NOT_RESPONDING"}


class BadRecord(ValueError):
    """slurmrestd sent something that is not what Slurm sends."""


@dataclass(frozen=True)
class Tag:
    origin: str
    origin_id: int
    attempt: int

    def text(self) -> str:
        return f"schedd:{self.origin}:{self.origin_id}:{self.attempt}"

    @classmethod
    def parse(cls, comment: Any) -> "Tag | None":
        m = COMMENT.fullmatch(comment) if isinstance(comment, str) else None
        return cls(m[1], int(m[2]), int(m[3])) if m else None


def _slurm_path(path: str, origin_id: int) -> str:
    """A schedd output path (%j: the schedd job's id) as a Slurm filename pattern (no other % expands).
    A backslash anywhere turns Slurm's expansion off and is itself dropped (slurmd/common/fname.c
    remove_path_slashes): such a path goes with its backslashes doubled and its % as they are."""
    if "\\" in path:
        return path.replace("%j", str(origin_id)).replace("\\", "\\\\")
    return path.replace("%", "%%").replace("%%j", str(origin_id))


def expand_path(pattern: str, job_id: int) -> str:
    """The file Slurm writes for an output pattern as it reports it: %j and %% (the only patterns schedd
    sends), or, with a backslash in it, no expansion and each escaping backslash dropped."""
    if "\\" in pattern:
        return re.sub(r"\\(\\?)", r"\1", pattern)
    return re.sub(r"%(%|j)", lambda m: "%" if m[1] == "%" else str(job_id), pattern)


def submission(spec: dict[str, Any], tag: Tag, *, partition: str = "", dependency: list[int] = (),
               array: tuple[int, int] | None = None) -> dict[str, Any]:
    """POST /slurm/v0.0.38/job/submit body for a forwarded spec (schedd.cluster.wire.spec_to_json's keys).
    array: (array job id, task id) of a schedd array task (one Slurm job per task)."""
    env: dict[str, str] = {}
    for item in spec.get("Environment") or []:
        k, _, v = item.partition("=")
        env[k] = v
    env.setdefault("PATH", DEFAULT_PATH)
    env["SCHEDD_JOB_ID"] = str(tag.origin_id)
    env["SCHEDD_JOB_NAME"] = spec.get("Name") or ""
    env["SCHEDD_ORIGIN"] = tag.origin
    if array is not None:
        env["SCHEDD_ARRAY_JOB_ID"], env["SCHEDD_ARRAY_TASK_ID"] = str(array[0]), str(array[1])
    wd = spec.get("WorkingDirectory") or ""
    job: dict[str, Any] = {
        "name": spec.get("Name") or "schedd-job",
        "comment": tag.text(),
        "tasks": 1,
        "nodes": 1,
        "cpus_per_task": int(spec.get("CPUs") or 1),
        "memory_per_node": f"{max(1, -(-int(spec.get('Memory') or 0) // MIB))}M",
        "environment": env,
    }
    # Slurm 22.05 takes "requeue" as sbatch's --requeue whatever its value (slurm_opt.c
    # arg_set_data_requeue): "requeue": false would requeue. --no-requeue is "no_requeue".
    job["requeue" if spec.get("Requeue", True) else "no_requeue"] = True
    if wd:
        job["current_working_directory"] = wd
    out = spec.get("StdoutPath") or ""
    err = spec.get("StderrPath") or ""
    base = wd or "."
    job["standard_output"] = _slurm_path(out, tag.origin_id) if out else f"{base}/slurm-%j.out"
    if err:
        job["standard_error"] = _slurm_path(err, tag.origin_id)
    if spec.get("GPUs"):
        job["gres"] = f"gpu:{int(spec['GPUs'])}"
    usec = int(spec.get("RuntimeMaxUSec") or 0)
    if usec:
        job["time_limit"] = max(1, -(-usec // 60_000_000))  # whole minutes, rounded up
    if spec.get("BeginTime"):
        job["begin_time"] = -(-int(spec["BeginTime"]) // 1_000_000)  # Slurm's whole seconds, never earlier
    if spec.get("Hold"):
        job["hold"] = True
    if partition:
        job["partition"] = partition
    if dependency:
        job["dependency"] = "afterok:" + ":".join(str(d) for d in dependency)
        job["kill_on_invalid_dependency"] = True
    command = spec.get("Command") or []
    script = "#!/bin/sh\n# submitted by schedd for " + tag.text() + "\nexec " + shlex.join(command) + "\n"
    return {"script": script, "job": job}


def _int(rec: dict, key: str, lo: int = 0, hi: int = (1 << 63) - 1, default: int | None = None) -> int:
    v = rec.get(key, default)
    if v is None and default is not None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRecord(f"{key} = {v!r} is not an integer in {lo}..{hi}")
    return v


def _str(rec: dict, key: str, default: str = "") -> str:
    v = rec.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str) or len(v) > 4096:
        raise BadRecord(f"{key} = {v!r:.80} is not a string")
    return v


def exit_code(status: int) -> tuple[int, bool]:
    """Slurm's exit_code is a wait status: (schedd's ExitCode, killed by a signal). A signal reads 128+N
    as a shell (and schedd's own executor) report it."""
    sig = status & 0x7F
    if sig:
        return 128 + sig, True
    return (status >> 8) & 0xFF, False


@dataclass(frozen=True)
class SlurmJob:
    """The part of a Slurm job record schedd uses, validated."""

    job_id: int
    state: str  # Slurm's word
    reason: str  # Slurm's state_reason
    exit_status: int
    start_time: int  # seconds
    end_time: int
    nodes: str
    user_name: str
    user_id: int
    stdout: str
    stderr: str
    tag: Tag | None

    @classmethod
    def of(cls, rec: Any) -> "SlurmJob":
        if not isinstance(rec, dict):
            raise BadRecord("a job record is not an object")
        state = _str(rec, "job_state")
        if state not in STATES:
            raise BadRecord(f"job_state {state!r} is not a state Slurm 22.05 reports")
        return cls(job_id=_int(rec, "job_id", 1, U32), state=state, reason=_str(rec, "state_reason"),
                   exit_status=_int(rec, "exit_code", 0, U32, default=0),
                   start_time=_int(rec, "start_time", 0, 1 << 40, default=0),
                   end_time=_int(rec, "end_time", 0, 1 << 40, default=0), nodes=_str(rec, "nodes"),
                   user_name=_str(rec, "user_name"), user_id=_int(rec, "user_id", 0, U32, default=U32),
                   stdout=_str(rec, "standard_output"), stderr=_str(rec, "standard_error"),
                   tag=Tag.parse(rec.get("comment")))

    def schedd_state(self) -> tuple[str, str]:
        state, reason = STATES[self.state]
        if state == "PENDING" and self.reason in HELD_REASONS:
            return "HELD", "held"
        if state in ("PENDING", "CANCELLED") and self.reason in DEPENDENCY_REASONS:
            return "FAILED", "dependency"
        if state == "PENDING" and self.reason == "BeginTime":
            return "PENDING", "begin-time"
        if self.state == "FAILED" and self.reason in NOT_RUN_REASONS:
            return "FAILED", "resources"
        if state == "FAILED" and reason == "exit-code" and self.exit_status & 0x7F:
            return "FAILED", "signal"
        return state, reason

    def record(self) -> dict[str, Any]:
        """The federation's record of this copy (what Origin.receive_mirror and Engine.mirror take)."""
        assert self.tag is not None
        state, reason = self.schedd_state()
        ran = state not in ("PENDING", "HELD") and bool(self.nodes)
        code, _signalled = exit_code(self.exit_status) if state in TERMINAL and reason != "resources" else (0, False)
        out = expand_path(self.stdout, self.job_id) if self.stdout else ""
        err = expand_path(self.stderr, self.job_id) if self.stderr else out
        return {
            "Id": self.job_id, "OriginNode": self.tag.origin, "OriginId": self.tag.origin_id,
            "Attempt": self.tag.attempt, "Node": self.nodes, "State": state, "Reason": reason,
            "ExitCode": code,
            "StartTime": self.start_time * 1_000_000 if ran else 0,
            "EndTime": self.end_time * 1_000_000 if state in TERMINAL else 0,
            "CPUTimeUSec": 0, "MemoryPeak": 0, "AssignedCPUs": [], "AssignedGPUs": [],
            "StdoutPath": out, "StderrPath": err, "Restarts": 0,
        }


def jobs_of(answer: Any) -> tuple[list[SlurmJob], int]:
    """GET /jobs: the valid job records (and how many were refused as not Slurm's)."""
    out, bad_ids = jobs_and_bad_ids(answer)
    return out, len(bad_ids)


def jobs_and_bad_ids(answer: Any) -> tuple[list[SlurmJob], list[int | None]]:
    """GET /jobs: the valid job records, and the job id (None: none readable) of each refused one --
    a job Slurm shows that schedd cannot read is still a job Slurm knows, not a lost one."""
    if not isinstance(answer, dict) or not isinstance(answer.get("jobs"), list):
        raise BadRecord("the answer has no list of jobs")
    out: list[SlurmJob] = []
    bad: list[int | None] = []
    for rec in answer["jobs"]:
        try:
            out.append(SlurmJob.of(rec))
        except BadRecord:
            jid = rec.get("job_id") if isinstance(rec, dict) else None
            bad.append(jid if isinstance(jid, int) and not isinstance(jid, bool) and 0 < jid <= U32 else None)
    return out, bad


_GRES = re.compile(r"(?:^|,)gpu(?::[^:,()]+)?:(\d+)")


def gpus_in(gres: str) -> int:
    """GPUs in a node's gres/gres_used string, e.g. "gpu:a100:4(S:0-1)" or "gpu:2" -> 4, 2."""
    return sum(int(n) for n in _GRES.findall(gres or ""))


def load_of(nodes_answer: Any, jobs: list[SlurmJob], partition: str = "") -> dict[str, int]:
    """The cluster as one big node (LOAD_FIELDS' keys): the nodes' CPUs, memory and GPUs that can take
    work, what of them is free, and Slurm's whole queue (every user's jobs, not only schedd's)."""
    if not isinstance(nodes_answer, dict) or not isinstance(nodes_answer.get("nodes"), list):
        raise BadRecord("the answer has no list of nodes")
    total_cpus = free_cpus = total_mem = free_mem = total_gpus = free_gpus = 0
    for n in nodes_answer["nodes"]:
        if not isinstance(n, dict):
            raise BadRecord("a node record is not an object")
        parts = n.get("partitions") or []
        if partition and (not isinstance(parts, list) or partition not in parts):
            continue
        state = _str(n, "state").lower()
        flags = n.get("state_flags") or []
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise BadRecord("state_flags is not a list of words")
        if state not in USABLE_NODE_STATES or UNUSABLE_FLAGS & set(flags):
            continue
        cpus = _int(n, "cpus", 0, 1 << 20)
        alloc = _int(n, "alloc_cpus", 0, 1 << 20, default=0)
        mem = _int(n, "real_memory", 0, 1 << 40)
        alloc_mem = _int(n, "alloc_memory", 0, 1 << 40, default=0)
        gpus = gpus_in(_str(n, "gres"))
        used_gpus = gpus_in(_str(n, "gres_used"))
        total_cpus += cpus
        free_cpus += max(0, cpus - alloc)
        total_mem += mem * MIB
        free_mem += max(0, mem - alloc_mem) * MIB
        total_gpus += gpus
        free_gpus += max(0, gpus - used_gpus)
    pending = sum(1 for j in jobs if STATES[j.state][0] in ("PENDING", "HELD"))
    running = sum(1 for j in jobs if STATES[j.state][0] in ("RUNNING", "SUSPENDED"))
    return {"TotalCPUs": min(total_cpus, U32), "AvailableCPUs": min(free_cpus, U32), "TotalMemory": total_mem,
            "AvailableMemory": free_mem, "TotalGPUs": min(total_gpus, U32), "AvailableGPUs": min(free_gpus, U32),
            "PendingJobs": min(pending, U32), "RunningJobs": min(running, U32)}
