"""The pool of ready gates (gate.c --zygote): jobs are handed to gates forked beforehand, and every
guarantee of a spawned gate holds for them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import struct
from pathlib import Path

import pytest

from schedd.core.model import Job, JobSpec
from schedd.executor.gate import GateRunner
from test_gate import c_gate  # noqa: F401 - the fixture: gate.c as built here


async def until(cond, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.005)


@pytest.fixture
async def pooled(c_gate, tmp_path: Path):  # noqa: F811
    r = GateRunner(tmp_path / "exits", accounting=False)
    r.gate = [c_gate]
    r.open_pool(3)
    assert r.pool is not None
    await until(lambda: len(r.pool) == 3, "the pool never filled")
    yield r
    r.close_pool()


def job(tmp_path: Path, command: list[str], jid: int = 1, env: list[str] | None = None) -> Job:
    spec = JobSpec(command=command, name="t", cpus=1, memory=1 << 28, uid=os.getuid(), gid=os.getgid(),
                   user_name="", working_directory=str(tmp_path), environment=env or [],
                   stdout_path=str(tmp_path / f"out{jid}"))
    return Job(id=jid, spec=spec)


async def finish(r: GateRunner, gate, jid: int):
    done = asyncio.get_running_loop().create_future()
    assert r.watch(jid, gate.pid, gate.start_time, lambda _id, info: done.set_result(info))
    gate.release()
    return await asyncio.wait_for(done, 10)


def ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


async def test_jobs_run_in_gates_forked_beforehand_which_are_our_children(pooled, tmp_path):
    ready = {g.pid for g in pooled.pool._ready}
    assert all(ppid(pid) == os.getpid() for pid in ready)  # CLONE_PARENT: reaped by us, not the zygote
    gate = pooled.spawn(job(tmp_path, ["sh", "-c", 'echo "$SECRET" $SCHEDD_JOB_ID; exit 4'],
                            env=["SECRET=hunter2"]), (0,))
    assert gate.pid in ready
    # The job is never on the gate's command line (world-readable), its environment neither.
    cmdline = Path(f"/proc/{gate.pid}/cmdline").read_bytes()
    assert cmdline.split(b"\0")[1:2] == [b"--zygote"] and b"hunter2" not in cmdline
    info = await finish(pooled, gate, 1)
    assert (info.exit_code, info.lost) == (4, False)
    assert (tmp_path / "out1").read_text() == "hunter2 1\n"
    await until(lambda: len(pooled.pool) == 3, "the pool was not refilled")


async def test_a_gate_handed_its_job_but_never_released_records_the_abort(pooled, tmp_path):
    gate = pooled.spawn(job(tmp_path, ["sh", "-c", f"touch {tmp_path}/ran"]), (0,))
    os.close(gate.release_fd)  # the daemon gave up (or died) after the scope, before "go"
    gate.release_fd = None
    _, status = os.waitpid(gate.pid, 0)
    assert os.WEXITSTATUS(status) == 121
    assert not (tmp_path / "ran").exists()
    info = pooled.read_status(1, status)
    assert info.lost and info.aborted and info.gate_failed
    assert pooled.status_path(1).read_bytes() == b"aborted=1\n"


async def test_a_garbled_job_message_runs_nothing(pooled, tmp_path):
    ready = pooled.pool.take()
    body = b"no-absolute-status-path\0-\0-\0-\0/\0/dev/null\0/dev/null\0" + b"0\0" + b"1\0touch\0"
    os.write(ready.release_fd, b"SGJ1" + struct.pack("=I", len(body)) + body + b"go\n")
    os.close(ready.release_fd)
    _, status = os.waitpid(ready.pid, 0)
    assert os.WEXITSTATUS(status) == 120


async def test_a_gate_killed_while_it_waited_is_skipped(pooled, tmp_path):
    victim = pooled.pool._ready[0].pid
    os.kill(victim, signal.SIGKILL)
    await until(lambda: Path(f"/proc/{victim}/stat").read_text().split(") ")[1][0] == "Z", "not dead yet")
    gate = pooled.spawn(job(tmp_path, ["true"]), (0,))
    assert gate.pid != victim
    assert (await finish(pooled, gate, 1)).exit_code == 0
    assert not Path(f"/proc/{victim}").exists()  # reaped, not left a zombie


async def test_without_its_zygote_gates_are_spawned_again(pooled, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    os.kill(pooled.pool._zygote, signal.SIGKILL)
    await until(lambda: bool(pooled.pool.broken), "the pool did not notice its zygote's end")
    assert "gate zygote" in caplog.text
    infos = []
    for jid in (1, 2, 3, 4, 5):  # more than the pool held: the rest are spawned
        infos.append(await finish(pooled, pooled.spawn(job(tmp_path, ["sh", "-c", "exit 7"], jid), (0,)), jid))
    assert [(i.exit_code, i.lost) for i in infos] == [(7, False)] * 5


async def test_the_pool_counts_the_starts_it_served_and_missed(pooled, tmp_path):
    pool = pooled.pool
    gates = [pooled.spawn(job(tmp_path, ["true"], jid), (0,)) for jid in (1, 2, 3, 4)]  # one more than it holds
    assert (pool.taken, pool.missed) == (3, 1)
    assert b"--zygote" not in Path(f"/proc/{gates[3].pid}/cmdline").read_bytes()  # the fourth was spawned
    for jid, gate in enumerate(gates, 1):
        assert (await finish(pooled, gate, jid)).exit_code == 0


async def test_closing_the_pool_ends_its_unused_gates_and_zygote(pooled):
    pids = [g.pid for g in pooled.pool._ready] + [pooled.pool._zygote]
    pooled.close_pool()
    assert pooled.pool is None
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]


async def test_closing_does_not_hang_on_a_stopped_zygote(pooled):
    zygote = pooled.pool._zygote
    os.kill(zygote, signal.SIGSTOP)
    await asyncio.wait_for(asyncio.to_thread(pooled.close_pool), 5)  # the daemon's stop must not hang here
    assert not Path(f"/proc/{zygote}").exists()


async def test_the_pool_can_be_turned_off(c_gate, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SCHEDD_GATE_POOL", "0")
    r = GateRunner(tmp_path / "exits", accounting=False)
    r.gate = [c_gate]
    r.open_pool()
    assert r.pool is None
    gate = r.spawn(job(tmp_path, ["true"]), (0,))
    assert b"--zygote" not in Path(f"/proc/{gate.pid}/cmdline").read_bytes()
    assert (await finish(r, gate, 1)).exit_code == 0
