"""The wire contract shared by daemon and clients (pueue's protocol crate, in Python).

Key names and D-Bus signatures of submit specs, job, manager and node records, declared once:
the D-Bus service builds its objects from them and the shipped introspection XML (dbus/) is
tested against those objects. Also the human units (sizes, durations) both sides parse and
print, and the JSON job file format (seed 000) turned into a submit spec. Nothing here does I/O
on the bus.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field

import math
import re
import shlex
from decimal import Decimal
from typing import Any

# Submit spec keys -> D-Bus signature. An unknown key is an error.
SPEC_KEYS: dict[str, str] = {
    "Command": "as",
    "Name": "s",
    "CPUs": "u",
    "Memory": "t",
    "GPUs": "u",
    "Priority": "i",
    "WorkingDirectory": "s",
    "Environment": "as",
    "StdoutPath": "s",
    "StderrPath": "s",
    "RuntimeMaxUSec": "t",
    "Hold": "b",
    "User": "u",
    "After": "at",
    "AfterAny": "at",
    "AfterNotOk": "at",
    "BeginTime": "t",
    "Node": "s",
    "Requeue": "b",
    "ArrayTaskId": "u",
    "ArrayMaxRunning": "u",
    "ArrayTasks": "s",
    "Container": "s",
}

# Job object properties (and GetJob/ListJobs keys) -> D-Bus signature.
JOB_PROPERTIES: dict[str, str] = {
    "Id": "t",
    "Name": "s",
    "Command": "as",
    "User": "u",
    "UserName": "s",
    "State": "s",
    "Reason": "s",
    "ExitCode": "i",
    "Priority": "i",
    "CPUs": "u",
    "Memory": "t",
    "GPUs": "u",
    "AssignedCPUs": "au",
    "AssignedGPUs": "au",
    "Unit": "s",
    "Node": "s",
    "WorkingDirectory": "s",
    "StdoutPath": "s",
    "StderrPath": "s",
    "SubmitTime": "t",
    "StartTime": "t",
    "EndTime": "t",
    "CPUTimeUSec": "t",
    "MemoryPeak": "t",
    "RuntimeMaxUSec": "t",
    "After": "at",
    "Restarts": "u",
    "ArrayJobId": "t",
    "ArrayTaskId": "u",
    "ArrayMaxRunning": "u",
    "SuspendedUSec": "t",
    "WaitUSec": "t",
    "RunUSec": "t",
    "Container": "s",
    "BeginTime": "t",
    "AfterAny": "at",
    "AfterNotOk": "at",
}

# Job properties that may carry what is not everyone's (paths, arguments): with [jobs]
# private_data (the default) they read as these empty values to anyone but the job's owner,
# root and holders of the polkit action manage-jobs. A real job never has them empty (Command
# is required, the others default), so an empty one means hidden. The environment is no job
# property at all: it is shown to no one.
PRIVATE_JOB_KEYS: dict[str, object] = {
    "Command": [],
    "WorkingDirectory": "",
    "StdoutPath": "",
    "StderrPath": "",
}


def redact_job(record: dict[str, object]) -> dict[str, object]:
    """A job record (property name -> value) as someone who may not see its private keys sees it."""
    return {k: (list(PRIVATE_JOB_KEYS[k]) if isinstance(PRIVATE_JOB_KEYS[k], list) else PRIVATE_JOB_KEYS[k])
            if k in PRIVATE_JOB_KEYS else v for k, v in record.items()}


STATS_FILTER_KEYS: dict[str, str] = {
    "User": "u",
    "Since": "t",
}

LIST_LIMIT = 10_000  # the most jobs one ListJobs call (or the peer API's job list) returns; page with After
LIST_FILTER_KEYS: dict[str, str] = {
    "States": "as",
    "User": "u",
    "Limit": "u",
    "After": "t",
    "AllNodes": "b",
    "FoldArrays": "b",
    "Properties": "as",  # only these job properties in each row (Id always: the After cursor)
}
# A FoldArrays row of an array's tasks that have not started yet: their ids, Slurm's way ('5-1000000%8').
ARRAY_TASKS_KEY, ARRAY_TASKS_SIGNATURE = "ArrayTasks", "s"

# A node's capacity and load: in ListNodes rows and heartbeats, and the Manager's properties.
LOAD_KEYS: dict[str, str] = {
    "TotalCPUs": "u",
    "AvailableCPUs": "u",
    "TotalMemory": "t",
    "AvailableMemory": "t",
    "TotalGPUs": "u",
    "AvailableGPUs": "u",
    "PendingJobs": "u",
    "RunningJobs": "u",
}

# ListNodes rows -> D-Bus signature.
NODE_KEYS: dict[str, str] = {
    "Name": "s",
    "State": "s",
    "URL": "s",
    "Local": "b",
    **LOAD_KEYS,
    "LastSeenUSec": "t",
    "DrainReason": "s",
    "DrainedBy": "s",
}
NODE_STATES = ("up", "down", "draining", "drained")  # ListNodes' State (draining/drained: schedctl drain)


def node_row(name: str, up: bool, url: str, local: bool, load: dict[str, int], last_seen_usec: int,
             drain: tuple[str, str, str] = ("", "", "")) -> dict[str, Any]:
    """A ListNodes row (NODE_KEYS), of this node or a peer. drain: (state, reason, who) when it drains."""
    state = ("up" if up else "down") if not drain[0] or not up else drain[0]
    return {"Name": name, "State": state, "URL": url, "Local": local, **load,
            "LastSeenUSec": last_seen_usec, "DrainReason": drain[1], "DrainedBy": drain[2]}


# Manager object properties -> D-Bus signature.
MANAGER_PROPERTIES: dict[str, str] = {
    "Version": "s",
    "NodeName": "s",
    "Executor": "s",
    **LOAD_KEYS,
}

# What ListJobs with AllNodes adds to each row: the node the job was submitted to.
ORIGIN_KEY, ORIGIN_SIGNATURE = "Origin", "s"

STATES = ("PENDING", "HELD", "RUNNING", "SUSPENDED", "COMPLETED", "FAILED", "CANCELLED")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """'4G', '512M', '1.5GiB', '1048576' -> bytes (powers of 1024, like systemd)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 4G, 1T; plain numbers are bytes)")
    return int(Decimal(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])  # exact: no float rounding


