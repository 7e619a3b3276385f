"""Validation: the one place a Submit a{sv} (or a JSON job file, via schedctl) becomes a JobSpec."""

from __future__ import annotations

import functools

import os
import pwd
import re
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable

from schedd.errors import AccessDenied, InvalidArgument, Unsatisfiable
from schedd.core.model import EMPTY, JobSpec
from schedd.protocol import SPEC_KEYS, TaskRanges, format_duration, format_size

MAX_ARG_STRLEN = 131072  # the kernel's limit on one argv/env string, NUL included
MAX_NAME = 256
UINT64_MAX = 2**64 - 1
MAX_DEPENDENCIES = 4096  # After, AfterAny and AfterNotOk together: each id is looked up while the loop waits
MAX_BEGIN_AHEAD_USEC = 10 * 366 * 86400 * 10**6  # a BeginTime further ahead is a mistake (ms for µs, say)
_TYPE_WORDS = {
    "s": "a string", "u": "an unsigned 32-bit integer", "t": "an unsigned 64-bit integer",
    "i": "a signed 32-bit integer", "b": "a boolean", "as": "an array of strings",
    "at": "an array of unsigned 64-bit integers",
}


@dataclass(frozen=True)
class Limits:
    """What the request is checked against: this node's offer and the configured limits."""

    node_name: str
    total_cpus: int
    total_memory: int
    total_gpus: int
    default_memory: int
    min_memory: int
    max_argv_bytes: int
    max_env_entries: int
    default_time_usec: int = 0
    max_time_usec: int = 0
    max_array_tasks: int = 1_000_000
    # Federation: () -> every node this one knows (placement.NodeView), this one included; None alone.
    # A callable: only a spec with a Node pays for looking at the cluster.
    cluster: Callable[[], list] | None = None
    # Nodes that take a whole array as one job per task (Slurm peers: schedd.cluster.slurm).
    array_nodes: frozenset[str] = frozenset()


def _bad(key: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{key}: {why}")


def _typed(props: dict[str, Any], key: str) -> Any:
    """The value of key if present with the contract's D-Bus type; raises otherwise."""
    v = props[key]
    sig = getattr(v, "signature", None)
    want = SPEC_KEYS[key]
    if sig != want:
        raise _bad(key, f"must have D-Bus type '{want}' ({_TYPE_WORDS[want]}), got '{sig}'")
    return v.value


def _exec_string(key: str, what: str, text: str, name: str = "") -> int:
    """Bytes one argv/env string takes in execve; raises if the kernel would refuse it."""
    if "\0" in text:
        raise _bad(key, f"{what} contains a NUL byte")
    n = len(text.encode("utf-8", "surrogateescape")) + 1
    if n > MAX_ARG_STRLEN:
        label = f"{what} ({name})" if name else what
        raise _bad(key, f"{label} is {n} bytes; the kernel accepts at most {MAX_ARG_STRLEN - 1}")
    return n


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # C0 and DEL


def _refuse_control(key: str, text: str, what: str = "") -> None:
    """Control characters have no business in a path, a name or a program name; a newline in
    one would also end a line of every log and record that carries it."""
    m = _CONTROL.search(text)
    if m:
        raise _bad(key, f"{what + ' ' if what else ''}must not contain control characters "
                        f"(found {m.group()!r} at position {m.start()}); remove it")


def _check_path(key: str, path: str) -> str:
    if not path:
        raise _bad(key, "must not be empty")
    if "\0" in path:
        raise _bad(key, "must not contain NUL bytes")
    _refuse_control(key, path)
    if not path.startswith("/"):
        raise _bad(key, f"{path!r} is relative; give an absolute path (schedctl resolves relative ones for you)")
    if len(path.encode()) > 4095:
        raise _bad(key, "path is longer than PATH_MAX (4095 bytes)")
    return os.path.normpath(path)


# An image reference as the local store names it: [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST] or an image
# id (docker's reference grammar, as podman parses it). It is a word of root podman's argv: it may not
# start with '-' (an option), and a ':' is only a port (digits, then '/') or a tag after the last '/'.
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
                    r"(?:@sha256:[a-f0-9]{64})?|[a-f0-9]{12,64}")
