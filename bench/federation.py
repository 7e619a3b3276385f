#!/usr/bin/env python3
"""Federation cost: a forwarded job against a local one, measured in the same run.

Boots two schedd nodes, a and b, each in its own network namespace with its own test
systemd (tests/netcluster.py; needs root), and runs bench/_fed_client.py on a as an
ordinary user: Submit latency, submit -> start latency and jobs/s for jobs that stay on a
(the floor) and for jobs forwarded to b (Node=b; their state mirrored back to a).

Usage: sudo bench/federation.py [N]   (N jobs per phase, default 300)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from netcluster import Cluster, NodeSpec  # noqa: E402
from testusers import ensure_user  # noqa: E402

USER = "schedd-alice"  # root's jobs are never forwarded: the bench submits as an ordinary user


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    ensure_user(USER)
    cpus = min(2, len(os.sched_getaffinity(0)))
    extra = "max_pending_per_user = 1000000\n"
    c = Cluster(f"b{os.getpid() % 10000}", [NodeSpec("a", cpus=cpus, extra=extra), NodeSpec("b", cpus=cpus, extra=extra)],
                heartbeat="1s")
    try:
        c.up()
        a = c.nodes["a"]
        r = a.run(["env", f"PYTHONPATH={REPO / 'bench'}", "/opt/schedd/venv/bin/python",
                   str(REPO / "bench/_fed_client.py"), str(n)], user=USER, timeout=1800, cwd="/")
        res = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        c.down()
    loc, fwd = res["local"], res["forwarded"]
    print(f"federation benchmark: {n} jobs per phase, 2 nodes on one machine ({cpus} CPUs each), job `true`")
    print(f"{'measure':44} {'local':>10} {'forwarded':>10}  forwarded/local")
    for key, label, unit in (("submit_p50", "Submit call latency p50", "ms"), ("submit_p99", "Submit call latency p99", "ms"),
                             ("start_p50", "submit -> started p50", "ms"), ("start_p99", "submit -> started p99", "ms"),
                             ("jobs_per_s", "jobs/s, submit -> COMPLETED at the origin", "/s")):
        print(f"{label:44} {loc[key]:8.2f}{unit:>2} {fwd[key]:8.2f}{unit:>2}  {fwd[key] / loc[key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
