"""The federation's wire format: what peers send each other about jobs, and the errors of talking.

Pure conversions (no network), shared by the client side (schedd.cluster.peers, .origin, .runnode)
and the server side (schedd.cluster.api).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
from typing import Any

from schedd.api.jobview import JOB_KEYS
from schedd.config import FederationConfig
from schedd.core.engine.records import MIRRORED_FIELDS
from schedd.core.model import Job, JobSpec
from schedd.core.placement import LOAD_FIELDS
from schedd.errors import BY_DBUS_NAME, AccessDenied, SchedError
from schedd.protocol import SPEC_KEYS

API = "/api/v1"
# Keys a forwarded spec may carry: the Submit keys minus what only means something on the origin.
FORWARD_SPEC_KEYS = {k: v for k, v in SPEC_KEYS.items()
                     if k not in ("User", "After", "AfterAny", "AfterNotOk", "Node", "ArrayTaskId", "ArrayMaxRunning")}
LOAD_KEYS = tuple(LOAD_FIELDS)  # what a heartbeat reports
ACTIONS = ("cancel", "hold", "release", "suspend", "resume", "requeue", "fence")  # POST /jobs/ID/ACTION
DEFAULT_OUTPUT = re.compile(r"/jobs/\d+/output$")  # a node's default output path: never sent to another node


class PeerError(Exception):
    """A peer could not be reached, or answered 5xx: worth retrying."""


class PeerRefused(Exception):
    """A peer answered 4xx: it says no; the SchedError carries its words."""

    def __init__(self, error: SchedError) -> None:
        super().__init__(error.message)
        self.error = error


def refusal(node: str, status: int, text: str) -> PeerRefused:
    """A peer's 4xx answer as the error it raised there: the class its body names by D-Bus name
    (`schedd.api.http.web.error_body`), SchedError when it names none."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        name = body.get("dbus_error")
        cls = BY_DBUS_NAME.get(name, SchedError) if isinstance(name, str) else SchedError
        message = body.get("message", "")
    else:
        cls, message = SchedError, text
    if status == 401:
        message = f"{message} (is http.token_file the same on every node?)"
    return PeerRefused(cls(f"node {node}: {message}"))


def spec_to_json(spec: JobSpec) -> dict[str, Any]:
    """What a peer needs to run the job: the user by name, no paths that only mean something here."""
    out: dict[str, Any] = {
        "Command": spec.command, "Name": spec.name, "CPUs": spec.cpus, "Memory": spec.memory, "GPUs": spec.gpus,
        "Priority": spec.priority, "Environment": spec.environment, "RuntimeMaxUSec": spec.runtime_max_usec,
        "Hold": spec.hold, "Requeue": spec.requeue, "UserName": spec.user_name,
    }
    try:
        home = pwd.getpwnam(spec.user_name).pw_dir
    except KeyError:
        home = ""
    if spec.working_directory not in (home, "/"):
        out["WorkingDirectory"] = spec.working_directory
    if spec.container:
        out["Container"] = spec.container
    if spec.begin_time:
        out["BeginTime"] = spec.begin_time  # the peer keeps its copy pending until then, as this node would
    for key, path in (("StdoutPath", spec.stdout_path), ("StderrPath", spec.stderr_path)):
        if path and not DEFAULT_OUTPUT.search(path):
            out[key] = path
    return out


def job_state_json(job: Job) -> dict[str, Any]:
    """The mirrored part of a job: what its origin keeps in step."""
    return {
        "Id": job.id, "OriginNode": job.origin_node, "OriginId": job.origin_id, "Attempt": job.attempt,
        "Node": job.node,
        "State": job.state.value, "Reason": job.reason, "ExitCode": job.exit_code, "StartTime": job.start_time,
        "EndTime": job.end_time, "CPUTimeUSec": job.cpu_time_usec, "MemoryPeak": job.memory_peak,
        "AssignedCPUs": job.assigned_cpus, "AssignedGPUs": job.assigned_gpus,
        "StdoutPath": job.spec.stdout_path, "StderrPath": job.spec.stderr_path, "Restarts": job.restarts,
    }


def stale_json(stale: dict[int, bool]) -> dict[str, list[int]]:
    """An origin's word on copies that must stop: {Stale: ids, Failed: those that end as failed runs}."""
    return {"Stale": list(stale), "Failed": [rid for rid, failed in stale.items() if failed]}


# Job field -> the contract key that carries it as it is (from the job view's declaration).
_KEY_OF_FIELD = {k.fields[0]: k.name for k in JOB_KEYS if k.direct}


def mirrored_fields(rec: dict[str, Any]) -> dict[str, Any]:
    """A peer's record of a job of ours, as the fields the engine takes from it (Engine.mirror)."""
    return {f: rec[_KEY_OF_FIELD[f]] for f in MIRRORED_FIELDS}


def denied_groups(pw: pwd.struct_passwd, deny: tuple[str, ...]) -> list[str]:
    """The groups of `deny` the user belongs to, primary or supplementary (names this node does not have: none)."""
    member = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    out = []
    for name in deny:
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            continue
        if gid in member:
            out.append(name)
    return out


def resolve_user(name: str, node: str, policy: FederationConfig) -> pwd.struct_passwd:
    """A forwarded job's user by name on this node. Only ordinary login accounts: root, unknown names,
    system accounts (outside policy's uid range) and members of its privileged groups are refused."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise AccessDenied(f"user {name!r} does not exist on node {node}; create it there or run the job "
                           f"elsewhere") from None
    if pw.pw_uid == 0:
        raise AccessDenied(f"node {node} does not run jobs of root ({name!r}) for other nodes")
    if not policy.uid_min <= pw.pw_uid <= policy.uid_max:
        raise AccessDenied(f"{name!r} is uid {pw.pw_uid}, a system account: node {node} runs jobs for other "
                           f"nodes only for login accounts (uid {policy.uid_min} to {policy.uid_max}: login.defs "
                           f"UID_MIN/UID_MAX, or its [federation] uid_min/uid_max); run it where it was submitted")
    groups = denied_groups(pw, policy.deny_groups)
    if groups:
        raise AccessDenied(f"{name!r} is a member of {', '.join(groups)}: node {node} runs no jobs for other nodes "
                           f"of members of privileged groups (its [federation] deny_groups); run it where it was "
                           f"submitted")
    return pw