# containers/image's transports: podman run reads "oci-archive:PATH", "dir:PATH", "docker-archive:PATH",
# "containers-storage:[STORE]IMAGE"... as that transport, i.e. root would read a file the user names.
_TRANSPORTS = frozenset({"docker", "docker-archive", "docker-daemon", "oci", "oci-archive", "dir",
                         "containers-storage", "ostree", "sif", "tarball", "atomic"})


def check_image(image: str) -> str:
    """The Container value, or InvalidArgument: never something a runtime could read as an option or a
    transport (a path root podman would read)."""
    if image.partition(":")[0].lower() in _TRANSPORTS and ":" in image:
        raise _bad("Container", f"{image[:80]!r} names a transport ({image.partition(':')[0]!r}); only images "
                                "already in the node's local store may be run: give NAME[:TAG]")
    if len(image) > 255 or not _IMAGE.fullmatch(image):
        raise _bad("Container", f"{image[:80]!r} is not an image name; give one of the node's local images "
                                "as NAME[:TAG], NAME@sha256:DIGEST or an image id (lower-case letters, digits "
                                "and ._-/ in names, an optional HOST[:PORT]/ first)")
    return image


def _user_may_search(pw: pwd.struct_passwd, path: str) -> bool:
    """Whether the daemon may look at `path` on the user's behalf: the user can search
    every directory on the way (mode bits, as the kernel checks them).

    The daemon runs as root; a stat of a path below a directory the user cannot enter
    would tell them whether it exists. A directory the bits deny raises the error the
    user would get; one with an ACL is left to the gate, whose chdir runs as the user.
    """
    if pw.pw_uid == 0:
        return True
    groups = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    for real in {path, os.path.realpath(path)}:
        parts = [p for p in real.split("/") if p]
        for i in range(len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            try:
                st = os.stat(d)
            except OSError:
                return True  # the stat of the path itself reports it, in the user's words
            if not stat.S_ISDIR(st.st_mode):
                return True
            if st.st_uid == pw.pw_uid:
                bit = stat.S_IXUSR
            elif st.st_gid in groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if st.st_mode & bit:
                continue
            try:
                if "system.posix_acl_access" in os.listxattr(d):
                    return False  # ACLs decide: the gate's chdir, as the user, will tell
            except OSError:
                pass
            raise _bad("WorkingDirectory", f"{path}: Permission denied (user {pw.pw_name} cannot enter {d})")
    return True


def build_spec(
    props: dict[str, Any],
    *,
    caller_uid: int,
    limits: Limits,
    job_known: Callable[[int], bool] = lambda _id: False,
    daemon_uid: int | None = None,
    users: dict[int, list] | None = None,
) -> JobSpec:
    """Check every key of a Submit spec and return the JobSpec, or raise a SchedError.

    Type checks come first (wrong D-Bus type → InvalidArgument), then values,
    then whether any node could ever hold it (→ Unsatisfiable).

    users: a cache of [passwd entry, default working directory or None, working directories found
    searchable] by uid that the caller keeps for one batch, so a SubmitMany asks NSS and stats a
    directory once per user, not per spec.
    """
    if not isinstance(props, dict):
        raise InvalidArgument("the spec must be a dictionary a{sv}")
    unknown = sorted(k for k in props if k not in SPEC_KEYS)
    if unknown:
        raise InvalidArgument(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}; "
            f"valid keys: {', '.join(SPEC_KEYS)}"
        )
    v = {k: _typed(props, k) for k in props}

    if "Command" not in v:
        raise InvalidArgument("Command: required; give the program and its arguments as an array of strings (argv)")
    command = list(v["Command"])
    if not command or not command[0]:
        raise _bad("Command", "must name a program: the first element may not be empty")
    argv_bytes = sum(_exec_string("Command", f"argument {i}", arg) for i, arg in enumerate(command))
    _refuse_control("Command", command[0], "the program (argument 0)")

    env = list(v["Environment"]) if v.get("Environment") else EMPTY
    if len(env) > limits.max_env_entries:
        raise _bad("Environment", f"{len(env)} entries; this daemon accepts at most {limits.max_env_entries}")
    for i, entry in enumerate(env):
        key, sep, _ = entry.partition("=")
        if not sep or not key:
            raise _bad("Environment", f"entry {i} ({entry[:40]!r}) is not of the form NAME=VALUE")
        argv_bytes += _exec_string("Environment", f"entry {i}", entry, key)
    if argv_bytes > limits.max_argv_bytes:
        raise InvalidArgument(
            f"Command and Environment together are {argv_bytes} bytes; this daemon accepts at most "
            f"{limits.max_argv_bytes} (max_argv_bytes in schedd.toml)"
        )

    name = v.get("Name") or os.path.basename(command[0]) or command[0]
    if len(name) > MAX_NAME:
        raise _bad("Name", f"is {len(name)} characters; at most {MAX_NAME}")
    _refuse_control("Name", name)

    cpus = v.get("CPUs", 1)
    if cpus < 1:
        raise _bad("CPUs", "must be at least 1")
    memory = v.get("Memory", limits.default_memory)
    if memory < limits.min_memory:
        raise _bad(
            "Memory",
            f"{memory} bytes is below the minimum of {format_size(limits.min_memory)}; "
            f"Memory is in bytes (4G = {4 << 30})",
        )
    gpus = v.get("GPUs", 0)

    # Who runs it: the caller, or (root only) the named user.
    uid = caller_uid
    if "User" in v and v["User"] != caller_uid:
        if caller_uid != 0:
            raise AccessDenied("User: only root may submit a job that runs as another user")
        uid = v["User"]
    if daemon_uid is not None and daemon_uid != 0 and uid != daemon_uid:
        raise AccessDenied(f"this is a per-user daemon of uid {daemon_uid}; it runs jobs only as that user")
    known = users.get(uid) if users is not None else None
    if known is None:
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            raise (_bad("User", f"uid {uid} does not exist on this node") if "User" in v
                   else AccessDenied(f"your uid {uid} has no passwd entry on this node")) from None
        known = [pw, None, set()]
        if users is not None:
            users[uid] = known
    pw = known[0]

    if "WorkingDirectory" in v:
        cwd = _check_path("WorkingDirectory", v["WorkingDirectory"])
        if cwd in known[2]:
            pass  # checked for this user earlier in the batch
        elif _user_may_search(pw, cwd):
            try:
                st = os.stat(cwd)
            except OSError as e:
                raise _bad("WorkingDirectory", f"{cwd}: {e.strerror}") from None
            if not stat.S_ISDIR(st.st_mode):
                raise _bad("WorkingDirectory", f"{cwd} is not a directory")
            known[2].add(cwd)
    else:
        if known[1] is None:
            known[1] = pw.pw_dir if os.path.isdir(pw.pw_dir) else "/"
        cwd = known[1]

    stdout_path = _check_path("StdoutPath", v["StdoutPath"]) if "StdoutPath" in v else ""
    stderr_path = _check_path("StderrPath", v["StderrPath"]) if "StderrPath" in v else ""

    deps = {}
    counts = {key: len(v.get(key) or ()) for key in ("After", "AfterAny", "AfterNotOk")}
    if sum(counts.values()) > MAX_DEPENDENCIES:
        raise _bad(max(counts, key=counts.__getitem__), f"at most {MAX_DEPENDENCIES} dependencies per job (After, AfterAny and AfterNotOk "
                            "together); make the job depend on one job that depends on the rest")
    for key in ("After", "AfterAny", "AfterNotOk"):
        deps[key] = list(v[key]) if v.get(key) else EMPTY
        for dep in deps[key]:
            if not job_known(dep):
                raise _bad(key, f"job {dep} does not exist")
    after = deps["After"]
    begin_time = _begin_time(v.get("BeginTime", 0))
    node = v.get("Node", "")
    if node not in ("", limits.node_name) and limits.cluster is not None:
        from schedd.core.placement import Need, check_satisfiable

        check_satisfiable(node, Need(cpus, memory, gpus, bool(v.get("Container"))),
                          list(limits.cluster()))
    elif node not in ("", "any", limits.node_name):
        raise Unsatisfiable(f"Node: no node named {node!r} in this cluster (this node is {limits.node_name!r})")
    elif cpus > limits.total_cpus:
        raise Unsatisfiable(f"CPUs: asks for {cpus} CPUs but the largest node offers {limits.total_cpus}")
    elif memory > limits.total_memory:
        raise Unsatisfiable(
            f"Memory: asks for {format_size(memory)} but the largest node offers {format_size(limits.total_memory)}"
        )
    elif gpus > limits.total_gpus:
        raise Unsatisfiable(f"GPUs: asks for {gpus} GPUs but the largest node offers {limits.total_gpus}")

    runtime_max = v.get("RuntimeMaxUSec", 0)
    if runtime_max == UINT64_MAX:
        runtime_max = 0  # systemd's "infinity"
    elif runtime_max >= 2**63:
        raise _bad("RuntimeMaxUSec", f"{runtime_max} µs is beyond any useful limit; give fewer µs, "
                                     f"or 0 / {UINT64_MAX} for no limit")
    if not runtime_max:
        runtime_max = limits.default_time_usec or limits.max_time_usec
    elif limits.max_time_usec and runtime_max > limits.max_time_usec:
        raise _bad("RuntimeMaxUSec", f"{format_duration(runtime_max)} is longer than this daemon's maximum time "
                                     f"limit of {format_duration(limits.max_time_usec)} (max_time in schedd.toml)")

    array_task = v.get("ArrayTaskId")
    array_max = v.get("ArrayMaxRunning", 0)
    if "ArrayMaxRunning" in v and array_task is None:
        raise _bad("ArrayMaxRunning", "only array tasks (with ArrayTaskId) have a cap on running tasks")
    if "ArrayTasks" in v:
        _check_array_tasks(v, limits)

    container = check_image(v["Container"]) if v.get("Container") else ""
    if container:
        bad = next((c for c in ',"' if c in cwd), None)
        if bad is not None:
            # The runtime takes the directory's mount as comma-separated options: none may come from a path.
            raise _bad("WorkingDirectory", f"{cwd!r} holds {bad!r}, which a container job's directory may not "
                                           "hold (it is mounted into the container); give another directory")
        for i, entry in enumerate(env):
            if "\n" in entry:
                raise _bad("Environment", f"entry {i} ({entry.partition('=')[0]}) holds a newline; a container "
                                          "job's environment is passed one variable a line")

    return JobSpec(
        exec_size=argv_bytes,
        command=command,
        name=name,
        cpus=cpus,
        memory=memory,
        gpus=gpus,
        priority=v.get("Priority", 0),
        working_directory=cwd,
        environment=env,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        runtime_max_usec=runtime_max,
        hold=v.get("Hold", False),
        uid=uid,
        gid=pw.pw_gid,
        user_name=pw.pw_name,
        after=after,
        after_any=deps["AfterAny"],
        after_not_ok=deps["AfterNotOk"],
        begin_time=begin_time,
        node=node,
        requeue=v.get("Requeue", True),
        array_task_id=array_task,
        array_max_running=array_max,
        container=container,
    )


