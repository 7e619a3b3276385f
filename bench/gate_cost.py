#!/usr/bin/env python3
"""What recording the exit status costs per job: the gate (C and perl) against a bare /bin/sh gate.

Each run starts a gate blocked on its pipe, releases it, and waits for the job (`true`)
and the gate to end, 300 times; CPU is the children's user+system time (getrusage),
so it counts the gate, the fork and the job. No systemd needed; run as any user.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from schedd.executor.gate import GATE_BINARY, GATE_SCRIPT, PERL, GateRunner  # noqa: E402
from schedd.core.model import Job, JobSpec  # noqa: E402

N = 300


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bare_sh() -> tuple[float, float]:
    t0, c0 = time.perf_counter(), children_cpu()
    for _ in range(N):
        r, w = os.pipe()
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "read _ <&3; exec /bin/true"], {},
                             file_actions=[(os.POSIX_SPAWN_DUP2, r, 3)], setsid=True)
        os.close(r)
        os.write(w, b"go\n")
        os.close(w)
        os.waitpid(pid, 0)
    return (time.perf_counter() - t0) / N * 1e3, (children_cpu() - c0) / N * 1e3


async def gate(cmd: list[str], d: Path) -> tuple[float, float]:
    runner = GateRunner(d / "exits", accounting=False)
    runner.gate = cmd
    pw_uid = os.getuid()
    spec = JobSpec(command=["/bin/true"], name="t", cpus=1, memory=1 << 28, uid=pw_uid, gid=os.getgid(),
                   user_name="", working_directory=str(d), stdout_path=str(d / "out"))
    t0, c0 = time.perf_counter(), children_cpu()
    for i in range(N):
        g = runner.spawn(Job(id=i, spec=spec), (0,))
        g.release()
        os.waitpid(g.pid, 0)
        info = runner.read_status(i)
        assert info.exit_code == 0 and not info.lost, info
    return (time.perf_counter() - t0) / N * 1e3, (children_cpu() - c0) / N * 1e3


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        rows = [("bare /bin/sh gate (records nothing)", bare_sh())]
        if os.access(GATE_BINARY, os.X_OK):
            rows.append(("schedd-gate (gate.c)", await gate([str(GATE_BINARY)], Path(d))))
        rows.append(("gate.pl", await gate([PERL, "-e", GATE_SCRIPT], Path(d))))
    base = rows[0][1][1]
    print(f"per job, {N} runs of `true`       wall ms   CPU ms   extra CPU vs bare sh")
    for name, (wall, cpu) in rows:
        print(f"{name:36} {wall:7.2f}  {cpu:7.2f}   {cpu - base:+.2f}")


if __name__ == "__main__":
    asyncio.run(main())
