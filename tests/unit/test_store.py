"""The SQLite store: WAL, group commit, durable before the future resolves, queries, migrations."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from schedd.core.model import Job, JobSpec, JobState
from schedd.core.store import SCHEMA_VERSION, Store

GiB = 1 << 30


def make_job(job_id: int, state: JobState = JobState.PENDING, uid: int = 1000, end_time: int = 0) -> Job:
    spec = JobSpec(command=["/bin/echo", str(job_id)], name=f"job{job_id}", cpus=1, memory=GiB, uid=uid,
                   gid=uid, user_name=f"u{uid}")
    return Job(id=job_id, spec=spec, state=state, submit_time=1_700_000_000_000_000 + job_id, end_time=end_time)


def full_job() -> Job:
    """A job with every field set to a non-default value."""
    spec = JobSpec(
        command=["/usr/bin/python3", "-c", "print('héllo \"world\"')", ""],
        name="train ✓",
        cpus=3,
        memory=5 * GiB + 7,
        gpus=2,
        priority=-17,
        working_directory="/srv/work dir",
        environment=["A=1", "B=x=y", "EMPTY="],
        stdout_path="/var/log/out.log",
        stderr_path="/var/log/err.log",
        runtime_max_usec=3_600_000_000,
        hold=True,
        uid=1234,
        gid=4321,
        user_name="alice",
        after=[3, 5, 2**40],
        node="beta",
        requeue=False,
    )
    return Job(
        id=42,
        spec=spec,
        state=JobState.SUSPENDED,
        reason="oom-kill",
        exit_code=-9,
        assigned_cpus=[1, 3, 5],
        assigned_gpus=[0, 1],
        node="alpha",
        submit_time=1_700_000_000_000_001,
        start_time=1_700_000_000_000_002,
        end_time=1_700_000_000_000_003,
        cpu_time_usec=123_456_789,
        memory_peak=4 * GiB + 1,
        restarts=2,
        handle={"pid": 1234, "start": 99, "unit": "schedd-job-42.scope", "nested": [1, {"a": None}]},
    )


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "state" / "schedd.db")
    yield s
    s.close()


def fresh_rows(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def test_round_trip_every_field(store: Store) -> None:
    job = full_job()
    await store.save(job)
    got = store.get(42)
    assert got == job
    assert got is not job
    assert got.state is JobState.SUSPENDED
    assert got.unit == "schedd-job-42.scope"


async def test_round_trip_defaults(store: Store) -> None:
    job = make_job(1)
    await store.save(job)
    got = store.get(1)
    assert got == job
    assert got.handle is None
    assert got.spec.requeue is True and got.spec.hold is False


async def test_get_missing_and_exists(store: Store) -> None:
    assert store.get(1) is None
    assert not store.exists(1)
    assert store.max_id() == 0
    await store.save(make_job(1), make_job(7))
    assert store.exists(7) and not store.exists(2)
    assert store.max_id() == 7


async def test_save_takes_a_snapshot(store: Store) -> None:
    job = make_job(1)
    fut = store.save(job)
    job.state = JobState.RUNNING  # changed after save, never saved again
    await fut
    assert store.get(1).state is JobState.PENDING


async def test_same_job_twice_in_one_batch_keeps_latest(store: Store) -> None:
    job = make_job(1)
    f1 = store.save(job)
    job.state, job.reason, job.assigned_cpus = JobState.RUNNING, "", [0]
    f2 = store.save(job)
    job.state, job.reason, job.exit_code = JobState.FAILED, "exit-code", 3
    f3 = store.save(job)
    await asyncio.gather(f1, f2, f3)
    assert store.commits == 1  # all three in one batch
    got = store.get(1)
    assert (got.state, got.reason, got.exit_code, got.assigned_cpus) == (JobState.FAILED, "exit-code", 3, [0])
    assert fresh_rows(store.path, "SELECT COUNT(*) FROM jobs") == [(1,)]


async def test_later_batch_overwrites_earlier(store: Store) -> None:
    job = make_job(1)
    await store.save(job)
    job.state = JobState.COMPLETED
    job.reason = "success"
    await store.save(job)
    assert store.get(1).state is JobState.COMPLETED
    assert store.commits == 2


async def test_group_commit_many_concurrent_saves(store: Store) -> None:
    n = 500

    async def submit(i: int) -> int:
        await store.save(make_job(i))
        # Durable before ack: by the time our future resolves, our row is on disk.
        assert store.exists(i)
        return i

    done = await asyncio.gather(*(submit(i) for i in range(1, n + 1)))
    assert done == list(range(1, n + 1))
    assert 1 <= store.commits <= 3, f"{n} saves took {store.commits} commits"
    assert fresh_rows(store.path, "SELECT COUNT(*), MIN(id), MAX(id) FROM jobs") == [(n, 1, n)]


async def test_saves_while_a_commit_runs_go_in_the_next_batch(store: Store) -> None:
    loop = asyncio.get_running_loop()
    first = store.save(make_job(1))  # schedules the flush with call_soon
    rest: list[asyncio.Future] = []
    # Runs right after the flush has handed batch 1 to the worker thread.
    loop.call_soon(lambda: rest.extend(store.save(make_job(i)) for i in range(2, 102)))
    await first
    await asyncio.gather(*rest)
    assert store.commits == 2
    assert store.max_id() == 101


async def test_drain_waits_for_queued_rows(store: Store) -> None:
    store.save(make_job(1))
    store.save(make_job(2))
    await store.drain()
    assert fresh_rows(store.path, "SELECT id FROM jobs ORDER BY id") == [(1,), (2,)]
    await store.drain()  # nothing queued: returns at once


async def test_rows_visible_to_a_fresh_connection_when_the_future_resolves(store: Store) -> None:
    job = full_job()
    fut = store.save(job)
    assert fresh_rows(store.path, "SELECT id FROM jobs") == []  # not yet committed at save() time
    await fut
    rows = fresh_rows(store.path, "SELECT id, name, state, uid, memory FROM jobs")
    assert rows == [(42, "train ✓", "SUSPENDED", 1234, 5 * GiB + 7)]


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "schedd.db"
    s = Store(path)
    await s.save(full_job())
    s.close()
    s2 = Store(path)
    try:
        assert s2.get(42) == full_job()
    finally:
        s2.close()


async def _seed_for_query(store: Store) -> None:
    jobs = []
    for i in range(1, 21):
        state = [JobState.PENDING, JobState.RUNNING, JobState.COMPLETED, JobState.FAILED][i % 4]
        jobs.append(make_job(i, state=state, uid=1000 if i % 2 else 2000))
    await store.save(*jobs)


async def test_query_all_in_id_order(store: Store) -> None:
    await _seed_for_query(store)
    got = store.query(None, None, after=0, limit=100, exclude=set())
    assert [j.id for j in got] == list(range(1, 21))


async def test_query_filters_by_states(store: Store) -> None:
    await _seed_for_query(store)
    got = store.query(["RUNNING", "FAILED"], None, after=0, limit=100, exclude=set())
    assert [j.id for j in got] == [i for i in range(1, 21) if i % 4 in (1, 3)]
    assert all(j.state in (JobState.RUNNING, JobState.FAILED) for j in got)
    assert store.query([], None, after=0, limit=100, exclude=set()) == []


async def test_query_filters_by_uid(store: Store) -> None:
    await _seed_for_query(store)
    got = store.query(None, 2000, after=0, limit=100, exclude=set())
    assert [j.id for j in got] == list(range(2, 21, 2))
    both = store.query(["PENDING"], 1000, after=0, limit=100, exclude=set())
    assert [j.id for j in both] == []  # PENDING ids are multiples of 4, all uid 2000
    both = store.query(["PENDING"], 2000, after=0, limit=100, exclude=set())
    assert [j.id for j in both] == [4, 8, 12, 16, 20]


async def test_query_limit_and_after_cursor_pages(store: Store) -> None:
    await _seed_for_query(store)
    pages, cursor = [], 0
    while True:
        page = store.query(None, None, after=cursor, limit=6, exclude=set())
        if not page:
            break
        assert len(page) <= 6
        pages.append([j.id for j in page])
        cursor = page[-1].id
    assert pages == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18], [19, 20]]


async def test_query_exclude_skips_ids_but_still_fills_the_limit(store: Store) -> None:
    await _seed_for_query(store)
    got = store.query(None, None, after=0, limit=5, exclude={1, 2, 4, 6})
    assert [j.id for j in got] == [3, 5, 7, 8, 9]


async def test_query_exclude_more_than_a_fetch_window(store: Store) -> None:
    await store.save(*(make_job(i) for i in range(1, 301)))
    got = store.query(None, None, after=0, limit=3, exclude=set(range(1, 201)))
    assert [j.id for j in got] == [201, 202, 203]


async def test_query_limit_zero_and_after_past_end(store: Store) -> None:
    await _seed_for_query(store)
    assert store.query(None, None, after=0, limit=0, exclude=set()) == []
    assert store.query(None, None, after=20, limit=10, exclude=set()) == []


async def test_load_live_returns_unfinished_and_recently_finished(store: Store) -> None:
    cutoff = 1_000_000
    await store.save(
        make_job(1, JobState.PENDING),
        make_job(2, JobState.RUNNING),
        make_job(3, JobState.HELD),
        make_job(4, JobState.SUSPENDED),
        make_job(5, JobState.COMPLETED, end_time=cutoff - 1),  # finished long ago
        make_job(6, JobState.FAILED, end_time=cutoff),  # just at the cutoff
        make_job(7, JobState.CANCELLED, end_time=cutoff + 5),
        make_job(8, JobState.COMPLETED, end_time=10),
    )
    federated = make_job(9, JobState.PENDING)
    federated.origin_node, federated.origin_id = "peer", 4
    await store.save(federated, make_job(10, JobState.HELD, uid=1001))
    live = store.load_live(cutoff)
    # Plain queued jobs are deferred (read after start-up); one the federation tracks is not.
    assert [j.id for j in live] == [2, 4, 6, 7, 9]
    assert live[0].state is JobState.RUNNING
    usage = sorted(store.deferred_usage())
    assert [(st, uid, n) for st, uid, _, n, _ in usage] == [("HELD", 1000, 1), ("HELD", 1001, 1), ("PENDING", 1000, 1)]
    assert [owner for _, _, owner, _, _ in usage] == ["u1000", "u1001", "u1000"]  # JobSpec.owner
    assert usage[0][4] == len("/bin/echo") + 1 + len("3") + 1  # argv and environment as execve counts them
    store._w.execute("UPDATE jobs SET exec_size = 0 WHERE id = 3")  # a row written before exec_size
    assert sorted(store.deferred_usage())[0][4] == len('["/bin/echo", "3"]') + len("[]")  # its JSON's length
    reader = store.deferred_reader("HELD")
    assert [r[0] for r in reader.fetch(1)] + [r[0] for r in reader.fetch(5)] == [3, 10] and reader.fetch(5) == []
    reader.close()


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "schedd.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this schedd"):
        Store(path)
    # The database was left untouched.
    assert fresh_rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert fresh_rows(path, "SELECT name FROM sqlite_master WHERE name = 'jobs'") == []


def test_new_database_is_migrated_to_current_version(store: Store) -> None:
    assert fresh_rows(store.path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert fresh_rows(store.path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name") == [
        ("arrays",), ("jobs",), ("members",), ("meta",), ("node_drain",)]


def test_reopening_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "schedd.db"
    Store(path).close()
    s = Store(path)  # would fail with "table jobs already exists" if migrated twice
    s.close()
    assert fresh_rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_journal_mode_is_wal(store: Store) -> None:
    assert fresh_rows(store.path, "PRAGMA journal_mode") == [("wal",)]


async def test_integrity_check_ok(store: Store) -> None:
    await store.save(*(make_job(i) for i in range(1, 50)))
    assert store.integrity_check() == "ok"


async def test_ids_beyond_sqlite_integers_simply_do_not_exist(tmp_path) -> None:
    from schedd.core.store import Store

    store = Store(tmp_path / "s.db")
    for huge in (2**63, 2**64 - 1):
        assert store.get(huge) is None and not store.exists(huge)
        assert store.query(None, None, huge, 10, set()) == []
    store.close()


# -- isolation of bad rows, retries, a full disk, modes, sync ---------------------------------------------------

def _reject(store: Store, where: str) -> None:
    """A row SQLite refuses (a trigger's RAISE), through another connection, as an outside cause would."""
    conn = sqlite3.connect(store.path)
    conn.execute(f"CREATE TRIGGER reject BEFORE INSERT ON jobs WHEN {where} BEGIN SELECT RAISE(ABORT, 'injected'); END")
    conn.commit()
    conn.close()


def _accept(store: Store) -> None:
    conn = sqlite3.connect(store.path)
    conn.execute("DROP TRIGGER reject")
    conn.commit()
    conn.close()


async def _until(predicate, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_row_that_cannot_be_written_fails_only_its_own_caller(store: Store) -> None:
    from schedd.errors import SchedError

    bad = make_job(2)
    bad.spec.memory = 2**64  # beyond SQLite's INTEGER: refused when bound
    f1, f2, f3 = store.save(make_job(1)), store.save(bad, retry=False), store.save(make_job(3))
    await f1
    await f3
    with pytest.raises(SchedError, match="cannot record the job"):
        await f2
    assert store.commits == 1  # the good rows still shared one commit
    assert fresh_rows(store.path, "SELECT id FROM jobs ORDER BY id") == [(1,), (3,)]
    assert not store.unwritten(2)  # retry=False: its caller undoes the change, the store forgets the row


async def test_an_all_or_nothing_save_with_one_bad_row_writes_none_of_its_rows(store: Store) -> None:
    from schedd.errors import SchedError

    bad = make_job(5)
    bad.spec.priority = 2**63  # beyond SQLite's INTEGER
    many = store.save(make_job(4), bad, make_job(6), retry=False)  # a SubmitMany
    alone = store.save(make_job(7))
    await alone
    with pytest.raises(SchedError):
        await many
    assert fresh_rows(store.path, "SELECT id FROM jobs ORDER BY id") == [(7,)]


async def test_a_failed_background_row_is_retried_and_logged_until_it_lands(store: Store, caplog) -> None:
    store.RETRY_FIRST = store._retry_delay = 0.01
    await store.save(make_job(1))
    _reject(store, "NEW.id = 2")
    job = make_job(2, JobState.RUNNING)
    fut = store.save(job, urgent=False)  # nobody awaits it
    other = store.save(make_job(3))
    await other  # shared the batch, unaffected
    await asyncio.wait([fut])
    assert fut.exception() is not None
    assert store.unwritten(2) and store.get(2) is None
    assert "not written (jobs 2): injected" in caplog.text
    await _until(lambda: caplog.text.count("not written (jobs 2)") >= 3, "a few retries")  # tried again, and logged
    _accept(store)
    await _until(lambda: store.get(2) is not None, "the retried row to land")
    assert store.get(2).state is JobState.RUNNING and not store.unwritten(2)
    assert fresh_rows(store.path, "SELECT id FROM jobs ORDER BY id") == [(1,), (2,), (3,)]


async def test_a_newer_copy_supersedes_a_failed_one(store: Store) -> None:
    store.RETRY_FIRST = store._retry_delay = 0.01
    _reject(store, "NEW.id = 1 AND NEW.state = 'PENDING'")
    job = make_job(1)
    fut = store.save(job, urgent=False)
    await asyncio.wait([fut])
    assert fut.exception() is not None
    job.state = JobState.COMPLETED
    await store.save(job)  # this copy is accepted
    assert not store.unwritten(1)
    _accept(store)  # the stale PENDING copy, were it still queued, would now land over it
    await store.drain()
    assert store.get(1).state is JobState.COMPLETED


async def test_a_full_disk_answers_no_space_and_the_rows_land_once_space_returns(store: Store) -> None:
    from schedd.errors import NoSpace

    await store.save(make_job(1))
    pages = store._w.execute("PRAGMA page_count").fetchone()[0]
    store._w.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL, as on a full file system
    background = make_job(1, JobState.RUNNING)
    background.spec.environment = ["TOKEN=" + "x" * 100_000]  # needs new pages
    fut = store.save(background, urgent=False)
    with pytest.raises(NoSpace) as e:
        await store.save(*(make_job(i) for i in range(2, 200)), retry=False)  # all or nothing
    assert e.value.dbus_name == "org.schedd.Schedd1.Error.NoSpace"
    assert e.value.message == (f"cannot record the job: the state directory {store.path.parent} is full "
                               "(No space left on device); free space there")
    await asyncio.wait([fut])
    assert "the change is in effect and is recorded once there is room" in str(fut.exception())
    await store.drain()  # rows of other jobs never fail a caller
    with pytest.raises(NoSpace, match="cannot record the change: .* free space there; the change is in effect"):
        await store.drain(1)
    assert store.unwritten(1) and not store.unwritten(2)
    assert store.max_id() == 1 and store.get(1).state is JobState.PENDING  # none of the batch was written
    store._w.execute("PRAGMA max_page_count = 1073741823")
    await store.drain()
    assert store.get(1).state is JobState.RUNNING and store.max_id() == 1


async def test_the_database_and_its_wal_and_shm_are_private_from_creation(tmp_path: Path) -> None:
    import os
    import stat

    os.umask(0o022)
    path = tmp_path / "schedd.db"
    s = Store(path)
    await s.save(make_job(1))
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    s.close()
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if f.exists():
            f.chmod(0o644)  # as an older schedd left them
    s = Store(path)
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    s.close()


def test_the_live_writer_syncs_every_commit(store: Store) -> None:
    """Durable before ack needs WAL with synchronous=FULL (2) on the connection that writes, not just on a new one."""
    assert store._w.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._w.execute("PRAGMA synchronous").fetchone()[0] == 2


async def test_accounting_since_is_applied_by_the_sql(tmp_path: Path) -> None:
    """GetStats' Since against a real SQLite file: jobs submitted long ago are not counted."""
    from schedd.core import stats
    from schedd.core.model import now_usec

    day = 86_400_000_000
    now = now_usec()
    store = Store(tmp_path / "state" / "schedd.db")
    try:
        rows = []
        for jid, age, uid in ((1, 7 * day, 1000), (2, 7 * day, 1000), (3, 7 * day, 2000),
                              (4, day // 24, 1000), (5, day // 24, 2000)):
            j = make_job(jid, JobState.COMPLETED, uid=uid)
            j.submit_time, j.start_time, j.end_time = now - age, now - age + 1, now - age + 2
            rows.append(j)
        await store.save(*rows)
        since = now - day
        assert sorted(r[0] for r in store.accounting(None, since, set())) == [4, 5]
        assert [r[0] for r in store.accounting(1000, since, set())] == [4]
        assert sorted(r[0] for r in store.accounting(None, 0, set())) == [1, 2, 3, 4, 5]
        assert [r[0] for r in store.accounting(None, now - day // 24, set())] == [4, 5]  # at or after

        class Engine:  # what stats.collect reads: no live job in memory, the archive in the store
            jobs: dict = {}

        Engine.store = store
        assert stats.collect(Engine(), None, since)["Total"]["Jobs"] == 2
        assert stats.collect(Engine(), None, 0)["Total"]["Jobs"] == 5
        assert set(stats.collect(Engine(), 2000, since)["Users"]) == {"u2000"}
    finally:
        store.close()
