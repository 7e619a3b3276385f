#!/usr/bin/env python3
"""schedd throughput and latency against the raw systemd floor, measured in the same run.

Boots a test systemd (tests/sandbox.py; needs root), starts the installed
schedd there with `systemctl start schedd`, and runs bench/_client.py inside:

  (a) floor: raw StartTransientUnit scopes/s for `true` (a /bin/sh gate blocked on a
      pipe, released once the unit's job is done), at the node's CPU count in flight
      (what schedd may run at once: one CPU per job) and at 16 in flight
  (b) schedd end-to-end `true` jobs/s, submit to COMPLETED
  (c) Submit calls/s over D-Bus (64 concurrent callers, held jobs)
  (d) submit -> RUNNING latency on an idle node, p50/p99, against (e)
  (e) floor: one raw scope start (StartTransientUnit until systemd's job is done, gate spawned
      beforehand), one at a time, p50
  (g) floor: one durable SQLite commit next to the daemon's database (WAL, synchronous=FULL), p50;
      a program starts only once its Submit is durable, so (d) >= max((e), (g)) + the calls
  (f) with --behind M: (b) with 10 held jobs behind, then with M (SubmitMany, batches of 1000,
      another user's where the daemon lets nobody submit), the ratio of the two

Usage: sudo bench/throughput.py [N] [--behind M] [--rounds R]   (N jobs per throughput phase, default 1000;
R rounds of (a), (b), (e), (d) interleaved, medians printed: the machine's load drifts)
"""

from __future__ import annotations

import statistics
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
    args = sys.argv[1:]
    opts = []
    for name in ("--behind", "--rounds"):
        if name in args:
            i = args.index(name)
            opts += [name, str(int(args[i + 1]))]
            del args[i : i + 2]
    n = int(args[0]) if args else 1000
    res = run_client("bench", CONFIG, "_client.py", str(n), *opts, timeout=3600)
    restarts = res["restarts"]
    fm, f16 = res["floor_matched"], res["floor_16"]
    print(f"schedd benchmark: {n} jobs per phase, {res['cpus']} CPUs, executor systemd (daemon restarts: {restarts})")
    print(f"{'measure':52} {'value':>12}  ratio")
    print(f"{'(a) raw StartTransientUnit floor, ' + str(res['cpus']) + ' in flight':52} {fm:9.1f}/s   1.00")
    print(f"{'(a) raw StartTransientUnit floor, 16 in flight':52} {f16:9.1f}/s   {f16 / fm:.2f}")
    ratio = statistics.median(res["e2e_ratios"])
    print(f"{'(b) schedd end-to-end true jobs, submit->COMPLETED':52} {res['e2e']:9.1f}/s   "
          f"{ratio:.2f} of (a)@{res['cpus']}, {res['e2e'] / f16:.2f} of (a)@16   target >= 0.80")
    print(f"{'(c) Submit calls over D-Bus, 64 concurrent':52} {res['submit']:9.1f}/s   "
          f"{res['submit'] / 2000:.2f} of the 2000/s target")
    print(f"{'(d) submit->RUNNING latency, idle node, p50':52} {res['latency_p50']:9.2f}ms  "
          f"{statistics.median(res['latency_ratios']):.2f} of (e)   target < 5 ms, <= 1.30 of (e)")
    print(f"{'(d) submit->RUNNING latency, idle node, p99':52} {res['latency_p99']:9.2f}ms")
    print(f"{'(e) raw single-scope start, StartTransientUnit->done, p50':52} {res['scope_p50']:9.2f}ms  1.00")
    both = max(res["scope_p50"], res["commit_p50"])
    print(f"{'(g) one durable SQLite commit on the state disk, p50':52} {res['commit_p50']:9.2f}ms  "
          f"(d) is {res['latency_p50'] / both:.2f} of max((e), (g))")
    cpu = {k[len("cpu_ms_"):]: v for k, v in res.items() if k.startswith("cpu_ms_")}
    if cpu:
        print("CPU per (b) job: " + ", ".join(f"{k} {v:.2f} ms" for k, v in cpu.items()))
    fcpu = {k[len("floorcpu_ms_"):]: v for k, v in res.items() if k.startswith("floorcpu_ms_")}
    if fcpu:
        print(f"CPU per (a)@{res['cpus']} scope: " + ", ".join(f"{k} {v:.2f} ms" for k, v in fcpu.items()))
    if res["rounds"] > 1:
        print(f"{res['rounds']} rounds, medians; per round (b)/(a): "
              f"{', '.join(f'{r:.2f}' for r in res['e2e_ratios'])}; (d)/(e): "
              f"{', '.join(f'{r:.2f}' for r in res['latency_ratios'])}")
    if "e2e_behind" in res:
        label = f"(f) (b) with 10 held jobs behind ({res['behind_user']}'s)"
        print(f"{label:52} {res['e2e_behind_10']:9.1f}/s   1.00")
        label = f"(f) (b) with {res['behind']} held jobs behind"
        print(f"{label:52} {res['e2e_behind']:9.1f}/s   {res['e2e_behind'] / res['e2e_behind_10']:.2f} of 10 behind"
              f"   target >= 0.90   (submitted in {res['behind_submit_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
