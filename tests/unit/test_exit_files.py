"""Exit files: one per run of a job, private to root (issue 11: a requeue lost across a restart; secrets)."""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
from pathlib import Path

from schedd.executor.plain import PlainExecutor
from schedd.core.model import Job, JobSpec


def make_job(tmp_path: Path, command: list[str]) -> Job:
    pw = pwd.getpwuid(os.getuid())
    out = str(tmp_path / "out")
    spec = JobSpec(command=command, name="t", cpus=1, memory=1 << 28, uid=pw.pw_uid, gid=pw.pw_gid,
                   user_name=pw.pw_name, working_directory=str(tmp_path), stdout_path=out, stderr_path=out)
    return Job(id=7, spec=spec)


async def run_once(ex: PlainExecutor, job: Job) -> None:
    gate = ex.gates.spawn(job, (0,))
    done = asyncio.get_running_loop().create_future()
    assert ex.gates.watch(job.id, gate.pid, gate.start_time, lambda _id, info: done.set_result(info), job.restarts)
    gate.release()
    await asyncio.wait_for(done, 10)


async def test_a_requeued_job_never_reads_its_last_runs_end(tmp_path: Path) -> None:
    ex = PlainExecutor(lambda *_: None, status_dir=tmp_path / "exits", kill_wait_usec=1_000_000)
    job = make_job(tmp_path, ["sh", "-c", "kill -TERM $$"])
    await run_once(ex, job)  # run 0 ends by SIGTERM, as a requeue's stop does
    first = ex.recorded_exit(job)
    assert first is not None and first.signal == 15
    job.restarts = 1  # requeued: PENDING as run 1 (what recovery finds after a restart)
    assert ex.recorded_exit(job) is None  # run 0's file does not describe this run
    job.spec.command = ["true"]
    await run_once(ex, job)
    again = ex.recorded_exit(job)
    assert again is not None and (again.exit_code, again.signal) == (0, 0)
    assert sorted(p.name for p in (tmp_path / "exits").iterdir()) == ["7", "7.1"]
    ex.forget(7, 0)
    assert sorted(p.name for p in (tmp_path / "exits").iterdir()) == ["7.1"]


def test_the_exits_directory_is_root_only_even_if_made_before(tmp_path: Path) -> None:
    d = tmp_path / "exits"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    PlainExecutor(lambda *_: None, status_dir=d, kill_wait_usec=1_000_000)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


async def test_the_finished_job_sweeper_survives_errors(tmp_path: Path, caplog) -> None:
    from schedd.config import Config
    from schedd.core.engine import Engine
    from schedd.core.model import JobState
    from schedd.core.store import Store

    store = Store(tmp_path / "schedd.db")
    engine = Engine(Config(node_name="n", cpu_ids=[0], memory=1 << 30, state_dir=tmp_path), store)
    engine.SWEEP_INTERVAL = 0.01
    engine.config.finished_object_ttl_usec = 0
    done, unwritten = make_job(tmp_path, ["true"]), make_job(tmp_path, ["true"])
    unwritten.id = 8
    for j in (done, unwritten):
        j.state, j.end_time = JobState.COMPLETED, 1
        engine.jobs[j.id] = j
    await store.save(done)
    released: list[int] = []

    class Listener:
        calls = 0

        def job_released(self, job):
            Listener.calls += 1
            if Listener.calls == 1:
                raise RuntimeError("a listener's bug")
            released.append(job.id)

    engine.listeners.append(Listener())
    real = engine._sweep_once
    rounds = []

    def flaky() -> None:
        rounds.append(1)
        if len(rounds) == 1:
            raise OSError("one bad round")
        real()

    engine._sweep_once = flaky
    store.save(unwritten, urgent=False)  # released once its row is written
    sweeper = asyncio.get_running_loop().create_task(engine._sweep_finished())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while 8 not in released or len(rounds) < 3:
            assert loop.time() < deadline, (rounds, released)
            await asyncio.sleep(0.01)
    finally:
        sweeper.cancel()
        store.close()
    assert "sweeping finished jobs failed" in caplog.text and "releasing its object failed" in caplog.text
    assert done.id not in engine.jobs and unwritten.id not in engine.jobs
