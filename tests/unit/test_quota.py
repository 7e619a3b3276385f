"""What one user may hold queued (count and bytes), the order of the checks, the purge of finished jobs,
and that a big batch leaves the loop to others: the engine on a real store, with a fake executor."""

from __future__ import annotations

import asyncio
import gc
import pwd
import time
import weakref
from pathlib import Path

import pytest
from prereq import unavailable
from dbus_fast import Variant

from schedd.config import Config
from schedd.core.engine import Caller, Engine
from schedd.errors import InvalidArgument, NotFound
from schedd.executor import Executor, ExitInfo
from schedd.core.model import Job, JobSpec, JobState, now_usec
from schedd.core.quota import Quotas, exec_bytes
from schedd.core.store import COLUMNS, PURGE_SQL, Store, job_to_row


def user() -> pwd.struct_passwd:
    for pw in pwd.getpwall():
        if pw.pw_uid not in (0, 65534):
            return pw
    unavailable("no non-root user in /etc/passwd")


class FakeExecutor(Executor):
    """Starts nothing: a job 'runs' until the test ends it with engine.on_exit."""

    name = "fake"

    async def start(self, job, alloc, ready=None) -> dict:
        if ready is not None:
            await ready
        return {"fake": job.id}

    async def stop(self, job) -> None:
        asyncio.get_running_loop().call_soon(self.on_exit, job.id, ExitInfo(exit_code=143, signal=15))

    async def recover(self, job) -> bool:
        return False


class Caps:
    max_pending_per_user = 5
    max_queued_bytes_per_user = 100


def test_exec_bytes_counts_each_string_and_its_nul():
    spec = JobSpec(command=["echo", "é"], name="x", cpus=1, memory=1, environment=["A=1"])
    assert exec_bytes(spec) == 5 + 3 + 4


def test_quota_reservations_count_until_released():
    q = Quotas(Caps())
    q.reserve(7, 3, 0)
    with pytest.raises(InvalidArgument, match=r"has 3 queued jobs .* and asks for 3 more; .*at most 5 per user"):
        q.reserve(7, 3, 0)  # a second batch while the first is still being built
    q.reserve(8, 5, 0)  # another user has its own share
    q.reserve(7, 0, 60)
    with pytest.raises(InvalidArgument, match=r"holds 60 bytes .* asks for 41 more; .*at most 100 bytes per user "
                                              r"\(max_queued_bytes_per_user\)"):
        q.reserve(7, 0, 41)
    q.unreserve(7, 3, 60)
    q.enter(7, 99)
    assert (q.jobs(7), q.bytes(7)) == (1, 99)
    q.leave(7, 99)
    assert (q.jobs(7), q.bytes(7)) == (0, 0) and 7 not in q.queued and 7 not in q.reserved


@pytest.fixture
async def engine(tmp_path: Path):
    cfg = Config(node_name="n", cpu_ids=[0], memory=1 << 30, state_dir=tmp_path, max_pending_per_user=50,
                 max_queued_bytes_per_user=10_000, keep_finished_usec=3_600_000_000)
    store = Store(tmp_path / "schedd.db")
    eng = Engine(cfg, store)
    await eng.recover(FakeExecutor(lambda jid, info: eng.on_exit(jid, info)))
    yield eng
    await eng.shutdown()
    store.close()


def spec(argv=("true",), hold=True, **extra) -> dict:
    d = {"Command": Variant("as", list(argv)), "Hold": Variant("b", hold)}
    d.update(extra)
    return d


async def test_the_count_cap_is_checked_before_any_spec_is_built(engine: Engine):
    who = Caller(uid=user().pw_uid)
    bad = spec(CPUs=Variant("s", "x"))
    with pytest.raises(InvalidArgument, match=r"queues at most 50 per user \(max_pending_per_user\)") as e:
        await engine.submit_many([spec()] * 50 + [bad], who)
    assert "spec " not in e.value.message  # the bad spec was never looked at
    with pytest.raises(InvalidArgument, match=r"spec 49: CPUs"):  # within the cap the specs are checked
        await engine.submit_many([spec()] * 49 + [bad], who)
    assert engine.quotas.jobs(who.uid) == 0 and not engine.jobs  # nothing reserved is left behind


