"""squeue's -o codes and sacct's --format fields: what each prints, its header, width and alignment."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from schedd.protocol import format_ranges
from schedd_slurm.common import CLUSTER, slurm_id
from schedd_slurm.options import SlurmUsage
from schedd_slurm.states import CODES, slurm_reason, slurm_state
from schedd_slurm.timespec import format_date, format_elapsed, format_limit

Job = dict[str, Any]


def _now_usec() -> int:
    return time.time_ns() // 1000


def state(j: Job) -> str:
    return slurm_state(j["State"], j.get("Reason", ""))


def elapsed_s(j: Job) -> int:
    if not j.get("StartTime"):
        return 0
    if j.get("RunUSec"):
        return j["RunUSec"] // 1_000_000
    end = j.get("EndTime") or _now_usec()
    return max(0, (end - j["StartTime"] - j.get("SuspendedUSec", 0)) // 1_000_000)


def limit_s(j: Job) -> int:
    return j.get("RuntimeMaxUSec", 0) // 1_000_000


def time_left(j: Job) -> str:
    lim = limit_s(j)
    if not lim:
        return "UNLIMITED"
    return format_elapsed(max(0, lim - elapsed_s(j)))


def mem_text(j: Job) -> str:
    mib = j.get("Memory", 0) >> 20
    return f"{mib // 1024}G" if mib and mib % 1024 == 0 else f"{mib}M"


def node_or_reason(j: Job) -> str:
    if j["State"] in ("RUNNING", "SUSPENDED"):
        return j.get("Node", "")
    return f"({slurm_reason(j['State'], j.get('Reason', ''))})"


def exit_code(j: Job) -> str:
    """sacct's ExitCode `code:signal`."""
    code = j.get("ExitCode", 0)
    if j.get("Reason") in ("signal", "oom-kill", "timeout") and code > 128:
        return f"0:{code - 128}"
    if j.get("Reason") == "cancelled":
        return "0:0"  # as Slurm 22.05's sacct shows a cancelled job's own row
    return f"{max(code, 0)}:0"


def gres(j: Job) -> str:
    return f"gres/gpu:{j['GPUs']}" if j.get("GPUs") else "N/A"


def tres(j: Job) -> str:
    t = f"billing={j.get('CPUs', 1)},cpu={j.get('CPUs', 1)},mem={mem_text(j)},node=1"
    return t + (f",gres/gpu={j['GPUs']}" if j.get("GPUs") else "")


# -- squeue ------------------------------------------------------------------------------------

