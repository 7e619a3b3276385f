"""Human output: tables like `systemctl list-units`, Key=Value like `systemctl show`."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from schedd.protocol import format_duration, format_size

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
_COLOURS = {"RUNNING": "32", "COMPLETED": "32", "FAILED": "31", "CANCELLED": "33", "HELD": "33",
            "SUSPENDED": "33", "PENDING": "0"}


def colour(state: str, tty: bool) -> str:
    return f"\033[{_COLOURS.get(state, '0')}m{state}\033[0m" if tty and state in _COLOURS else state


def now_usec() -> int:
    return time.time_ns() // 1000


def elapsed(job: dict[str, Any], now: int | None = None) -> str:
    """Running: since start; finished: run time; pending: waited so far."""
    now = now or now_usec()
    start, end, submit = job.get("StartTime", 0), job.get("EndTime", 0), job.get("SubmitTime", 0)
    if job["State"] in TERMINAL:
        return format_duration(end - start) if start else "-"
    if start:
        return format_duration(now - start)
    return format_duration(now - submit) if submit else "-"


def table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset(), raw_widths=None) -> str:
    """Aligned columns; raw_widths gives printed widths when cells carry colour codes."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(_strip(c)))
    def fmt(cells: list[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            pad = widths[i] - len(_strip(c))
            out.append(" " * pad + c if i in right else c + " " * pad)
        return "  ".join(out).rstrip()
    return "\n".join([fmt(headers), *(fmt(r) for r in rows)])


def _strip(s: str) -> str:
    import re

    return re.sub(r"\033\[[0-9;]*m", "", s)


def queue(jobs: list[dict[str, Any]], tty: bool) -> str:
    now = now_usec()
    rows = [[str(j["Id"]), j["Name"][:24], j.get("UserName") or str(j["User"]), colour(j["State"], tty),
             j["Reason"] or "-", str(j["CPUs"]), format_size(j["Memory"]), str(j["Priority"]), elapsed(j, now),
             j.get("Node") or "-"] for j in jobs]
    head = ["ID", "NAME", "USER", "STATE", "REASON", "CPUS", "MEM", "PRIO", "TIME", "NODE"]
    body = table(head, rows, right={0, 5, 6, 7})
    n = len(jobs)
    return f"{body}\n\n{n} job{'s' if n != 1 else ''} listed." if rows else "No jobs."


def _human(key: str, value: Any) -> str:
    if key.endswith("Time") and isinstance(value, int):
        return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(value / 1e6)) if value else "n/a"
    if key in ("Memory", "MemoryPeak") and isinstance(value, int):
        return format_size(value) if value else "0"
    if key in ("CPUTimeUSec", "RuntimeMaxUSec") and isinstance(value, int):
        return format_duration(value) if value else ("infinity" if key == "RuntimeMaxUSec" else "0")
    return ""


def _value(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def show(job: dict[str, Any]) -> str:
    """Key=Value lines (greppable, like systemctl show), with a readable form after times and sizes."""
    lines = []
    for k, v in job.items():
        h = _human(k, v)
        lines.append(f"{k}={_value(v)}" + (f"  # {h}" if h else ""))
    return "\n".join(lines)


def status(props: dict[str, Any], tty: bool) -> str:
    dot = "\033[32m●\033[0m" if tty else "●"
    p = props
    return "\n".join([
        f"{dot} schedd {p.get('Version', '?')} on node {p.get('NodeName', '?')}",
        f"   Executor: {p.get('Executor', '?')}",
        f"       CPUs: {p.get('AvailableCPUs', 0)} of {p.get('TotalCPUs', 0)} available",
        f"     Memory: {format_size(p.get('AvailableMemory', 0))} of {format_size(p.get('TotalMemory', 0))} available",
        f"       GPUs: {p.get('AvailableGPUs', 0)} of {p.get('TotalGPUs', 0)} available",
        f"       Jobs: {p.get('RunningJobs', 0)} running, {p.get('PendingJobs', 0)} pending",
    ])


def nodes(rows: list[dict[str, Any]], tty: bool) -> str:
    now = now_usec()
    out = []
    for n in rows:
        seen = n.get("LastSeenUSec", 0)
        out.append([n["Name"] + ("*" if n.get("Local") else ""), n["State"],
                    f"{n['AvailableCPUs']}/{n['TotalCPUs']}",
                    f"{format_size(n['AvailableMemory'])}/{format_size(n['TotalMemory'])}",
                    f"{n['AvailableGPUs']}/{n['TotalGPUs']}", str(n["PendingJobs"]), str(n["RunningJobs"]),
                    format_duration(max(0, now - seen)) + " ago" if seen else "never"])
    return table(["NAME", "STATE", "CPUS", "MEMORY", "GPUS", "PENDING", "RUNNING", "LAST-SEEN"], out,
                 right={5, 6})


def stats(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals and per-user figures: jobs, success rate, mean/p95 wait, CPU-hours."""
    def summary(js: list[dict[str, Any]]) -> dict[str, Any]:
        by_state: dict[str, int] = {}
        for j in js:
            by_state[j["State"]] = by_state.get(j["State"], 0) + 1
        done = by_state.get("COMPLETED", 0) + by_state.get("FAILED", 0)
        waits = sorted((j["StartTime"] - j["SubmitTime"]) / 1e6 for j in js if j["StartTime"])
        return {
            "Jobs": len(js), "States": by_state,
            "SuccessRate": round(by_state.get("COMPLETED", 0) / done, 4) if done else None,
            "MeanWaitSec": round(sum(waits) / len(waits), 3) if waits else None,
            "P95WaitSec": round(waits[min(len(waits) - 1, int(0.95 * (len(waits) - 1) + 0.5))], 3) if waits else None,
            "CPUHours": round(sum(j["CPUTimeUSec"] for j in js) / 3.6e9, 6),
        }
    users: dict[str, list] = {}
    for j in jobs:
        users.setdefault(j.get("UserName") or str(j["User"]), []).append(j)
    return {"Total": summary(jobs), "Users": {u: summary(js) for u, js in sorted(users.items())}}


def stats_text(s: dict[str, Any]) -> str:
    def pct(x):
        return "-" if x is None else f"{x * 100:.1f}%"

    def sec(x):
        return "-" if x is None else f"{x:.2f}s"

    rows = [[name, str(v["Jobs"]), str(v["States"].get("RUNNING", 0)), str(v["States"].get("PENDING", 0)),
             str(v["States"].get("COMPLETED", 0)), str(v["States"].get("FAILED", 0)), pct(v["SuccessRate"]),
             sec(v["MeanWaitSec"]), sec(v["P95WaitSec"]), f"{v['CPUHours']:.3f}"]
            for name, v in [("(all)", s["Total"]), *s["Users"].items()]]
    return table(["USER", "JOBS", "RUNNING", "PENDING", "COMPLETED", "FAILED", "SUCCESS", "MEAN-WAIT",
                  "P95-WAIT", "CPU-HOURS"], rows, right=set(range(1, 10)))


def is_tty() -> bool:
    return sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
