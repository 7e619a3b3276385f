#!/usr/bin/env python3
"""schedd at scale: N held jobs on one node, each figure of issue 13's table with its goal.

Boots a test systemd (tests/sandbox.py; needs root), starts the schedd of this checkout there
(SCHEDD_SANDBOX_VENV: a worktree's venv replaces /opt/schedd/venv inside) with `systemctl
start schedd`, and runs bench/_scale_client.py inside as root. The checkout must be reachable
inside the sandbox: anywhere but under /tmp (the sandbox has a private /tmp).

Usage: sudo bench/scale.py [N ...]   (N held jobs, default 100000; several N: one sandbox each)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sandbox_run import run_client  # noqa: E402

CONFIG = """
[node]
name = "bench"
[jobs]
default_memory = "64M"
max_pending_per_user = 10000000
max_queued_bytes_per_user = "64G"
"""

# (key, label, unit, goal text, is the goal met(value) or None, floor key or None)
ROWS = [
    ("submit_rate", "SubmitMany, batches of 1,000 held specs", "specs/s", ">= 20,000", lambda v: v >= 20_000,
     "floor_sqlite_rows"),
    ("rss_mib", "daemon RSS (VmRSS of MainPID)", "MiB", "< 200", lambda v: v < 200, None),
    ("list100_ms", "ListJobs {Limit: 100}, first page", "ms", "< 20", lambda v: v < 20, "floor_ping_ms"),
    ("list100_deep_ms", "ListJobs {Limit: 100, After: N/2}", "ms", "< 20", lambda v: v < 20, "floor_ping_ms"),
    ("list_default_rows", "ListJobs {} (default page, rows/s)", "rows/s", ">= 100,000", lambda v: v >= 100_000,
     "floor_parse_rows"),
    ("list_default_ms", "ListJobs {} (default page, one call)", "ms", "-", None, None),
    ("list_select_rows", "ListJobs {Properties: squeue's 8 columns}", "rows/s", ">= 100,000", lambda v: v >= 100_000,
     None),
    ("getjob_ms", "GetJob", "ms", "< 1", lambda v: v < 1, "floor_ping_ms"),
    ("queue_s", "schedctl queue (as root)", "s", "< 2", lambda v: v < 2, None),
    ("squeue_s", "squeue (every job; Properties of its 8 columns)", "s", "-", None, None),
    ("sacct_s", "sacct -X (every job; Properties of its 7 fields)", "s", "-", None, None),
    ("queue_all_s", "schedctl queue --all (every job)", "s", "-", None, None),
    ("restart_s", "restart to the bus (until GetJob answers)", "s", "< 2", lambda v: v < 2, "floor_restart_s"),
    ("array_submit_ms", "1M-task array Submit (ArrayTasks, held)", "ms", "< 1,000", lambda v: v < 1000,
     "floor_ping_ms"),
    ("array_rss_delta_mib", "  daemon RSS added by the 1M-task array", "MiB", "~0", None, None),
    ("array_getjob_ms", "  GetJob of its last task (no job yet)", "ms", "< 1", lambda v: v < 1, "floor_ping_ms"),
    ("array_cancel_ms", "CancelArray of the 1M-task array", "ms", "-", None, None),
    ("array_run_tasks_per_s", "1M-task array %2 of true, running: tasks/s", "tasks/s", "-", None, None),
    ("array_run_rss_delta_mib", "  daemon RSS added after 5 s of it running", "MiB", "-", None, None),
]
FLOORS = {
    "floor_sqlite_rows": ("raw SQLite executemany of the same rows, 1,000/commit", "rows/s"),
    "floor_ping_ms": ("raw D-Bus round trip to schedd (Peer.Ping)", "ms"),
    "floor_parse_rows": ("dbus-fast parsing the default page's bytes alone", "rows/s"),
    "floor_restart_s": ("python imports + SELECT of every row (no Job objects)", "s"),
}


def run_one(n: int) -> dict:
    return run_client(f"scale-{n}", CONFIG, "_scale_client.py", str(n))


def report(n: int, res: dict) -> None:
    print(f"\nschedd at scale: {n:,} held jobs, {res['cpus']} CPUs (daemon restarts during the run: {res['restarts']})")
    print(f"{'measure':48} {'value':>12} {'unit':7} {'goal':>10}  met")
    for key, label, unit, goal, ok, floor in ROWS:
        v = res[key]
        met = "-" if ok is None else ("yes" if ok(v) else "NO")
        print(f"{label:48} {v:12,.2f} {unit:7} {goal:>10}  {met}")
    print(f"{'  schedctl queue output':48} {res['queue_bytes']:12,d} bytes   ({res['queue_lines']:,} lines)")
    for key, name in (("squeue", "squeue"), ("sacct", "sacct -X"), ("queue_all", "queue --all")):
        print(f"{'  ' + name + ': lines; first line after; client peak RSS':48} {res[key + '_lines']:12,d} lines   "
              f"{res[key + '_first_s']:.2f} s, {res[key + '_rss_mib']:.1f} MiB")
    print(f"{'  ListJobs {} page: bytes; until they are here; parse':48} {res['list_default_bytes']:12,d} bytes  "
          f"{res['list_default_raw_ms']:.0f} ms (daemon + bus daemon), {res['list_default_parse_ms']:.0f} ms (dbus-fast)")
    print(f"{'  ListJobs {Properties: ...} page: bytes; one call':48} {res['list_select_bytes']:12,d} bytes  "
          f"{res['list_select_ms']:.0f} ms")
    print(f"{'  restart: systemctl restart returned after':48} {res['restart_ready_s']:12,.2f} s")
    print(f"{'  CPU per SubmitMany spec: schedd, dbus-daemon, client':48} "
          f"{res['submit_cpu_us_schedd']:.1f} / {res['submit_cpu_us_dbus']:.1f} / {res['submit_cpu_us_client']:.1f} us")
    print("reference floors measured in the same run:")
    for key, (label, unit) in FLOORS.items():
        print(f"  {label:46} {res[key]:12,.2f} {unit}")


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or [100_000]
    results = {n: run_one(n) for n in sizes}
    for n, res in results.items():
        report(n, res)
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        print(f"\ngrowth from {a:,} to {b:,} jobs (x{b / a:g} jobs): cost ratio per figure (1.0: independent of N)")
        for key, label, unit, *_ in ROWS:
            ra, rb = results[a][key], results[b][key]
            ratio = (ra / rb) if unit.endswith("/s") else (rb / ra if ra else float("inf"))
            print(f"  {label:46} x{ratio:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