# Each -o code: its header, the job properties its text reads (what squeue asks ListJobs for), the text.
_SID = ("ArrayJobId", "ArrayTaskId")
_STATE = ("State", "Reason")
_ELAPSED = ("StartTime", "RunUSec", "EndTime", "SuspendedUSec")
_LIMIT = ("RuntimeMaxUSec",)
SQUEUE: dict[str, tuple[str, tuple[str, ...], Callable[[Job], str]]] = {
    "i": ("JOBID", _SID, lambda j: j.get("_row_id") or slurm_id(j)),
    "A": ("JOBID", (), lambda j: str(j["Id"])),
    "F": ("ARRAY_JOB_ID", ("ArrayJobId",), lambda j: str(j.get("ArrayJobId") or j["Id"])),
    "K": ("ARRAY_TASK_ID", ("ArrayJobId", "ArrayTaskId"), lambda j: j.get("_row_tasks") or (str(j["ArrayTaskId"]) if j.get("ArrayJobId") else "N/A")),
    "j": ("NAME", ("Name",), lambda j: j.get("Name", "")),
    "t": ("ST", _STATE, lambda j: CODES.get(state(j), "?")),
    "T": ("STATE", _STATE, state),
    "M": ("TIME", _ELAPSED, lambda j: format_elapsed(elapsed_s(j))),
    "L": ("TIME_LEFT", _ELAPSED + _LIMIT, time_left),
    "l": ("TIME_LIMIT", _LIMIT, lambda j: format_limit(limit_s(j))),
    "D": ("NODES", (), lambda j: "1"),
    "C": ("CPUS", ("CPUs",), lambda j: str(j.get("CPUs", 1))),
    "c": ("MIN_CPUS", ("CPUs",), lambda j: str(j.get("CPUs", 1))),
    "m": ("MIN_MEMORY", ("Memory",), mem_text),
    "b": ("TRES_PER_NODE", ("GPUs",), gres),
    "R": ("NODELIST(REASON)", _STATE + ("Node",), node_or_reason),
    "N": ("NODELIST", ("State", "Node"), lambda j: j.get("Node", "") if j["State"] in ("RUNNING", "SUSPENDED") else ""),
    "r": ("REASON", _STATE, lambda j: slurm_reason(j["State"], j.get("Reason", ""))),
    "P": ("PARTITION", (), lambda j: CLUSTER),
    "u": ("USER", ("UserName", "User"), lambda j: j.get("UserName") or str(j.get("User", ""))),
    "U": ("UID", ("User",), lambda j: str(j.get("User", ""))),
    "S": ("START_TIME", ("StartTime",), lambda j: format_date(j.get("StartTime", 0)) if j.get("StartTime") else "N/A"),
    "V": ("SUBMIT_TIME", ("SubmitTime",), lambda j: format_date(j.get("SubmitTime", 0))),
    "e": ("END_TIME", ("EndTime",), lambda j: format_date(j.get("EndTime", 0)) if j.get("EndTime") else "N/A"),
    "Q": ("PRIORITY", ("Priority",), lambda j: str(j.get("Priority", 0))),
    "p": ("PRIORITY", ("Priority",), lambda j: f"{j.get('Priority', 0):.8f}"),
    "y": ("NICE", ("Priority",), lambda j: str(-j.get("Priority", 0))),
    "q": ("QOS", (), lambda j: "normal"),
    "a": ("ACCOUNT", (), lambda j: ""),
    "o": ("COMMAND", ("Name",), lambda j: j.get("Name", "")),
    "Z": ("WORK_DIR", ("WorkingDirectory",), lambda j: j.get("WorkingDirectory", "")),
    "k": ("COMMENT", (), lambda j: "(null)"),
    "E": ("DEPENDENCY", ("After",), lambda j: ",".join(f"afterok:{a}(unfulfilled)" for a in j.get("After", [])) or "(null)"),
    "h": ("OVER_SUBSCRIBE", (), lambda j: "OK"),
    "f": ("FEATURES", (), lambda j: "(null)"),
    "g": ("GROUP", ("UserName",), lambda j: j.get("UserName", "")),
    "n": ("REQ_NODES", (), lambda j: ""),
    "x": ("EXC_NODES", (), lambda j: ""),
    "v": ("RESERVATION", (), lambda j: "(null)"),
    "w": ("WCKEY", (), lambda j: "(null)"),
    "B": ("EXEC_HOST", ("Node",), lambda j: j.get("Node", "") or "n/a"),
    "O": ("CONTIGUOUS", (), lambda j: "0"),
    "z": ("S:C:T", (), lambda j: "*:*:*"),
}

SQUEUE_DEFAULT = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"
_SQ = re.compile(r"%(\.?)(\d*)([A-Za-z])")


@dataclass(frozen=True)
class Column:
    literal: str  # text before the field
    code: str
    width: int | None
    right: bool


MAX_WIDTH = 65535  # a column's width (-o %N, --format F%N): wider is a typo, and padding it would exhaust memory


def _checked_width(width: int, spec: str) -> int:
    if abs(width) > MAX_WIDTH:
        raise SlurmUsage(f"Invalid field width in {spec!r}: at most {MAX_WIDTH}")
    return width


def parse_squeue_format(fmt: str) -> tuple[list[Column], str]:
    cols: list[Column] = []
    pos = 0
    for m in _SQ.finditer(fmt):
        if m.group(3) not in SQUEUE:
            raise SlurmUsage(f"Invalid job format specification: {m.group(0)}")
        width = _checked_width(int(m.group(2)), m.group(0)) if m.group(2) else None
        cols.append(Column(fmt[pos:m.start()], m.group(3), width, bool(m.group(1))))
        pos = m.end()
    return cols, fmt[pos:]


