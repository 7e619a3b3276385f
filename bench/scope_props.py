#!/usr/bin/env python3
"""What each property of schedd's job scope costs systemd: one scope start (StartTransientUnit until
its job is done), p50 ms, for the floor's bare scope, the bare scope plus each property schedd adds,
and schedd's whole set, interleaved in one run (tests/sandbox.py boots the systemd; needs root).

Usage: sudo bench/scope_props.py [N] [--rounds R]   (N starts per set and round, default 100; R default 3)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sandbox_run import n_and_rounds, run_client  # noqa: E402


def main() -> int:
    n, rounds = n_and_rounds(sys.argv[1:], 100)
    res = run_client("props", "[node]\nname = \"bench\"\n", "_scope_props_client.py", str(n), str(rounds))
    res.pop("restarts", None)
    floor = res["floor"]
    print(f"one scope start, p50 of {n} per set, median of {rounds} interleaved rounds")
    print(f"{'property set':28} {'ms':>7}  ratio to the floor")
    for name, ms in res.items():
        print(f"{name:28} {ms:7.2f}  {ms / floor:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
