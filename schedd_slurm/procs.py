"""Processes of a job, read from /proc: a scope's members, descendants, and which are srun steps
(what Slurm signals for `--signal` and `scancel --signal` without -b)."""

from __future__ import annotations

import os


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in pids():
        children.setdefault(_ppid(p), []).append(p)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _uid(pid: int) -> int | None:
    """The process's real uid (/proc/PID/status), None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


def in_scope(unit: str, uid: int) -> list[int]:
    """The job's processes: those of uid whose cgroup (any hierarchy: v2 and v1 hybrids) is the
    job's scope under schedd.slice -- a scope of that name elsewhere (a per-user schedd's, or one
    anybody can make with systemd-run --user --scope --unit=...) is not the job's."""
    tail = f"/schedd.slice/{unit}"
    out = []
    for p in pids():
        try:
            with open(f"/proc/{p}/cgroup") as f:
                if any(line.rstrip().endswith(tail) for line in f) and _uid(p) == uid:
                    out.append(p)
        except OSError:
            continue
    return out


def is_srun(pid: int) -> bool:
    argv = _cmdline(pid)
    return any(os.path.basename(a) == "srun" for a in argv[:2])


def is_launcher(pid: int) -> bool:
    argv = _cmdline(pid)
    return "schedd_slurm.job" in argv[:5]


def parent(pid: int) -> int:
    return _ppid(pid)