# What squeue reads of every row besides its columns: the state, user and name filters, and the
# folding of an array's pending tasks (collapse_pending_arrays).
SQUEUE_READS = (*_STATE, "User", "Name", *_SID, "ArrayMaxRunning")


def squeue_properties(cols: list[Column]) -> list[str]:
    """The job properties squeue needs for these columns (ListJobs' Properties; Id comes always)."""
    return sorted({*SQUEUE_READS, *(k for c in cols for k in SQUEUE[c.code][1])})


def _fit(text: str, width: int | None, right: bool) -> str:
    if width is None:
        return text
    text = text[:width]
    return text.rjust(width) if right else text.ljust(width)


def squeue_line(cols: list[Column], tail: str, row: Job | None) -> str:
    """One line: the header (row None) or a job's."""
    out = []
    for c in cols:
        text = SQUEUE[c.code][0] if row is None else SQUEUE[c.code][2](row)
        out.append(c.literal + _fit(text, c.width, c.right))
    return "".join(out) + tail


def _waiting_task(j: Job) -> bool:
    """A task that is a job and waits: it folds into its array's one row (not the daemon's own fold)."""
    return bool(j.get("ArrayJobId")) and j["State"] in ("PENDING", "HELD") and not j.get("ArrayTasks")


def _shown(j: Job) -> Job:
    """A row as it stands alone: the daemon's fold (ListJobs FoldArrays: the tasks that are no jobs yet)
    named `A_[ranges]`."""
    if j.get("ArrayTasks"):
        return {**j, "_row_id": f"{j['ArrayJobId']}_[{j['ArrayTasks']}]", "_row_tasks": j["ArrayTasks"]}
    return j


def _group_row(first: Job, tasks: list[int]) -> Job:
    """An array's waiting tasks as one row at the first of them: `A_[2-4,7%25]` (one task: its own row)."""
    if len(tasks) == 1:
        return first
    cap = first.get("ArrayMaxRunning") or 0
    ranges = format_ranges(tasks) + (f"%{cap}" if cap else "")
    return {**first, "_row_id": f"{first['ArrayJobId']}_[{ranges}]", "_row_tasks": ranges}


def collapse_pending_arrays(jobs: list[Job]) -> list[Job]:
    """Pending tasks of one array as one row `A_[2-4,7%25]`, as squeue shows them (without -r),
    wherever in the list they stand (squeue -j names jobs in any order)."""
    out: list[Job | int] = []  # an int: where the array of that id shows its waiting tasks
    groups: dict[int, tuple[Job, list[int]]] = {}
    for j in jobs:
        if not _waiting_task(j):
            out.append(_shown(j))
        elif (aid := j["ArrayJobId"]) in groups:
            groups[aid][1].append(j["ArrayTaskId"])
        else:
            groups[aid] = (j, [j["ArrayTaskId"]])
            out.append(aid)
    return [_group_row(*groups[r]) if isinstance(r, int) else r for r in out]


class ArrayFolder:
    """collapse_pending_arrays over pages in id order, so squeue prints each page as it comes: an
    array's jobs hold the ids its submit reserved (first..first+count-1, engine/arrays.py), so
    they come together and its row is whole at the first row of anything else. Until then it
    holds the first waiting task, the others' task ids, and the array's rows after it."""

    def __init__(self) -> None:
        self._array = 0
        self._first: Job | None = None
        self._tasks: list[int] = []
        self._after: list[Job] = []

    def feed(self, jobs: list[Job]) -> list[Job]:
        out: list[Job] = []
        for j in jobs:
            if (array := j.get("ArrayJobId") or 0) != self._array:
                out += self.end()
                self._array = array
            if _waiting_task(j):
                if self._first is None:
                    self._first = j
                self._tasks.append(j["ArrayTaskId"])
            elif self._first is None:
                out.append(_shown(j))
            else:
                self._after.append(_shown(j))
        return out

    def end(self) -> list[Job]:
        """The rows held back: the last array's, once nothing more of it can come."""
        if self._first is None:
            return []
        out = [_group_row(self._first, self._tasks), *self._after]
        self._first, self._tasks, self._after = None, [], []
        return out