def _begin_time(begin: int) -> int:
    """BeginTime as given (a time past means at once), unless it is beyond any sensible wait."""
    now = time.time_ns() // 1000
    if begin > now + MAX_BEGIN_AHEAD_USEC:
        raise _bad("BeginTime", f"{begin} is more than 10 years from now; give µs since the epoch "
                                f"(now is about {now}), or 0 to start as soon as possible")
    return begin


# -- ArrayTasks: one Submit for a whole array (engine/arrays.py) ---------------------------------

def _check_array_tasks(v: dict[str, Any], limits: Limits) -> None:
    """ArrayTasks goes alone: not with the per-task keys of the SubmitMany way, nor to another node."""
    clash = [k for k in ("ArrayTaskId", "ArrayMaxRunning") if k in v]
    if clash:
        raise _bad("ArrayTasks", f"names the whole array (with its %N cap); do not give {clash[0]} with it")
    if v.get("Node", "") not in ("", limits.node_name) and v.get("Node") not in limits.array_nodes:
        raise _bad("ArrayTasks", "an array runs on the node it is submitted to (or on a Slurm peer); drop Node")
    array_tasks_of({"ArrayTasks": v["ArrayTasks"]}, limits)


# build_spec checks ArrayTasks and the array's submit then takes it: one parse for both.
_parse_tasks = functools.lru_cache(maxsize=8)(TaskRanges.parse)


def array_tasks_of(props: dict[str, Any], limits: Limits) -> TaskRanges | None:
    """The ArrayTasks of a spec (plain values or Variants), None without; InvalidArgument if bad."""
    if "ArrayTasks" not in props:
        return None
    raw = props["ArrayTasks"]
    text = getattr(raw, "value", raw)
    if not isinstance(text, str):
        raise _bad("ArrayTasks", "must be a string like 1-1000000, 0,3,5-7 or 0-15:4, with %N to cap")
    try:
        return _parse_tasks(text, limits.max_array_tasks)
    except ValueError as e:
        raise _bad("ArrayTasks", str(e)) from None
