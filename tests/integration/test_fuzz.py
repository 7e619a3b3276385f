"""Hostile input: 10,000 random Submit specs from an ordinary user over the real bus."""

from __future__ import annotations

import json

from conftest import Node, client

N = 10_000


def test_ten_thousand_random_specs_never_hurt_the_daemon(node: Node, users):
    before = node.daemon_pid_and_restarts()
    r = node.run([*client("fuzz_submit.py"), str(N)],
                 user="schedd-alice", timeout=900)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    print(summary)
    assert summary["calls"] >= N
    assert summary.get("accepted", 0) > 100 and summary.get("InvalidArgument", 0) > 1000
    assert summary.get("AccessDenied", 0) > 0 and summary.get("Unsatisfiable", 0) > 0
    assert node.daemon_pid_and_restarts() == before  # same process, NRestarts unchanged
    assert node.unit_property("schedd.service", "NRestarts") == "0"
