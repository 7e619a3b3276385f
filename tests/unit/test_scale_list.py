"""ListJobs from indexes: the engine's listing agrees with a plain filter-and-sort of every job,
whatever transitions, sweeps and archived jobs came before (the indexes are kept, not rebuilt)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from schedd.config import Config
from schedd.core.engine import Engine
from schedd.core.engine.table import SortedIds
from schedd.core.model import TERMINAL_STATES, Job, JobSpec, JobState
from schedd.core.store import Store


def test_sorted_ids_is_an_ordered_set():
    rng = random.Random(7)
    ids, ref = SortedIds(), set()
    for _ in range(20_000):
        x = rng.randrange(5000)
        if rng.random() < 0.6:
            ids.add(x)
            ref.add(x)
        else:
            ids.discard(x)
            ref.discard(x)
    assert list(ids) == sorted(ref) and len(ids) == len(ref)
    for cut in (-1, 0, 17, 2500, 4999, 5000):
        assert list(ids.after(cut)) == sorted(i for i in ref if i > cut)
    assert all((x in ids) == (x in ref) for x in range(-2, 5002))


def job(jid: int, uid: int, state: JobState) -> Job:
    s = JobSpec(command=["true"], name="true", cpus=1, memory=1 << 26, uid=uid, gid=uid, user_name=f"u{uid}",
                stdout_path="/o", stderr_path="/o")
    return Job(id=jid, spec=s, state=state, submit_time=1, end_time=1 if state in TERMINAL_STATES else 0)


@pytest.fixture
def engine(tmp_path: Path):
    store = Store(tmp_path / "schedd.db")
    cfg = Config(node_name="n1", cpu_ids=[0, 1], memory=1 << 30, state_dir=tmp_path)
    yield Engine(cfg, store)
    store.close()


async def test_listing_matches_a_scan_after_random_transitions(engine: Engine):
    rng = random.Random(3)
    states = list(JobState)
    archived = [job(i, rng.choice((1000, 1001)), rng.choice(sorted(TERMINAL_STATES))) for i in range(1, 400, 3)]
    await engine.store.save(*archived)  # finished long ago: only in the store
    for i in range(1, 1200):
        if i % 3 != 1:
            engine._insert(job(i, rng.choice((1000, 1001, 1002)), rng.choice(states)))
    for _ in range(3000):
        j = engine.jobs[rng.choice(list(engine.jobs))]
        r = rng.random()
        if r < 0.8:
            engine._set(j, rng.choice(states), "")
        elif j.state.terminal:
            engine._drop_finished(j)  # the sweep: out of memory, still in the store
            await engine.store.save(j)
        else:
            engine._remove(j)
    await engine.store.drain()
    everything = {j.id: j for j in archived} | {j.id: j for j in engine.store.query(None, None, 0, 10**6, set())}
    everything |= engine.jobs
    for filt in (None, ["HELD"], ["PENDING", "RUNNING"], ["COMPLETED"], ["FAILED", "CANCELLED", "HELD"]):
        for uid in (None, 1000, 1002, 4242):
            for after, limit in ((0, 50), (0, 10_000), (600, 7), (1150, 100), (5000, 10)):
                want = sorted((j for j in everything.values()
                               if j.id > after and (filt is None or j.state.value in filt)
                               and (uid is None or j.uid == uid)), key=lambda j: j.id)[:limit]
                got = engine.list(filt, uid, after, limit)
                assert [(j.id, j.state) for j in got] == [(j.id, j.state) for j in want], (filt, uid, after, limit)


async def test_a_hidden_batch_is_not_listed(engine: Engine):
    engine._insert(job(1, 1000, JobState.HELD))
    engine._insert(job(2, 1000, JobState.HELD))
    engine._unannounced.add(2)  # a batch not yet durable
    assert [j.id for j in engine.list(None, None, 0, 10)] == [1]
    assert [j.id for j in engine.list(["HELD"], 1000, 0, 10)] == [1]


async def test_loaded_and_submitted_jobs_share_no_list_they_may_change(engine: Engine, tmp_path: Path):
    """Empty list fields share one list (memory per job); a job's non-empty ones are its own."""
    from schedd.core import model
    from schedd.core.store import row_to_job, job_to_row

    a, b = job(1, 1000, JobState.HELD), job(2, 1000, JobState.HELD)
    b.spec.environment = ["A=1"]
    la, lb = row_to_job(job_to_row(a)), row_to_job(job_to_row(b))
    assert la.assigned_cpus is model.EMPTY and la.spec.after is model.EMPTY
    assert lb.spec.environment == ["A=1"] and lb.spec.command is not la.spec.command
    assert (la.spec.stderr_path, lb.spec.command) == (a.spec.stderr_path, ["true"])
    assert model.EMPTY == []


async def test_a_bulk_load_indexes_as_inserts_one_by_one(engine: Engine, tmp_path: Path):
    rng = random.Random(5)
    loaded = [job(i, rng.choice((1000, 1001)), rng.choice(list(JobState))) for i in range(1, 5000, 2)]
    engine._insert_loaded(loaded)
    other = Engine(engine.config, engine.store)
    for j in loaded:
        other._insert(j)
    assert engine._by_state == other._by_state and dict(engine.quotas.queued) == dict(other.quotas.queued)
    for filt in (None, ["HELD"], ["RUNNING", "COMPLETED"]):
        for uid in (None, 1001):
            assert engine.list(filt, uid, 777, 3000) == other.list(filt, uid, 777, 3000)
    assert {k: list(v) for k, v in engine._user_ids.items()} == {k: list(v) for k, v in other._user_ids.items()}