async def test_queued_bytes_go_up_on_submit_and_down_on_start_cancel_and_end(engine: Engine):
    who = Caller(uid=user().pw_uid)
    argv = ("true", "x" * 994)  # 5 + 995 = 1000 bytes
    jobs = await engine.submit_many([spec(argv)] * 9, who)
    assert engine.quotas.bytes(who.uid) == 9000 and engine.quotas.jobs(who.uid) == 9
    with pytest.raises(InvalidArgument, match=r"^uid \d+ holds 9000 bytes .* and asks for 2000 or more; this daemon "
                                              r"holds at most 10000 bytes per user \(max_queued_bytes_per_user\)"):
        await engine.submit_many([spec(argv)] * 2, who)
    assert engine.quotas.bytes(who.uid) == 9000 and engine.counts()[0] == 9  # all or nothing, nothing reserved
    await engine.cancel(jobs[0].id, who)
    assert engine.quotas.bytes(who.uid) == 8000
    await engine.release(jobs[1].id, who)  # HELD -> PENDING: still queued
    assert engine.quotas.bytes(who.uid) == 8000
    running = engine.jobs[jobs[1].id]
    for _ in range(100):
        if running.state == JobState.RUNNING:
            break
        await asyncio.sleep(0.01)
    assert running.state == JobState.RUNNING and engine.quotas.bytes(who.uid) == 7000  # started: no longer queued
    engine.on_exit(running.id, ExitInfo(exit_code=0))
    assert running.state == JobState.COMPLETED and engine.quotas.bytes(who.uid) == 7000
    await engine.submit_many([spec(argv)] * 3, who)  # the room freed is there to take
    assert engine.quotas.bytes(who.uid) == 10_000
    engine.config.max_queued_bytes_per_user = 1 << 30


async def test_concurrent_batches_share_the_cap_while_one_yields(engine: Engine):
    who = Caller(uid=user().pw_uid)
    engine.SLICE = 0  # yield after every spec: the second batch runs while the first is half built
    first = asyncio.ensure_future(engine.submit_many([spec()] * 30, who))
    await asyncio.sleep(0)
    with pytest.raises(InvalidArgument, match=r"has 30 queued jobs .* asks for 21 more"):
        await engine.submit_many([spec()] * 21, who)
    second = await engine.submit_many([spec()] * 20, who)
    jobs = await first
    ids = sorted(j.id for j in jobs + second)
    assert ids == list(range(1, 51))  # one block of ids each, none given twice
    assert [j.id for j in jobs] == list(range(jobs[0].id, jobs[0].id + 30))
    assert engine.quotas.jobs(who.uid) == 50 and not engine.quotas.reserved


async def test_a_big_batch_leaves_the_loop_to_other_callers(engine: Engine):
    who = Caller(uid=0)
    engine.config.max_pending_per_user = engine.config.max_queued_bytes_per_user = 1 << 40
    worst, stop = 0.0, False

    # The loop thread's own CPU time between two turns: how long the batch held the loop without
    # yielding, not how long a busy machine left this process off its CPUs.
    async def ticker():
        nonlocal worst
        last = time.thread_time()
        while not stop:
            await asyncio.sleep(0)
            now = time.thread_time()
            worst, last = max(worst, now - last), now

    # As the daemon does after recovery (daemon.py): what the process holds already is frozen, so a
    # full collection walks this batch, not the heap of every test this process ran before.
    gc.collect()
    gc.freeze()
    try:
        t = asyncio.ensure_future(ticker())
        jobs = await engine.submit_many([spec()] * 20_000, who)
        stop = True
        await t
    finally:
        gc.unfreeze()
    assert len(jobs) == 20_000
    # Slices are 10 ms; the bound is generous yet far below the second one unsliced batch of this
    # size takes.
    assert worst < 0.25, worst


async def test_a_batch_is_invisible_until_it_is_durable(engine: Engine):
    who = Caller(uid=user().pw_uid)
    engine.SLICE = 0
    batch = asyncio.ensure_future(engine.submit_many([spec()] * 5, who))
    for _ in range(1000):
        if engine._unannounced:
            break
        await asyncio.sleep(0)
    jid = min(engine._unannounced)
    with pytest.raises(NotFound, match=f"no job {jid}"):
        engine.get(jid)
    with pytest.raises(NotFound):
        await engine.cancel(jid, who)
    assert jid not in [j.id for j in engine.list(None, None, 0, 100)]
    await batch
    assert engine.get(jid).state == JobState.HELD


async def test_finished_jobs_are_purged_and_then_said_to_be(engine: Engine):
    who = Caller(uid=user().pw_uid)
    jobs = await engine.submit_many([spec()] * 3, who)
    for j in jobs[:2]:
        await engine.cancel(j.id, who)
    old = now_usec() - 2 * engine.config.keep_finished_usec
    engine.jobs[jobs[0].id].end_time = old  # ended long ago
    await engine.store.save(engine.jobs[jobs[0].id])
    assert await engine.purge_once(now_usec() - engine.config.keep_finished_usec) == 1
    with pytest.raises(NotFound, match=f"job {jobs[0].id} finished more than 1h ago and was purged "
                                       r"\(keep_finished\)"):
        engine.get(jobs[0].id)
    with pytest.raises(NotFound, match="was purged"):
        await engine.cancel(jobs[0].id, who)
    assert engine.get(jobs[1].id).state == JobState.CANCELLED  # finished recently: kept
    assert engine.get(jobs[2].id).state == JobState.HELD
    with pytest.raises(NotFound, match="^no job 999$"):
        engine.get(999)
    assert engine.store.purged_max_id() == jobs[0].id


