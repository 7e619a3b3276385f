#!/usr/bin/env python3
"""schedd throughput and latency against the raw systemd floor, measured in the same run.

Boots a test systemd (tests/sandbox.py; needs root), starts the installed
schedd there with `systemctl start schedd`, and runs bench/_client.py inside:

  (a) floor: raw StartTransientUnit scopes/s for `true` (a /bin/sh gate blocked on a
      pipe, released once the unit's job is done), at the node's CPU count in flight
      (what schedd may run at once: one CPU per job) and at 16 in flight
  (b) schedd end-to-end `true` jobs/s, submit to COMPLETED
  (c) Submit calls/s over D-Bus (64 concurrent callers, held jobs)
  (d) submit -> RUNNING latency on an idle node, p50/p99

Usage: sudo bench/throughput.py [N]   (N jobs per throughput phase, default 1000)
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
max_pending_per_user = 1000000
"""


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    res = run_client("bench", CONFIG, "_client.py", str(n), timeout=1200)
    restarts = res["restarts"]
    fm, f16 = res["floor_matched"], res["floor_16"]
    print(f"schedd benchmark: {n} jobs per phase, {res['cpus']} CPUs, executor systemd (daemon restarts: {restarts})")
    print(f"{'measure':52} {'value':>12}  ratio")
    print(f"{'(a) raw StartTransientUnit floor, ' + str(res['cpus']) + ' in flight':52} {fm:9.1f}/s   1.00")
    print(f"{'(a) raw StartTransientUnit floor, 16 in flight':52} {f16:9.1f}/s   {f16 / fm:.2f}")
    print(f"{'(b) schedd end-to-end true jobs, submit->COMPLETED':52} {res['e2e']:9.1f}/s   "
          f"{res['e2e'] / fm:.2f} of (a)@{res['cpus']}, {res['e2e'] / f16:.2f} of (a)@16   target >= 0.80")
    print(f"{'(c) Submit calls over D-Bus, 64 concurrent':52} {res['submit']:9.1f}/s   "
          f"{res['submit'] / 2000:.2f} of the 2000/s target")
    print(f"{'(d) submit->RUNNING latency, idle node, p50':52} {res['latency_p50']:9.2f}ms  target < 5 ms")
    print(f"{'(d) submit->RUNNING latency, idle node, p99':52} {res['latency_p99']:9.2f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
