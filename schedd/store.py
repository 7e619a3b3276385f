"""The durable copy: one SQLite file in WAL mode, written with group commit.

Writes are queued by the event loop and committed by one worker thread in
batches (one fsync for everything that arrived while the previous commit
ran), so a burst of submits costs a few fsyncs, not one each, and the loop
never blocks on the disk. ``save()`` resolves once the rows are durable:
Submit awaits it before answering. Reads use a second connection on the loop
(WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .model import Job, JobSpec, JobState

log = logging.getLogger(__name__)

# Each entry migrates from version i to i+1; PRAGMA user_version holds the current one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        command TEXT NOT NULL,            -- JSON argv
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        user_name TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        exit_code INTEGER NOT NULL DEFAULT 0,
        priority INTEGER NOT NULL DEFAULT 0,
        cpus INTEGER NOT NULL,
        memory INTEGER NOT NULL,
        gpus INTEGER NOT NULL DEFAULT 0,
        assigned_cpus TEXT NOT NULL DEFAULT '[]',
        assigned_gpus TEXT NOT NULL DEFAULT '[]',
        node TEXT NOT NULL DEFAULT '',
        working_directory TEXT NOT NULL,
        environment TEXT NOT NULL DEFAULT '[]',
        stdout_path TEXT NOT NULL DEFAULT '',
        stderr_path TEXT NOT NULL DEFAULT '',
        runtime_max_usec INTEGER NOT NULL DEFAULT 0,
        hold INTEGER NOT NULL DEFAULT 0,
        after TEXT NOT NULL DEFAULT '[]',
        target_node TEXT NOT NULL DEFAULT '',
        requeue INTEGER NOT NULL DEFAULT 1,
        restarts INTEGER NOT NULL DEFAULT 0,
        submit_time INTEGER NOT NULL,
        start_time INTEGER NOT NULL DEFAULT 0,
        end_time INTEGER NOT NULL DEFAULT 0,
        cpu_time_usec INTEGER NOT NULL DEFAULT 0,
        memory_peak INTEGER NOT NULL DEFAULT 0,
        handle TEXT                       -- executor recovery data (JSON) while active
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_uid ON jobs(uid, id);
    CREATE INDEX jobs_end ON jobs(end_time) WHERE end_time > 0;
    """,
    # 2: job arrays; suspended time (a time limit does not run while a job is suspended).
    """
    ALTER TABLE jobs ADD COLUMN array_job_id INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN array_task_id INTEGER;
    ALTER TABLE jobs ADD COLUMN array_max_running INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN suspended_usec INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN suspend_time INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_array ON jobs(array_job_id) WHERE array_job_id > 0;
    """,
    # 3: federation. A job run here for another node names its origin (node, id): the unique
    # index makes a retried forward find the first copy instead of creating a second job. A job
    # of ours that runs elsewhere names that node and its id there.
    """
    ALTER TABLE jobs ADD COLUMN origin_node TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN origin_id INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN remote_node TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN remote_id INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN node_failures INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX jobs_origin ON jobs(origin_node, origin_id) WHERE origin_node != '';
    CREATE INDEX jobs_remote ON jobs(remote_node) WHERE remote_node != '';
    """,
    # 4: GetStats' Since reads by submit time; finished jobs are purged after [jobs] keep_finished,
    # and the highest id ever purged is kept (ids are never given out twice, GetJob tells purged from unknown).
    """
    CREATE INDEX jobs_submit ON jobs(submit_time);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
MAX_ID = 2**63 - 1  # SQLite's INTEGER; a D-Bus 't' can name ids beyond it, which never exist

COLUMNS = (
    "id", "name", "command", "uid", "gid", "user_name", "state", "reason", "exit_code", "priority",
    "cpus", "memory", "gpus", "assigned_cpus", "assigned_gpus", "node", "working_directory",
    "environment", "stdout_path", "stderr_path", "runtime_max_usec", "hold", "after", "target_node",
    "requeue", "restarts", "submit_time", "start_time", "end_time", "cpu_time_usec", "memory_peak",
    "handle", "array_job_id", "array_task_id", "array_max_running", "suspended_usec", "suspend_time",
    "origin_node", "origin_id", "remote_node", "remote_id", "node_failures",
)
_UPSERT = (
    f"INSERT OR REPLACE INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
_TERMINAL = (JobState.COMPLETED.value, JobState.FAILED.value, JobState.CANCELLED.value)
# Finished jobs that ended before a horizon, by the end-time index (the state index would walk the whole history).
PURGE_SQL = ("DELETE FROM jobs WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_end WHERE end_time > 0 AND "
             "end_time < ? AND state IN (?, ?, ?) LIMIT ?) RETURNING id")


def job_to_row(job: Job) -> tuple:
    s = job.spec
    return (
        job.id, s.name, json.dumps(s.command), s.uid, s.gid, s.user_name, job.state.value, job.reason,
        job.exit_code, s.priority, s.cpus, s.memory, s.gpus, json.dumps(job.assigned_cpus),
        json.dumps(job.assigned_gpus), job.node, s.working_directory, json.dumps(s.environment),
        s.stdout_path, s.stderr_path, s.runtime_max_usec, int(s.hold), json.dumps(s.after), s.node,
        int(s.requeue), job.restarts, job.submit_time, job.start_time, job.end_time, job.cpu_time_usec,
        job.memory_peak, json.dumps(job.handle) if job.handle is not None else None,
        job.array_job_id, s.array_task_id, s.array_max_running, job.suspended_usec, job.suspend_time,
        job.origin_node, job.origin_id, job.remote_node, job.remote_id, job.node_failures,
    )


def row_to_job(row: tuple) -> Job:
    r = dict(zip(COLUMNS, row))
    spec = JobSpec(
        command=json.loads(r["command"]), name=r["name"], cpus=r["cpus"], memory=r["memory"], gpus=r["gpus"],
        priority=r["priority"], working_directory=r["working_directory"],
        environment=json.loads(r["environment"]), stdout_path=r["stdout_path"], stderr_path=r["stderr_path"],
        runtime_max_usec=r["runtime_max_usec"], hold=bool(r["hold"]), uid=r["uid"], gid=r["gid"],
        user_name=r["user_name"], after=json.loads(r["after"]), node=r["target_node"], requeue=bool(r["requeue"]),
        array_task_id=r["array_task_id"], array_max_running=r["array_max_running"],
    )
    return Job(
        id=r["id"], spec=spec, state=JobState(r["state"]), reason=r["reason"], exit_code=r["exit_code"],
        assigned_cpus=json.loads(r["assigned_cpus"]), assigned_gpus=json.loads(r["assigned_gpus"]),
        node=r["node"], submit_time=r["submit_time"], start_time=r["start_time"], end_time=r["end_time"],
        cpu_time_usec=r["cpu_time_usec"], memory_peak=r["memory_peak"], restarts=r["restarts"],
        handle=json.loads(r["handle"]) if r["handle"] else None,
        array_job_id=r["array_job_id"], suspended_usec=r["suspended_usec"], suspend_time=r["suspend_time"],
        origin_node=r["origin_node"], origin_id=r["origin_id"], remote_node=r["remote_node"],
        remote_id=r["remote_id"], node_failures=r["node_failures"],
    )


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # every commit reaches the disk before a Submit is answered
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Store:
    LAZY_DELAY = 0.05

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._w = _connect(path)
        try:
            self._migrate()
        except BaseException:
            self._w.close()
            raise
        self._r = _connect(path)
        self._pending: dict[int, tuple] = {}
        self._waiters: list[asyncio.Future] = []
        self._flushing = False
        self._lazy: asyncio.TimerHandle | None = None
        self._urgent = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bg_pool: ThreadPoolExecutor | None = None
        self._bg_conn: sqlite3.Connection | None = None
        self.commits = 0

    def _migrate(self) -> None:
        version = self._w.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this schedd ({SCHEMA_VERSION}); "
                "upgrade schedd or restore an older state directory"
            )
        for v in range(version, SCHEMA_VERSION):
            log.info("migrating %s from schema %d to %d", self.path, v, v + 1)
            self._w.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[v]}; PRAGMA user_version={v + 1}; COMMIT;")

    def close(self) -> None:
        if self._bg_pool is not None:
            self._bg_pool.shutdown(wait=True)
        if self._bg_conn is not None:
            self._bg_conn.close()
        self._w.close()
        self._r.close()

    # -- writes -------------------------------------------------------------

    def save(self, *jobs: Job, urgent: bool = True) -> asyncio.Future:
        """Queue the jobs' current rows; the future resolves once they are committed.

        urgent=False (state changes nobody waits on) lets the rows ride on the next
        commit, or on one LAZY_DELAY later: recovery re-derives such transitions from
        the scopes and exit files, so they need not cost a commit each.
        """
        return self.save_rows([job_to_row(job) for job in jobs], urgent=urgent)

    def save_rows(self, rows: list[tuple], *, urgent: bool = True) -> asyncio.Future:
        """save() of rows made with job_to_row beforehand (a big batch makes them in slices on the loop)."""
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        for row in rows:
            self._pending[row[0]] = row  # later snapshots of a job replace earlier ones
        fut = loop.create_future()
        self._waiters.append(fut)
        self._urgent |= urgent
        if not self._flushing:
            if urgent:
                if self._lazy is not None:
                    self._lazy.cancel()
                    self._lazy = None
                self._flushing = True
                loop.call_soon(self._start_flush)
            elif self._lazy is None:
                self._lazy = loop.call_later(self.LAZY_DELAY, self._lazy_flush)
        return fut

    def _lazy_flush(self) -> None:
        self._lazy = None
        if self._waiters and not self._flushing:
            self._flushing = True
            self._start_flush()

    def _start_flush(self) -> None:
        rows, waiters = list(self._pending.values()), self._waiters
        self._pending, self._waiters, self._urgent = {}, [], False
        fut = self._loop.run_in_executor(None, self._commit, rows)
        fut.add_done_callback(lambda f: self._flushed(f, waiters))

    def _commit(self, rows: list[tuple]) -> None:
        w = self._w
        w.execute("BEGIN IMMEDIATE")
        try:
            w.executemany(_UPSERT, rows)
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise
        self.commits += 1

    def _flushed(self, fut: asyncio.Future, waiters: list[asyncio.Future]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error("store commit failed: %s", exc)
        for w in waiters:
            if not w.done():
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(exc)
        self._flushing = False
        if self._urgent:
            self._flushing = True
            self._start_flush()
        elif self._waiters and self._lazy is None:
            self._lazy = self._loop.call_later(self.LAZY_DELAY, self._lazy_flush)

    async def drain(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._flushing or self._pending or self._lazy is not None:
            await self.save()

    # -- reads --------------------------------------------------------------

    def max_id(self) -> int:
        """The highest id ever given out and recorded: purged jobs included."""
        return max(self._r.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0], self.purged_max_id())

    def purged_max_id(self) -> int:
        row = self._r.execute("SELECT value FROM meta WHERE key = 'purged_max_id'").fetchone()
        return row[0] if row else 0

    def get(self, job_id: int) -> Job | None:
        if not 0 < job_id <= MAX_ID:
            return None
        row = self._r.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
        return row_to_job(row) if row else None

    def exists(self, job_id: int) -> bool:
        if not 0 < job_id <= MAX_ID:
            return False
        return self._r.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def load_live(self, finished_since_usec: int) -> list[Job]:
        """Jobs the daemon must hold in memory at start: unfinished ones, and recently finished ones."""
        terminal = tuple(s.value for s in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED))
        rows = self._r.execute(
            f"{_SELECT} WHERE state NOT IN (?, ?, ?) OR end_time >= ? ORDER BY id", (*terminal, finished_since_usec)
        ).fetchall()
        return [row_to_job(r) for r in rows]

    def query(
        self, states: Iterable[str] | None, uid: int | None, after: int, limit: int, exclude: set[int]
    ) -> list[Job]:
        """Jobs by id > after, oldest first, skipping ids in exclude (the daemon's in-memory copies win)."""
        after = min(after, MAX_ID)
        where, args = ["id > ?"], [after]
        if states is not None:
            states = list(states)
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        if uid is not None:
            where.append("uid = ?")
            args.append(uid)
        out: list[Job] = []
        cursor = after
        while len(out) < limit:
            args[0] = cursor
            rows = self._r.execute(
                f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", (*args, limit - len(out) + 64)
            ).fetchall()
            if not rows:
                break
            for row in rows:
                cursor = row[0]
                if row[0] not in exclude:
                    out.append(row_to_job(row))
                    if len(out) == limit:
                        break
        return out

    def accounting(self, uid: int | None, since: int, exclude: set[int]) -> list[tuple]:
        """(id, user, state, submit, start, end, cpu_usec, memory_peak, suspended_usec) of jobs submitted
        at or after `since`, for schedd.stats; ids in exclude are skipped (memory has newer copies).

        Reads a whole history: call it in the background thread (`background()`), which has its own
        connection, never on the loop."""
        sql = ("SELECT id, CASE user_name WHEN '' THEN CAST(uid AS TEXT) ELSE user_name END, state, submit_time, "
               "start_time, end_time, cpu_time_usec, memory_peak, suspended_usec FROM jobs WHERE submit_time >= ?")
        args: list[int] = [since]
        if uid is not None:
            sql += " AND uid = ?"
            args.append(uid)
        return [r for r in self._bg().execute(sql, args) if r[0] not in exclude]

    # -- the background thread: history reads and the purge, off the loop and beside the committer --

    def background(self, fn, *args) -> asyncio.Future:
        """Run fn(*args) in the store's one background thread (its own connections, not the committer's)."""
        if self._bg_pool is None:
            self._bg_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="schedd-store-bg")
        return asyncio.get_running_loop().run_in_executor(self._bg_pool, fn, *args)

    def _bg(self) -> sqlite3.Connection:
        if self._bg_conn is None:
            self._bg_conn = _connect(self.path)
        return self._bg_conn

    def purge_finished(self, ended_before_usec: int, limit: int) -> list[int]:
        """Delete up to `limit` finished jobs that ended before the horizon; their ids (background thread).

        One small transaction per call, so the group committer never waits long for the database."""
        c = self._bg()
        c.execute("BEGIN IMMEDIATE")
        try:
            ids = [r[0] for r in c.execute(PURGE_SQL, (ended_before_usec, *_TERMINAL, limit)).fetchall()]
            if ids:
                c.execute("INSERT INTO meta (key, value) VALUES ('purged_max_id', ?) ON CONFLICT (key) "
                          "DO UPDATE SET value = max(value, excluded.value)", (max(ids),))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return ids

    def find_origin(self, origin_node: str, origin_id: int) -> Job | None:
        """The job run here for (origin node, its id there), if a forward of it ever arrived."""
        if not 0 < origin_id <= MAX_ID:
            return None
        row = self._r.execute(f"{_SELECT} WHERE origin_node = ? AND origin_id = ?", (origin_node, origin_id)).fetchone()
        return row_to_job(row) if row else None

    def by_origin(self, origin_node: str, since_usec: int) -> list[Job]:
        """Jobs run here for one origin node: unfinished ones and those finished since since_usec."""
        rows = self._r.execute(
            f"{_SELECT} WHERE origin_node = ? AND (end_time = 0 OR end_time >= ?) ORDER BY id", (origin_node, since_usec)
        ).fetchall()
        return [row_to_job(r) for r in rows]

    def integrity_check(self) -> str:
        return self._r.execute("PRAGMA integrity_check").fetchone()[0]


def default_path(state_dir: Path) -> Path:
    return state_dir / "schedd.db"

