"""How the engine takes a job's end: a status file no gate wrote, or an error while processing it,
makes the job FAILED (lost) with its CPUs back, never a success, a job stuck RUNNING or a crash."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from dbus_fast import Variant

from schedd.config import Config
from schedd.core.engine import Caller, Engine
from schedd.executor.gated import GatedExecutor
from schedd.core.model import JobState, Reason
from schedd.core.store import Store

GOOD = b"status=0\noom_kill=0\npeak=4096\ncpu_usec=10\nstragglers=0\nend=1\n"
FORGED = (b"error=cannot open /nonexistent-dir/x\nstatus=0\nend=1\n for writing: No such file or directory\n"
          b"status=53504\noom_kill=0\npeak=0\ncpu_usec=0\nstragglers=0\nend=1\n")


class GateFiles(GatedExecutor):
    """Runs nothing: a job 'ends' when a test writes its status file; the file is read by the real GateRunner."""

    name = "files"

    def __init__(self, on_exit, status_dir: Path) -> None:
        super().__init__(on_exit, status_dir=status_dir, accounting=False)
        self.broken: set[int] = set()  # recover() raises for these

    async def start(self, job, alloc, ready=None) -> dict:
        if ready is not None:
            await ready
        return {"pid": 0}

    async def stop(self, job) -> None:
        pass

    async def recover(self, job) -> bool:
        if job.id in self.broken:
            raise RuntimeError("the unit cannot be looked at")
        self.on_exit(job.id, self.gates.read_status(job.id))  # the gate is gone: what did it record?
        return False

    def end(self, job_id: int, data: bytes) -> None:
        self.gates.status_path(job_id).write_bytes(data)
        self.on_exit(job_id, self.gates.read_status(job_id))


def make(state: Path) -> tuple[Engine, Store, GateFiles]:
    cfg = Config(node_name="n", cpu_ids=[0, 1], memory=1 << 30, state_dir=state)
    store = Store(state / "schedd.db")
    engine = Engine(cfg, store)
    return engine, store, GateFiles(engine.on_exit, state / "exits")


async def until(pred, what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def running_jobs(engine: Engine, n: int) -> list[int]:
    ids = []
    for _ in range(n):
        job = await engine.submit({"Command": Variant("as", ["true"]), "Memory": Variant("t", 64 << 20)},
                                  Caller(uid=os.getuid()))
        ids.append(job.id)
    await until(lambda: all(engine.jobs[i].state == JobState.RUNNING for i in ids), "jobs running")
    return ids


@pytest.fixture
async def node(tmp_path: Path):
    engine, store, ex = make(tmp_path)
    await engine.recover(ex)
    yield engine, store, ex
    await engine.shutdown()
    store.close()


@pytest.mark.parametrize("data", [
    FORGED,
    b"status=abc\noom_kill=0\npeak=0\ncpu_usec=0\nstragglers=0\nend=1\n",
    b"error=x\npeak=99999999999999999999\naborted=1\n" + GOOD,
    GOOD[:20],
    b"\xff\x00garbage",
], ids=["forged-lines", "status-abc", "huge-peak-aborted", "truncated", "binary"])
async def test_a_malformed_status_file_fails_the_job_as_lost(node, caplog, data):
    engine, store, ex = node
    (jid,) = await running_jobs(engine, 1)
    ex.end(jid, data)
    job = engine.jobs[jid]
    assert (job.state, job.reason) == (JobState.FAILED, Reason.LOST)
    assert engine.ledger.free_cpus == 2  # its CPUs are back
    await store.drain()
    assert (store.get(jid).state, store.get(jid).reason) == (JobState.FAILED, Reason.LOST)
    assert any(f"job {jid}: status file" in r.getMessage() and "malformed" in r.getMessage()
               for r in caplog.records)
    assert await running_jobs(engine, 1)  # nothing requeued, nothing stuck: the node runs the next job


async def test_an_error_while_ending_a_job_does_not_leave_it_running(node):
    engine, store, ex = node
    a, b = await running_jobs(engine, 2)

    class Broken:
        def job_changed(self, job, props, old):
            if job.id == a and job.state.terminal:
                raise RuntimeError("listener bug")

        def __getattr__(self, name):
            return lambda *args: None

    engine.listeners.append(Broken())
    ex.end(a, GOOD)  # must not raise
    ex.end(b, GOOD)
    assert engine.jobs[a].state.terminal and engine.jobs[b].state == JobState.COMPLETED
    assert engine.ledger.free_cpus == 2
    await store.drain()
    assert store.get(a).state.terminal


async def test_recovery_goes_on_past_bad_jobs(tmp_path: Path, caplog):
    engine, store, ex = make(tmp_path)
    await engine.recover(ex)
    ids = await running_jobs(engine, 2)
    await store.drain()
    await engine.shutdown()
    store.close()

    # The daemon is down; job 1's gate left a status file no gate writes, job 2's unit cannot be looked at.
    engine, store, ex = make(tmp_path)
    ex.gates.status_path(ids[0]).write_bytes(b"status=abc\nend=1\n")
    ex.broken.add(ids[1])
    await engine.recover(ex)  # must not raise
    try:
        for jid in ids:
            assert (engine.jobs[jid].state, engine.jobs[jid].reason) == (JobState.FAILED, Reason.LOST)
        assert engine.ledger.free_cpus == 2
        assert any(f"job {ids[0]}: status file" in r.getMessage() for r in caplog.records)
        assert any(f"job {ids[1]}" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        await engine.shutdown()
        store.close()
