#!/usr/bin/env python3
"""What recording the exit status costs per job: the gate (C and perl) against a bare /bin/sh gate.

Each run starts a gate blocked on its pipe, releases it, and waits for the job (`true`)
and the gate to end, 300 times; CPU is the children's user+system time (getrusage),
so it counts the gate, the fork and the job. "spawn ms" is the daemon's own part on the path
from "the scheduler picked the job" to StartTransientUnit: GateRunner.spawn (a new gate), or
handing the job to a ready gate of the pool (gate.c --zygote; its forks happen elsewhere, as
children's CPU). No systemd needed; run as any user.
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


def bare_sh() -> tuple[float, float, float]:
    t0, c0, sp = time.perf_counter(), children_cpu(), 0.0
    for _ in range(N):
        s0 = time.perf_counter()
        r, w = os.pipe()
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "read _ <&3; exec /bin/true"], {},
                             file_actions=[(os.POSIX_SPAWN_DUP2, r, 3)], setsid=True)
        os.close(r)
        sp += time.perf_counter() - s0
        os.write(w, b"go\n")
        os.close(w)
        os.waitpid(pid, 0)
    return (time.perf_counter() - t0) / N * 1e3, (children_cpu() - c0) / N * 1e3, sp / N * 1e3


async def gate(cmd: list[str], d: Path, pool: bool = False) -> tuple[float, float, float]:
    runner = GateRunner(d / "exits", accounting=False)
    runner.gate = cmd
    if pool:
        runner.open_pool()
        while len(runner.pool) < runner.pool.size:
            await asyncio.sleep(0.001)
    pw_uid = os.getuid()
    spec = JobSpec(command=["/bin/true"], name="t", cpus=1, memory=1 << 28, uid=pw_uid, gid=os.getgid(),
                   user_name="", working_directory=str(d), stdout_path=str(d / "out"))
    t0, c0, sp = time.perf_counter(), children_cpu(), 0.0
    for i in range(N):
        while pool and not len(runner.pool):
            await asyncio.sleep(0.0005)  # as in the daemon: the pool refills while a scope starts
        s0 = time.perf_counter()
        g = runner.spawn(Job(id=i, spec=spec), (0,))
        sp += time.perf_counter() - s0
        g.release()
        os.waitpid(g.pid, 0)
        info = runner.read_status(i)
        assert info.exit_code == 0 and not info.lost, info
    runner.close_pool()
    return (time.perf_counter() - t0) / N * 1e3, (children_cpu() - c0) / N * 1e3, sp / N * 1e3


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        rows = [("bare /bin/sh gate (records nothing)", bare_sh())]
        if os.access(GATE_BINARY, os.X_OK):
            rows.append(("schedd-gate (gate.c), spawned", await gate([str(GATE_BINARY)], Path(d))))
            rows.append(("schedd-gate (gate.c), from the pool", await gate([str(GATE_BINARY)], Path(d), True)))
        rows.append(("gate.pl", await gate([PERL, "-e", GATE_SCRIPT], Path(d))))
    base = rows[0][1][1]
    print(f"per job, {N} runs of `true`            wall ms   CPU ms   extra CPU vs bare sh   spawn ms")
    for name, (wall, cpu, sp) in rows:
        print(f"{name:40} {wall:7.2f}  {cpu:7.2f}   {cpu - base:+.2f}                 {sp:6.3f}")


if __name__ == "__main__":
    asyncio.run(main())
