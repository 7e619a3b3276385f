#!/usr/bin/env python3
"""The extra start-up cost of a container job against a plain one, measured in the same run.

Boots a test systemd (tests/sandbox.py; needs root, podman and busybox-static), imports a busybox
image made offline (tests/ctr_image.py) into a store of its own, starts schedd with [containers]
pointing at it, and runs bench/_container_client.py inside: the same `true` job (as nobody, in /tmp,
64 MiB, one CPU) plain and in the image, one at a time (Submit -> COMPLETED, ms, median) and N at once
(jobs/s), interleaved over R rounds. Prints both and the ratios.

Usage: sudo bench/container_cost.py [N] [--rounds R]   (N jobs per phase, default 20; R default 3)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from ctr_image import build_rootfs_tar, storage_options, why_not  # noqa: E402
from sandbox import STATE_ROOT, Sandbox  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from _sandbox_run import n_and_rounds  # noqa: E402

PY = "/opt/schedd/venv/bin/python"
IMAGE = "localhost/schedd-bench-busybox:1"
RUN_ROOT = "/run/schedd-bench-containers"


def main() -> int:
    n, rounds = n_and_rounds(sys.argv[1:], 20)
    why = why_not()
    if why:
        print(f"container_cost: {why}", file=sys.stderr)
        return 2
    work = STATE_ROOT / f"ctr-bench-image-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    tar = build_rootfs_tar(work)
    store = work / "storage"
    driver_line, driver = storage_options(store)
    config = (f'[node]\nname = "bench"\n[jobs]\ndefault_memory = "64M"\n'
              f'[containers]\nruntime = "podman"\nstorage_root = "{store}"\nrun_root = "{RUN_ROOT}"\n{driver_line}')
    sb = Sandbox(f"ctr-bench-{os.getpid()}")
    sb.prepare(config=config)
    sb.boot()
    try:
        sb.run(["podman", "--root", str(store), "--runroot", RUN_ROOT, *driver, "import", str(tar), IMAGE], timeout=120)
        sb.run(["systemctl", "start", "schedd"])
        r = sb.run([PY, str(REPO / "bench/_container_client.py"), IMAGE, str(n), str(rounds)], timeout=3600,
                   cwd=str(REPO), check=False)
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-3000:], sb.journal("schedd", 40), sep="\n", file=sys.stderr)
            return 1
        res = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        sb.stop()
        sb.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print(f"one at a time, Submit -> COMPLETED (median of {rounds} rounds of {n}):")
    print(f"  plain      {res['plain_ms']:8.1f} ms/job")
    print(f"  container  {res['container_ms']:8.1f} ms/job   (+{res['container_ms'] - res['plain_ms']:.1f} ms, "
          f"ratio {res['container_ms'] / res['plain_ms']:.1f}x)")
    print(f"{n} at once:")
    print(f"  plain      {res['plain_jobs_s']:8.1f} jobs/s")
    print(f"  container  {res['container_jobs_s']:8.1f} jobs/s   (ratio {res['plain_jobs_s'] / res['container_jobs_s']:.1f}x "
          "slower)")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
