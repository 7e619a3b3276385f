"""Human output: tables like `systemctl list-units`, Key=Value like `systemctl show`, a status block.

Pure functions of plain dicts (GetJob/ListJobs/ListNodes/GetAll answers), so they are
tested without a daemon. --json output never comes through here.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any, Iterable

from schedd.protocol import PRIVATE_JOB_KEYS, TERMINAL, format_duration, format_ranges, format_size
from schedd.core.stats import Record, aggregate

_COLOURS = {"RUNNING": "32", "COMPLETED": "32", "FAILED": "31", "CANCELLED": "33", "HELD": "33", "SUSPENDED": "33"}
_ANSI = re.compile(r"\033\[[0-9;]*m")


def is_tty(stream: Any = None) -> bool:
    """Colours and human annotations only for a person at a terminal (and never with NO_COLOR set)."""
    return (stream or sys.stdout).isatty() and "NO_COLOR" not in os.environ


def now_usec() -> int:
    return time.time_ns() // 1000


def colour(state: str, tty: bool) -> str:
    code = _COLOURS.get(state)
    return f"\033[{code}m{state}\033[0m" if tty and code else state


def _width(cell: str) -> int:
    return len(_ANSI.sub("", cell)) if "\033" in cell else len(cell)


def table(headers: list[str], rows: list[list[str]], right: Iterable[int] = ()) -> str:
    """Aligned columns, two spaces apart; `right` holds the numeric columns' indexes."""
    return StreamTable(headers, right).page(rows)


def elapsed(job: dict[str, Any], now: int | None = None) -> str:
    """TIME column: run time if finished, time since start if running, time waited so far if pending."""
    now = now_usec() if now is None else now
    start, end, submit = job.get("StartTime", 0), job.get("EndTime", 0), job.get("SubmitTime", 0)
    if job["State"] in TERMINAL:
        return format_duration(max(0, end - start)) if start and end else "-"
    if start:
        return format_duration(max(0, now - start))
    return format_duration(max(0, now - submit)) if submit else "-"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


QUEUE_HEADERS = ["ID", "NAME", "USER", "STATE", "REASON", "CPUS", "MEM", "PRIO", "TIME", "NODE"]
# The job keys queue_rows reads: the queue asks ListJobs for these only (Properties).
QUEUE_PROPERTIES = ["Name", "User", "UserName", "State", "Reason", "CPUs", "Memory", "Priority", "SubmitTime",
                    "StartTime", "EndTime", "Node", "ArrayJobId", "ArrayTaskId", "ArrayMaxRunning"]