def format_size(n: int) -> str:
    """Bytes -> the shortest exact-ish human form, '4G', '1.5G', '512M'."""
    for unit, mult in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= mult:
            v = n / mult
            return f"{v:.0f}{unit}" if v == int(v) or v >= 100 else f"{v:.1f}{unit}"
    return f"{n}B"


_DUR_UNITS = {
    "us": 1, "usec": 1, "ms": 1_000, "msec": 1_000,
    "s": 1_000_000, "sec": 1_000_000, "": 1_000_000,
    "m": 60_000_000, "min": 60_000_000,
    "h": 3_600_000_000, "hr": 3_600_000_000,
    "d": 86_400_000_000, "day": 86_400_000_000, "days": 86_400_000_000,
}
_DUR_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_CLOCK = re.compile(r"^(\d+):(\d{1,2})(?::(\d{1,2}))?$")  # M:S or H:M:S
_DAYS = re.compile(r"^(\d+)-(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")  # D-H, D-H:M, D-H:M:S


def parse_duration(text: str) -> int:
    """'1h30m', '90min', '45s', '2d' (systemd.time), or Slurm's 'M:S', 'H:M:S', 'D-H', 'D-H:M',
    'D-H:M:S' -> µs. A plain number is seconds, as in systemd (Slurm would read minutes)."""
    t = str(text).strip().lower()
    m = _DAYS.match(t)
    if m:
        d, h, mi, s = (int(x or 0) for x in m.groups())
        return (((d * 24 + h) * 60 + mi) * 60 + s) * 1_000_000
    m = _CLOCK.match(t)
    if m:
        a, b, c = m.groups()
        h, mi, s = (int(a), int(b), int(c)) if c is not None else (0, int(a), int(b))
        return ((h * 60 + mi) * 60 + s) * 1_000_000
    pos, total = 0, Decimal(0)
    t = t.replace(" ", "")
    if not t:
        raise ValueError("empty duration")
    while pos < len(t):
        m = _DUR_PART.match(t, pos)
        if not m or m.end() == pos or m.group(2) not in _DUR_UNITS:
            raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30min, 1h30m, 2d or HH:MM:SS)")
        total += Decimal(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    return int(total)


def format_duration(usec: int) -> str:
    """µs -> '1h 2min 3s' style (systemd's), coarse above a minute."""
    s = usec // 1_000_000
    if s < 1:
        return f"{usec // 1000}ms"
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d" if d else "", f"{h}h" if h else "", f"{m}min" if m else "", f"{s}s" if s and not d else ""]
    return " ".join(p for p in parts if p) or "0s"


# JSON job file (seed 000): {"command": "python script.py", "resources": {"cpu": 4,
# "memory": "8G", "gpu": 1}, "priority": 1, "output": "/path/to/output.log"}.
# CamelCase spec keys are accepted too, so a file can say anything Submit can.
_JOB_FILE_ALIASES = {
    "command": "Command", "name": "Name", "priority": "Priority", "output": "StdoutPath",
    "error": "StderrPath", "stdout": "StdoutPath", "stderr": "StderrPath",
    "working_directory": "WorkingDirectory", "workdir": "WorkingDirectory", "cwd": "WorkingDirectory",
    "environment": "Environment", "env": "Environment", "time": "RuntimeMaxUSec",
    "hold": "Hold", "after": "After", "node": "Node", "requeue": "Requeue",
    "container": "Container", "image": "Container",
}
_RESOURCE_ALIASES = {"cpu": "CPUs", "cpus": "CPUs", "memory": "Memory", "mem": "Memory", "gpu": "GPUs", "gpus": "GPUs"}
_IGNORED_JOB_FILE_KEYS = {"job_id"}  # ids are assigned by the daemon


def job_file_to_spec(obj: Any) -> tuple[dict[str, Any], list[str]]:
    """A parsed JSON job file -> (spec values keyed as SPEC_KEYS, warnings).

    Types are converted the way a person means them ("8G", "1h", a command
    string split with shlex, never a shell); the daemon still validates everything.
    """
    if not isinstance(obj, dict):
        raise ValueError("a job file must hold one JSON object")
    spec: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in obj.items():
        if key in _IGNORED_JOB_FILE_KEYS:
            warnings.append(f"ignoring {key!r}: job ids are assigned by the daemon")
            continue
        if key == "resources":
            if not isinstance(value, dict):
                raise ValueError("'resources' must be an object like {\"cpu\": 2, \"memory\": \"4G\"}")
            for rkey, rval in value.items():
                if rkey not in _RESOURCE_ALIASES:
                    raise ValueError(f"unknown resource {rkey!r}; known: cpu, memory, gpu")
                spec[_RESOURCE_ALIASES[rkey]] = rval
            continue
        name = _JOB_FILE_ALIASES.get(key, key)
        if name not in SPEC_KEYS:
            raise ValueError(f"unknown key {key!r} in job file; known: {', '.join(sorted(_JOB_FILE_ALIASES))}, resources")
        spec[name] = value
    cmd = spec.get("Command")
    if isinstance(cmd, str):
        spec["Command"] = shlex.split(cmd)
    if isinstance(spec.get("Memory"), str):
        spec["Memory"] = parse_size(spec["Memory"])
    if isinstance(spec.get("RuntimeMaxUSec"), str):
        spec["RuntimeMaxUSec"] = parse_duration(spec["RuntimeMaxUSec"])
    env = spec.get("Environment")
    if isinstance(env, dict):
        spec["Environment"] = [f"{k}={v}" for k, v in env.items()]
    if isinstance(spec.get("After"), int):
        spec["After"] = [spec["After"]]
    return spec, warnings


MAX_ARRAY_TASKS = 100_000


def parse_array(text: str) -> tuple[list[int], int]:
    """Slurm's --array syntax: '1-1000%8', '0,3,5-7', '0-15:4' -> (task ids, cap on running; 0 = none)."""
    body, _, cap_text = text.replace(" ", "").partition("%")
    cap = 0
    if cap_text:
        if not cap_text.isdigit() or int(cap_text) < 1:
            raise ValueError(f"{text!r}: after % give how many tasks may run at once, e.g. 1-100%8")
        cap = int(cap_text)
    ids: set[int] = set()
    for part in body.split(","):
        rng, _, step_text = part.partition(":")
        lo, dash, hi = rng.partition("-")
        try:
            start = int(lo)
            end = int(hi) if dash else start
            step = int(step_text) if step_text else 1
        except ValueError:
            raise ValueError(f"{text!r}: give task ids like 1-1000, 0,3,5-7 or 0-15:4 (then %N to cap)") from None
        if start < 0 or end < start or step < 1 or end >= 2**32:
            raise ValueError(f"{text!r}: {part!r} is not a range of task ids from low to high")
        if len(ids) + (end - start) // step + 1 > MAX_ARRAY_TASKS:  # before the range is made
            raise ValueError(f"{text[:80]!r}: more than {MAX_ARRAY_TASKS} tasks in one array")
        ids.update(range(start, end + 1, step))
        if len(ids) > MAX_ARRAY_TASKS:
            raise ValueError(f"{text!r}: more than {MAX_ARRAY_TASKS} tasks in one array")
    return sorted(ids), cap


def format_ranges(ids: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3,7'."""
    out, ids = [], sorted(set(ids))
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def clip(text: str, limit: int = 80) -> str:
    """A user's text shortened for a message or a log line (an ArrayTasks can be megabytes)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


MAX_RANGES = 10_000  # comma-separated ranges in one ArrayTasks: each costs on every record write and fold


def _digits(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes '²' and other scripts' digits, which int() refuses)."""
    return bool(text) and text.isascii() and text.isdigit()


def _num(text: str) -> int:
    """_digits' number; any with more than 10 digits as 2**32 (out of range, without a huge int())."""
    return int(text) if len(text.lstrip("0")) <= 10 else 2**32


Range = tuple[int, int, int]  # (start, last, step): start, start+step, ... up to last (last is in the range)
MAX_INTERLEAVED = 100_000  # pairs of ranges whose spans overlap that parse() compares member by member


def _common(a: Range, b: Range) -> int | None:
    """The lowest task in both ranges (stepped ranges may interleave: 0-10:2,1-11:2 share none)."""
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    if lo > hi:
        return None
    (s1, _, d1), (s2, _, d2) = a, b
    g = math.gcd(d1, d2)
    if (s2 - s1) % g:
        return None
    lcm = d1 // g * d2
    # x = s1 + d1*t with d1*t = s2 - s1 (mod d2): t = ((s2-s1)/g) * inv(d1/g) mod d2/g
    m = d2 // g
    t = ((s2 - s1) // g * pow(d1 // g, -1, m)) % m if m > 1 else 0
    x = s1 + d1 * t
    if x < lo:
        x += -(-(lo - x) // lcm) * lcm
    return x if x <= hi else None


def _overlap(ranges: list[Range], max_pairs: int) -> tuple[Range, Range, int] | None:
    """Two of the ranges (sorted by start) with a task in common, and it; ValueError when more than
    max_pairs (0: any) pairs of spans overlap to compare."""
    active: list[Range] = []  # earlier ranges whose span reaches the current start
    pairs = 0
    for r in ranges:
        active = [a for a in active if a[1] >= r[0]]
        pairs += len(active)
        if max_pairs and pairs > max_pairs:
            raise ValueError(f"more than {max_pairs} pairs of ranges interleave; "
                             f"give fewer ranges that span each other")
        for a in active:
            task = _common(a, r)
            if task is not None:
                return a, r, task
        active.append(r)
    return None


def _range_len(r: Range) -> int:
    return (r[1] - r[0]) // r[2] + 1


def _range_text(r: Range) -> str:
    start, last, step = r
    if start == last:
        return str(start)
    return f"{start}-{last}" + (f":{step}" if step > 1 else "")


@dataclass(frozen=True, slots=True)
class TaskRanges:
    """An array's task ids as Slurm writes them ('1-1000000%8', '0,3,5-7', '0-15:4'), kept as ranges:
    nothing here ever lists the ids, so a million tasks cost a few tuples. Tasks are numbered by
    their position (index 0..count-1, in ascending task id; stepped ranges that interleave, as
    0-10:2,1-11:2, range by range): an array's task at index i is job first_id + i."""

    ranges: tuple[Range, ...]
    cap: int = 0  # at most this many tasks run at once; 0: no cap
    _ends: tuple[int, ...] = field(default=(), compare=False, repr=False)  # cumulative counts
    _text: list[str] = field(default_factory=list, compare=False, repr=False)  # format()'s, once made

    def __post_init__(self) -> None:
        ends, n = [], 0
        for r in self.ranges:
            n += _range_len(r)
            ends.append(n)
        object.__setattr__(self, "_ends", tuple(ends))

    @classmethod
    def parse(cls, text: str, max_tasks: int = 0, max_ranges: int = MAX_RANGES) -> "TaskRanges":
        """ValueError with a sentence on bad syntax, overlapping ranges, more than MAX_RANGES ranges
        or more than max_tasks tasks (0: any). max_ranges=0: a record already accepted, any number."""
        shown = repr(clip(text))
        n = text.count(",") + 1
        if max_ranges and n > max_ranges:
            raise ValueError(f"{shown}: {n} comma-separated ranges; one array has at most {max_ranges} "
                             f"(write runs of ids as lo-hi or lo-hi:step)")
        if max_ranges and len(text) > 40 * max_ranges:
            raise ValueError(f"{shown}: at most {40 * max_ranges} characters (and {max_ranges} ranges)")
        body, _, cap_text = text.replace(" ", "").partition("%")
        cap = 0
        if cap_text or "%" in text:
            if not _digits(cap_text) or not 1 <= _num(cap_text) < 2**32:
                raise ValueError(f"{shown}: after % give how many tasks may run at once "
                                 f"(digits 0-9, at least 1), e.g. 1-100%8")
            cap = _num(cap_text)
        if not body:
            raise ValueError(f"{shown}: give task ids like 1-1000, 0,3,5-7 or 0-15:4 (then %N to cap)")
        out: list[Range] = []
        for part in body.split(","):
            rng, colon, step_text = part.partition(":")
            lo, dash, hi = rng.partition("-")
            if not (_digits(lo) and (_digits(hi) or not dash) and (_digits(step_text) or not colon)):
                raise ValueError(f"{shown}: {clip(part, 40)!r} is not a task id or range; give task ids like "
                                 f"1-1000, 0,3,5-7 or 0-15:4 (digits 0-9; then %N to cap)")
            start = _num(lo)
            end = _num(hi) if dash else start
            step = _num(step_text) if colon else 1
            if end < start or step < 1 or end >= 2**32:
                raise ValueError(f"{shown}: {clip(part, 40)!r} is not a range of task ids from low to high "
                                 f"(0 to {2**32 - 1})")
            out.append((start, start + (end - start) // step * step, step))
        out.sort()
        try:
            clash = _overlap(out, MAX_INTERLEAVED if max_ranges else 0)
        except ValueError as e:
            raise ValueError(f"{shown}: {e}") from None
        if clash is not None:
            a, b, task = clash
            raise ValueError(f"{shown}: {_range_text(a)} and {_range_text(b)} overlap (both have task {task}); name each task once")
        tasks = cls(tuple(out), cap)
        if max_tasks and tasks.count > max_tasks:
            raise ValueError(f"{shown}: {tasks.count} tasks; one array has at most {max_tasks} "
                             f"(max_array_tasks in schedd.toml)")
        return tasks

    @property
    def count(self) -> int:
        return self._ends[-1] if self._ends else 0

    def task_at(self, index: int) -> int:
        """The task id at a position (IndexError outside 0..count-1)."""
        if not 0 <= index < self.count:
            raise IndexError(index)
        k = bisect_right(self._ends, index)
        before = self._ends[k - 1] if k else 0
        start, _, step = self.ranges[k]
        return start + (index - before) * step

    def index_of(self, task: int) -> int | None:
        """The position of a task id, None if the array has no such task (interleaved stepped
        ranges: each range starting at or below task whose span reaches it is asked)."""
        k = bisect_right(self.ranges, (task, 2**64, 2**64)) - 1
        while k >= 0:
            start, last, step = self.ranges[k]
            if start <= task <= last and not (task - start) % step:
                return (self._ends[k - 1] if k else 0) + (task - start) // step
            k -= 1
        return None

    def slice_ranges(self, lo: int, hi: int) -> list[Range]:
        """The task ids at positions lo..hi-1, as ranges (O(ranges), not O(tasks))."""
        out: list[Range] = []
        hi = min(hi, self.count)
        k = bisect_right(self._ends, lo)  # the first range that holds position lo
        before = self._ends[k - 1] if k else 0
        ends, ranges = self._ends, self.ranges
        while k < len(ranges) and before < hi:
            r, end = ranges[k], ends[k]
            a, b = max(lo, before) - before, min(hi, end) - before - 1
            out.append((r[0] + a * r[2], r[0] + b * r[2], r[2]))
            before = end
            k += 1
        return out

    @property
    def text(self) -> str:
        """format() of all the tasks, made once (an array's record is written again and again)."""
        if not self._text:
            self._text.append(self.format())
        return self._text[0]

    def format(self, positions: list[tuple[int, int]] | None = None, cap: bool = True) -> str:
        """Slurm's text of the tasks (or of those at the half-open position ranges given): '5-1000000%8'."""
        rs = list(self.ranges) if positions is None else [r for lo, hi in positions for r in self.slice_ranges(lo, hi)]
        merged: list[Range] = []
        for r in rs:  # neighbours of step 1 written as one range
            if merged and r[2] == 1 and merged[-1][2] == 1 and merged[-1][1] + 1 == r[0]:
                merged[-1] = (merged[-1][0], r[1], 1)
            elif merged and r[0] == r[1] and merged[-1][0] == merged[-1][1] and r[0] == merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], r[1], 1)
            else:
                merged.append(r)
        text = ",".join(_range_text(r) for r in merged)
        return text + (f"%{self.cap}" if cap and self.cap else "")

    def __iter__(self) -> Iterator[int]:
        for start, last, step in self.ranges:
            yield from range(start, last + 1, step)