# -- sacct ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    name: str
    width: int
    right: bool
    reads: tuple[str, ...]  # the job properties get reads (what sacct asks ListJobs for)
    get: Callable[[Job], str]


def _step(j: Job) -> str:
    return j.get("_step", "")


def _sid(j: Job) -> str:
    return slurm_id(j) + (f".{_step(j)}" if _step(j) else "")


_EXIT = ("ExitCode", "Reason", "State")
_TRES = ("CPUs", "Memory", "GPUs")
_FIELDS = [
    Field("JobID", 12, False, _SID, _sid),
    Field("JobIDRaw", 12, False, (), lambda j: str(j["Id"]) + (f".{_step(j)}" if _step(j) else "")),
    Field("JobName", 10, True, ("Name",), lambda j: _step(j) or j.get("Name", "")),
    Field("Partition", 10, True, (), lambda j: "" if _step(j) else CLUSTER),
    Field("Account", 10, True, (), lambda j: ""),
    Field("AllocCPUS", 10, True, ("CPUs", "StartTime"), lambda j: str(j.get("CPUs", 1)) if j.get("StartTime") else "0"),
    Field("NCPUS", 10, True, ("CPUs", "StartTime"), lambda j: str(j.get("CPUs", 1)) if j.get("StartTime") else "0"),
    Field("ReqCPUS", 8, True, ("CPUs",), lambda j: str(j.get("CPUs", 1))),
    Field("State", 10, True, _STATE, state),
    Field("ExitCode", 8, True, _EXIT, exit_code),
    Field("DerivedExitCode", 15, True, _EXIT, exit_code),
    Field("Elapsed", 10, True, _ELAPSED, lambda j: format_elapsed(elapsed_s(j), short=False)),
    Field("ElapsedRaw", 10, True, _ELAPSED, lambda j: str(elapsed_s(j))),
    Field("Start", 19, True, ("StartTime",), lambda j: format_date(j.get("StartTime", 0)) if j.get("StartTime") else "None"),
    Field("End", 19, True, ("EndTime",), lambda j: format_date(j.get("EndTime", 0))),
    Field("Submit", 19, True, ("SubmitTime",), lambda j: format_date(j.get("SubmitTime", 0))),
    Field("Eligible", 19, True, ("SubmitTime",), lambda j: format_date(j.get("SubmitTime", 0))),
    Field("NodeList", 15, True, ("Node", "StartTime"), lambda j: j.get("Node", "") if j.get("StartTime") else "None assigned"),
    Field("NNodes", 8, True, (), lambda j: "1"),
    Field("ReqMem", 10, True, ("Memory",), mem_text),
    Field("MaxRSS", 10, True, ("MemoryPeak",), lambda j: f"{j.get('MemoryPeak', 0) >> 10}K" if j.get("MemoryPeak") else ""),
    Field("TotalCPU", 10, True, ("CPUTimeUSec",), lambda j: format_elapsed(j.get("CPUTimeUSec", 0) // 1_000_000, short=False)),
    Field("CPUTime", 10, True, (*_ELAPSED, "CPUs"), lambda j: format_elapsed(elapsed_s(j) * j.get("CPUs", 1), short=False)),
    Field("CPUTimeRAW", 10, True, (*_ELAPSED, "CPUs"), lambda j: str(elapsed_s(j) * j.get("CPUs", 1))),
    Field("Timelimit", 10, True, _LIMIT, lambda j: "" if _step(j) else format_limit(limit_s(j), short=False)),
    Field("TimelimitRaw", 10, True, _LIMIT, lambda j: str(limit_s(j) // 60) if limit_s(j) else "UNLIMITED"),
    Field("User", 9, True, ("UserName", "User"), lambda j: "" if _step(j) else (j.get("UserName") or str(j.get("User", "")))),
    Field("UID", 6, True, ("User",), lambda j: str(j.get("User", ""))),
    Field("Group", 9, True, ("UserName",), lambda j: j.get("UserName", "")),
    Field("Comment", 10, True, (), lambda j: ""),
    Field("WorkDir", 10, True, ("WorkingDirectory",), lambda j: j.get("WorkingDirectory", "")),
    Field("Reason", 10, True, _EXIT, lambda j: slurm_reason(j["State"], j.get("Reason", ""), j.get("ExitCode", 0))),
    Field("Priority", 10, True, ("Priority",), lambda j: str(j.get("Priority", 0))),
    Field("AllocTRES", 10, True, _TRES, tres),
    Field("ReqTRES", 10, True, _TRES, tres),
    Field("Cluster", 10, True, (), lambda j: CLUSTER),
    Field("QOS", 10, True, (), lambda j: "normal"),
    Field("Suspended", 10, True, ("SuspendedUSec",), lambda j: format_elapsed(j.get("SuspendedUSec", 0) // 1_000_000, short=False)),
    Field("Reserved", 10, True, ("WaitUSec",), lambda j: format_elapsed(j.get("WaitUSec", 0) // 1_000_000, short=False)),
    Field("Planned", 10, True, ("WaitUSec",), lambda j: format_elapsed(j.get("WaitUSec", 0) // 1_000_000, short=False)),
    Field("ArrayJobID", 12, True, ("ArrayJobId",), lambda j: str(j.get("ArrayJobId") or j["Id"])),
    Field("ArrayTaskID", 12, True, _SID, lambda j: str(j["ArrayTaskId"]) if j.get("ArrayJobId") else ""),
    Field("AveRSS", 10, True, (), lambda j: ""),
    Field("MaxVMSize", 10, True, (), lambda j: ""),
    Field("AveCPU", 10, True, (), lambda j: ""),
    Field("Layout", 10, True, (), lambda j: ""),
    Field("WCKey", 10, True, (), lambda j: ""),
    Field("Constraints", 19, True, (), lambda j: ""),
]
SACCT_FIELDS = {f.name.lower(): f for f in _FIELDS}
# What sacct reads of every row besides its fields: its state, name and time filters, and which
# jobs get a batch step (sacct.with_steps).
SACCT_READS = (*_STATE, "Name", "StartTime", "EndTime", "SubmitTime")


def sacct_properties(cols: list["SacctColumn"]) -> list[str]:
    """The job properties sacct needs for these fields (ListJobs' Properties; Id comes always)."""
    return sorted({*SACCT_READS, *(k for c in cols for k in c.field.reads)})


SACCT_DEFAULT = "JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode"


@dataclass(frozen=True)
class SacctColumn:
    field: Field
    width: int
    right: bool


def parse_sacct_format(text: str) -> list[SacctColumn]:
    cols = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, width = item.partition("%")
        f = SACCT_FIELDS.get(name.lower())
        if f is None:
            raise SlurmUsage(f"Invalid field requested: \"{name}\"")
        if width:
            try:
                w = int(width)
            except ValueError:
                raise SlurmUsage(f"Invalid field requested: \"{item}\"") from None
            _checked_width(w, item)
            cols.append(SacctColumn(f, abs(w), f.right and w >= 0 and not width.startswith("-")))
        else:
            cols.append(SacctColumn(f, f.width, f.right))
    return cols


def _fit_sacct(text: str, width: int, right: bool) -> str:
    """sacct's fixed columns: a value too long ends in '+'."""
    if len(text) > width:
        text = text[:max(width - 1, 0)] + "+"
    return text.rjust(width) if right else text.ljust(width)


def sacct_lines(cols: list[SacctColumn], rows: list[Job], *, header: bool, sep: str | None,
                trailing: bool) -> list[str]:
    """sep None: fixed columns (header, dashes line); '|' for -P (trailing=False) / -p (trailing=True)."""
    lines = []
    if sep is None:
        if header:
            lines.append(" ".join(_fit_sacct(c.field.name, c.width, c.right) for c in cols) + " ")
            lines.append(" ".join("-" * c.width for c in cols) + " ")
        for r in rows:
            lines.append(" ".join(_fit_sacct(c.field.get(r), c.width, c.right) for c in cols) + " ")
        return lines
    end = sep if trailing else ""
    if header:
        lines.append(sep.join(c.field.name for c in cols) + end)
    for r in rows:
        lines.append(sep.join(c.field.get(r) for c in cols) + end)
    return lines