def fold_arrays(jobs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(ID text, job) rows: each array's pending tasks become one row like squeue's '12_[5-1000%8]'
    (with the daemon's folded row of its tasks not yet jobs, ArrayTasks, in it); its other tasks
    keep their own rows, shown as 'ID (12_3)'."""
    pending: dict[int, list[dict[str, Any]]] = {}
    for j in jobs:
        if j.get("ArrayJobId") and j["State"] == "PENDING":
            pending.setdefault(j["ArrayJobId"], []).append(j)
    rows, done = [], set()
    for j in jobs:
        aid = j.get("ArrayJobId")
        if not aid:
            rows.append((str(j["Id"]), j))
        elif j["State"] != "PENDING" and not j.get("ArrayTasks"):
            rows.append((f"{j['Id']} ({aid}_{j.get('ArrayTaskId', 0)})", j))
        elif j["State"] != "PENDING":  # a held or cancelled array's folded row
            rows.append((f"{aid}_[{j['ArrayTasks']}]", j))
        elif aid not in done:
            done.add(aid)
            tasks = pending[aid]
            folded = [t["ArrayTasks"] for t in tasks if t.get("ArrayTasks")]
            jobs_ = [t.get("ArrayTaskId", 0) for t in tasks if not t.get("ArrayTasks")]
            cap = f"%{j['ArrayMaxRunning']}" if j.get("ArrayMaxRunning") else ""
            if folded:
                text = ",".join(([format_ranges(jobs_)] if jobs_ else []) + folded)
                rows.append((f"{aid}_[{text}]", j))
            else:
                label = f"{aid}_[{format_ranges(jobs_)}{cap}]"
                rows.append((label if len(tasks) > 1 else f"{j['Id']} ({aid}_{j.get('ArrayTaskId', 0)})", j))
    return rows


def queue_rows(jobs: list[dict[str, Any]], tty: bool, now: int | None = None, fold: bool = False) -> list[list[str]]:
    now = now_usec() if now is None else now
    ids = fold_arrays(jobs) if fold else [(str(j["Id"]), j) for j in jobs]
    # The whole cluster (queue --all-nodes): ids are per origin node, so say whose: 'b:12'.
    ids = [(f"{j['Origin']}:{ident}" if j.get("Origin") else ident, j) for ident, j in ids]
    return [[ident, _clip(j.get("Name") or "-", 24), j.get("UserName") or str(j.get("User", "?")),
             colour(j["State"], tty), j.get("Reason") or "-", str(j.get("CPUs", 0)), format_size(j.get("Memory", 0)),
             str(j.get("Priority", 0)), elapsed(j, now), j.get("Node") or "-"] for ident, j in ids]


QUEUE_RIGHT = frozenset({0, 5, 6, 7, 8})


def queue(jobs: list[dict[str, Any]], tty: bool, now: int | None = None, fold: bool = False,
          footer: str | None = None) -> str:
    rows = queue_rows(jobs, tty, now, fold)
    footer = footer or f"{plural(len(jobs), 'job')} listed."
    if not rows:
        return footer
    return f"{table(QUEUE_HEADERS, rows, right=QUEUE_RIGHT)}\n\n{footer}"


def head_footer(running: int, shown: int, waiting: int | None) -> str:
    """The footer of the default queue view, which lists every running job but only the head of
    the queue: how many wait beyond it (None: more, count unknown) and how to see them."""
    listed = f"{plural(running + shown, 'job')} listed"
    if waiting is not None and waiting <= shown:
        return f"{listed}."
    more = "more" if waiting is None else f"{waiting - shown:,} more"
    return (f"{listed}: {running:,} running, the first {shown:,} waiting, {more} waiting. "
            "--all lists every job, --state PENDING,HELD every waiting one.")


class StreamTable:
    """A table written a page at a time, so listing a million jobs never holds them all: the
    widths are the header's and the first page's and only grow when a later cell is wider
    (a later page may then sit wider than the ones before it; systemctl pages the same way)."""

    def __init__(self, headers: list[str], right: Iterable[int] = ()) -> None:
        self.headers, self.right = headers, set(right)
        self.widths: list[int] | None = None

    def page(self, rows: list[list[str]]) -> str:
        first = self.widths is None
        widths = [len(h) for h in self.headers] if first else self.widths
        for row in rows:
            widths = [max(w, _width(c)) for w, c in zip(widths, row)]
        self.widths = widths

        def line(cells: list[str]) -> str:
            out = []
            for i, c in enumerate(cells):
                pad = " " * (widths[i] - _width(c))
                out.append(pad + c if i in self.right else c + pad)
            return "  ".join(out).rstrip()

        return "\n".join(([line(self.headers)] if first else []) + [line(r) for r in rows])


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _human(key: str, value: Any) -> str:
    """A readable form of a time, size or duration property ('' when the raw value says it all)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return ""
    if key in ("Memory", "MemoryPeak") or key.endswith("Memory"):
        return format_size(value)
    if key.endswith("USec"):
        if key == "RuntimeMaxUSec" and not value:
            return "infinity"
        return format_duration(value)
    return ""


def value_text(value: Any) -> str:
    """A property value as `systemctl show` prints it: lists space-separated, booleans yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(value_text(v) for v in value)
    return str(value)


HIDDEN_NOTE = "hidden: shown only to the job's owner and root (private_data)"


def hidden_note(key: str, value: Any) -> str:
    """Why a private key reads empty: a real job never has it so (protocol.PRIVATE_JOB_KEYS)."""
    return HIDDEN_NOTE if key in PRIVATE_JOB_KEYS and value in ("", []) else ""


def timestamp(usec: int) -> str:
    """µs since the epoch as systemctl show prints a timestamp, 'Tue 2026-12-01 21:40:50 UTC'
    (local time); '' for 0, never set."""
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(usec / 1e6)) if usec else ""


def _is_time(key: str, value: Any) -> bool:
    """A point in time (µs since the epoch): SubmitTime, StartTime, EndTime."""
    return key.endswith("Time") and isinstance(value, int) and not isinstance(value, bool)


def show_key(key: str, value: Any) -> str:
    """The name show prints: a time property as systemd names its timestamps (SubmitTime ->
    SubmitTimestamp), since its value is then the formatted time; --json keeps the D-Bus name."""
    return key[:-4] + "Timestamp" if _is_time(key, value) else key


def show(job: dict[str, Any], human: bool = False, props: list[str] | None = None, value_only: bool = False) -> str:
    """Key=Value lines in the daemon's order, greppable and cut-able, as `systemctl show`: times as
    'SubmitTimestamp=Tue 2026-12-01 21:40:50 UTC' (raw µs stay in --json); with `human` (a
    terminal), sizes and durations also get a readable form after a '#'. -p takes either name."""
    lines = []
    for key in props or list(job):
        if key not in job and key.endswith("Timestamp") and key[:-9] + "Time" in job:
            key = key[:-9] + "Time"
        if key not in job:
            continue
        v = job[key]
        text = timestamp(v) if _is_time(key, v) else value_text(v)
        if value_only:
            lines.append(text)
            continue
        h = (hidden_note(key, v) or _human(key, v)) if human else ""
        lines.append(f"{show_key(key, v)}={text}" + (f"  # {h}" if h else ""))
    return "\n".join(lines)


def ended(job: dict[str, Any]) -> str:
    """One line as a waited-for job ends: 'job 12 COMPLETED (success)', with the status when it failed."""
    line = f"job {job['Id']} {job['State']} ({job.get('Reason') or '-'})"
    if job["State"] == "FAILED" and job.get("ExitCode"):
        line += f", status={job['ExitCode']}"
    return line


def status(props: dict[str, Any], tty: bool, where: str = "") -> str:
    """A short `systemctl status`-like block of the Manager's properties."""
    p = props
    dot = "\033[32m●\033[0m" if tty else "●"
    lines = [
        f"{dot} schedd {p.get('Version', '?')} on node {p.get('NodeName', '?')}" + (f" ({where})" if where else ""),
        f"   Executor: {p.get('Executor', '?')}",
        f"       CPUs: {p.get('AvailableCPUs', 0)} of {p.get('TotalCPUs', 0)} available",
        f"     Memory: {format_size(p.get('AvailableMemory', 0))} of {format_size(p.get('TotalMemory', 0))} available",
        f"       GPUs: {p.get('AvailableGPUs', 0)} of {p.get('TotalGPUs', 0)} available",
        f"       Jobs: {p.get('RunningJobs', 0)} running, {p.get('PendingJobs', 0)} pending",
    ]
    return "\n".join(lines)


NODE_HEADERS = ["NAME", "STATE", "CPUS", "MEM", "GPUS", "PENDING", "RUNNING", "LAST-SEEN"]


def nodes(rows: list[dict[str, Any]], tty: bool, now: int | None = None) -> str:
    """ListNodes as a table; the local node is marked with '*', resources as available/total."""
    now = now_usec() if now is None else now
    out = []
    for n in rows:
        seen = n.get("LastSeenUSec", 0)
        state = n.get("State", "?")
        shade = "32" if state == "up" else "33" if state in ("draining", "drained") else "31"
        out.append([
            n["Name"] + ("*" if n.get("Local") else ""),
            f"\033[{shade}m{state}\033[0m" if tty else state,
            f"{n.get('AvailableCPUs', 0)}/{n.get('TotalCPUs', 0)}",
            f"{format_size(n.get('AvailableMemory', 0))}/{format_size(n.get('TotalMemory', 0))}",
            f"{n.get('AvailableGPUs', 0)}/{n.get('TotalGPUs', 0)}",
            str(n.get("PendingJobs", 0)), str(n.get("RunningJobs", 0)),
            f"{format_duration(max(0, now - seen))} ago" if seen else "never",
        ])
        if any(r.get("DrainedBy") for r in rows):
            why = n.get("DrainReason") or "-"
            out[-1].append(f"{why} (by {n['DrainedBy']})" if n.get("DrainedBy") else "-")
    headers = NODE_HEADERS + (["DRAIN"] if any(r.get("DrainedBy") for r in rows) else [])
    return f"{table(headers, out, right={5, 6})}\n\n{plural(len(rows), 'node')} listed."


def stats(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """GetStats' figures from ListJobs dicts (a daemon older than GetStats), by the daemon's own rules."""
    return aggregate(Record(j.get("UserName") or str(j["User"]), j["State"], j.get("SubmitTime", 0),
                            j.get("StartTime", 0), j.get("EndTime", 0), j.get("CPUTimeUSec", 0),
                            j.get("MemoryPeak", 0), j.get("SuspendedUSec", 0)) for j in jobs)


def stats_text(s: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x * 100:.1f}%"

    def sec(x: float | None) -> str:
        return "-" if x is None else format_duration(int(x * 1e6))

    rows = [[name, str(v["Jobs"]), str(v["States"].get("PENDING", 0) + v["States"].get("HELD", 0)),
             str(v["States"].get("RUNNING", 0) + v["States"].get("SUSPENDED", 0)), str(v["Completed"]),
             str(v["Failed"]), str(v["States"].get("CANCELLED", 0)), pct(v.get("SuccessRate")),
             sec(v.get("MeanWaitSec")), sec(v.get("P95WaitSec")), f"{v['CPUHours']:.3f}"]
            for name, v in [*s["Users"].items(), ("total", s["Total"])]]
    return table(["USER", "JOBS", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "SUCCESS", "MEAN-WAIT",
                  "P95-WAIT", "CPU-HOURS"], rows, right=range(1, 11))


PROGRESS_ORDER = ("COMPLETED", "FAILED", "CANCELLED", "RUNNING", "SUSPENDED", "PENDING", "HELD")


def progress(counts: dict[str, int], total: int, bar: bool, width: int = 30) -> str:
    """'[#####-----] 3/6 ended: 2 COMPLETED, 1 FAILED, 3 RUNNING' (the bar only for a terminal)."""
    done = sum(n for s, n in counts.items() if s in TERMINAL)
    parts = ", ".join(f"{counts[s]} {s}" for s in PROGRESS_ORDER if counts.get(s))
    text = f"{done}/{total} ended: {parts}"
    if not bar:
        return f"progress: {text}"
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'-' * (width - filled)}] {text}"


def state_change(job_id: int, state: str, reason: str, when: float | None = None) -> str:
    """One JobStateChanged as `schedctl monitor` prints it."""
    stamp = time.strftime("%H:%M:%S", time.localtime(when if when is not None else time.time()))
    return f"{stamp} job {job_id} {state}" + (f" ({reason})" if reason else "")