def test_the_purge_query_deletes_only_old_finished_rows_in_batches(tmp_path: Path):
    store = Store(tmp_path / "s.db")
    spec_ = JobSpec(command=["true"], name="t", cpus=1, memory=1, working_directory="/")
    now = now_usec()
    rows = []
    for jid, state, end in ((1, JobState.COMPLETED, now - 100), (2, JobState.FAILED, now - 100),
                            (3, JobState.CANCELLED, now - 100), (4, JobState.COMPLETED, now),
                            (5, JobState.PENDING, 0), (6, JobState.RUNNING, 0), (7, JobState.COMPLETED, now - 100)):
        rows.append(Job(id=jid, spec=spec_, state=state, submit_time=1, end_time=end))
    store._w.executemany(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                         [job_to_row(j) for j in rows])
    assert sorted(store.purge_finished(now - 50, 2) + store.purge_finished(now - 50, 2)) == [1, 2, 3, 7]
    assert store.purge_finished(now - 50, 2) == []
    assert [i for i in range(1, 8) if store.exists(i)] == [4, 5, 6]
    assert store.purged_max_id() == 7 and store.max_id() == 7
    store.purge_finished(now + 1, 10)  # job 4 too: the highest id is still known, never given again
    assert store.max_id() == 7
    plan = " ".join(r[-1] for r in store._r.execute(f"EXPLAIN QUERY PLAN {PURGE_SQL}", (5, "A", "B", "C", 3)))
    assert "USING INDEX jobs_end" in plan, plan
    plan = " ".join(r[-1] for r in store._r.execute("EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE submit_time >= 5"))
    assert "jobs_submit" in plan, plan
    store.close()


async def test_a_released_job_object_is_freed_without_the_cyclic_collector():
    from schedd.api.dbus.service import JobObject, ServiceBus

    bus = ServiceBus(bus_address="unix:path=/nonexistent")
    bus._disconnected = True  # exports emit nothing

    class Service:
        pass

    obj = JobObject(Service(), Job(id=1, spec=JobSpec(command=["true"], name="t", cpus=1, memory=1)))
    bus.export("/org/schedd/Schedd1/job/1", obj)
    bus.unexport("/org/schedd/Schedd1/job/1")
    ref = weakref.ref(obj)
    gc.disable()
    try:
        del obj
        assert ref() is None  # frozen heaps (engine._Slicer) rely on it: no cycle to leak
    finally:
        gc.enable()


async def test_get_stats_reads_the_archive_in_the_background_thread(engine: Engine, monkeypatch):
    import threading

    from schedd.core import stats

    who = Caller(uid=user().pw_uid)
    jobs = await engine.submit_many([spec()] * 4, who)
    await engine.cancel(jobs[0].id, who)
    await engine.store.drain()
    del engine.jobs[jobs[0].id]  # archived only: read from the store
    threads = []
    real = engine.store.accounting
    monkeypatch.setattr(engine.store, "accounting", lambda *a, **k: threads.append(threading.current_thread().name)
                        or real(*a, **k))
    figures = await stats.gather(engine)
    assert threads and threads[0].startswith("schedd-store-bg")
    assert figures == stats.collect(engine)
    assert figures["Total"]["Jobs"] == 4 and figures["Total"]["States"] == {"CANCELLED": 1, "HELD": 3}


def test_the_byte_count_validation_made_is_the_one_the_caps_use():
    """build_spec counts argv + environment once; a spec from the store (not counted) gets the same sum."""
    from schedd.core.model import JobSpec
    from schedd.core.quota import exec_bytes

    argv, env = ["sh", "-c", "echo é"], ["A=1", "B=ü"]
    counted = JobSpec(command=argv, environment=env, name="x", cpus=1, memory=1 << 20, uid=1, gid=1,
                      user_name="u", working_directory="/", exec_size=3 + 3 + 8 + 4 + 5)
    fresh = JobSpec(command=argv, environment=env, name="x", cpus=1, memory=1 << 20, uid=1, gid=1,
                    user_name="u", working_directory="/")
    assert exec_bytes(fresh) == exec_bytes(counted) == 23
