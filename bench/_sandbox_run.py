"""Run a benchmark client inside a freshly booted test systemd with schedd started (needs root).

The checkout must be reachable inside the sandbox: anywhere but under /tmp (it has a private /tmp).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from sandbox import Sandbox  # noqa: E402

PY = "/opt/schedd/venv/bin/python"  # inside the sandbox: the installed (or SCHEDD_SANDBOX_VENV's) schedd


def n_and_rounds(args: list[str], default_n: int, default_rounds: int = 3) -> tuple[int, int]:
    """`[N] [--rounds R]` of a benchmark's command line."""
    args = list(args)
    rounds = default_rounds
    if "--rounds" in args:
        i = args.index("--rounds")
        rounds = int(args[i + 1])
        del args[i:i + 2]
    return (int(args[0]) if args else default_n), rounds


def run_client(tag: str, config: str, client: str, *args: str, timeout: float = 3600) -> dict:
    """Boot, `systemctl start schedd`, run bench/<client> as root; its last stdout line (JSON), plus
    the daemon's restarts during the run under "restarts"."""
    sb = Sandbox(f"{tag}-{os.getpid()}")
    sb.prepare(config=config)
    sb.boot()
    try:
        sb.run(["systemctl", "start", "schedd"])
        r = sb.run([PY, str(REPO / "bench" / client), *args], timeout=timeout, cwd=str(REPO), check=False)
        if r.returncode != 0:
            raise RuntimeError(f"client failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n"
                               f"{sb.journal('schedd', 40)}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res["restarts"] = sb.run(["systemctl", "show", "-P", "NRestarts", "schedd"]).stdout.strip()
    finally:
        sb.stop()
        sb.cleanup()
    return res
