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
import errno
import heapq
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Container, Iterable
from itertools import islice
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from schedd.errors import NoSpace, SchedError
from schedd.core.model import EMPTY, Job, JobSpec, JobState
from schedd.core.quota import exec_bytes

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
    # 5: federation attempts. Each forward of a job is one attempt: a copy is unique per (origin node,
    # origin id, attempt), so a job placed again on a node it left gets a new copy there. An origin
    # records that it granted a copy's start (start_granted): from then on it may have run.
    """
    ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN start_granted INTEGER NOT NULL DEFAULT 0;
    DROP INDEX jobs_origin;
    CREATE UNIQUE INDEX jobs_origin ON jobs(origin_node, origin_id, attempt) WHERE origin_node != '';
    """,
    # 6: what a queued job's argv and environment weigh against its owner's byte cap (quota.exec_bytes),
    # kept so that jobs left on disk are counted exactly without reading them (0: a row from before).
    """
    ALTER TABLE jobs ADD COLUMN exec_size INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: arrays as one record (engine/arrays.py). An ArrayTasks submit reserves the ids id..id+count-1
    # and keeps here its template (a job row as JSON), its tasks (Slurm's text), and the positions of
    # the tasks not made into jobs yet (`left`: JSON [[lo, hi), ...]); a task becomes a jobs row when
    # it is about to run (or a verb names it). state: PENDING, HELD, or CANCELLED (the left tasks
    # ended cancelled without a row, at end_time).
    """
    CREATE TABLE arrays (
        id INTEGER PRIMARY KEY,
        template TEXT NOT NULL,
        tasks TEXT NOT NULL,
        count INTEGER NOT NULL,
        left TEXT NOT NULL,
        uid INTEGER NOT NULL,
        state TEXT NOT NULL,
        submit_time INTEGER NOT NULL,
        end_time INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 8: dynamic membership (schedd.cluster.membership). members: the peers this node learned by a
    # join or from another member (not its [[peers]]); removed != 0: forgotten by `node remove` at that
    # time (a tombstone, so gossip does not bring it back). node_drain: this node's own drain, if any.
    """
    CREATE TABLE members (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        since INTEGER NOT NULL,
        removed INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE node_drain (
        node TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        set_by TEXT NOT NULL,
        since INTEGER NOT NULL
    );
    """,
    # 9: containerized jobs: the image a job's command runs in ('' for none).
    """
    ALTER TABLE jobs ADD COLUMN container TEXT NOT NULL DEFAULT '';
    """,
    # 10: when a job may start at the earliest (BeginTime, µs; 0: at once) and its dependencies on any
    # end (AfterAny) and on a failed end (AfterNotOk) of other jobs.
    """
    ALTER TABLE jobs ADD COLUMN begin_time INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN after_any TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE jobs ADD COLUMN after_not_ok TEXT NOT NULL DEFAULT '[]';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
ARRAY_COLUMNS = ("id", "template", "tasks", "count", "left", "uid", "state", "submit_time", "end_time")
MAX_ID = 2**63 - 1  # SQLite's INTEGER; a D-Bus 't' can name ids beyond it, which never exist

COLUMNS = (
    "id", "name", "command", "uid", "gid", "user_name", "state", "reason", "exit_code", "priority",
    "cpus", "memory", "gpus", "assigned_cpus", "assigned_gpus", "node", "working_directory",
    "environment", "stdout_path", "stderr_path", "runtime_max_usec", "hold", "after", "target_node",
    "requeue", "restarts", "submit_time", "start_time", "end_time", "cpu_time_usec", "memory_peak",
    "handle", "array_job_id", "array_task_id", "array_max_running", "suspended_usec", "suspend_time",
    "origin_node", "origin_id", "remote_node", "remote_id", "node_failures", "attempt", "start_granted",
    "exec_size", "container", "begin_time", "after_any", "after_not_ok",
)
# What the columns added since array templates were first written read as in an older template
# (arrays store a template as its row: a row of fewer columns ends before these).
_LATER_DEFAULTS = (("container", ""), ("begin_time", 0), ("after_any", "[]"), ("after_not_ok", "[]"))
_UPSERT = (
    f"INSERT OR REPLACE INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"
# Queued jobs that only this node's scheduler knows of (no federation, no array cap): the bulk of
# a long queue, read after start-up (engine/loading.py) instead of before the daemon answers.
DEFERRED_SQL = ("state IN ('PENDING', 'HELD') AND origin_node = '' AND remote_node = '' AND target_node = '' "
                "AND NOT (array_job_id > 0 AND array_max_running > 0)")
# What a job on disk holds of its owner's byte cap; a row from before exec_size: its JSON's length
# (never less than the exact count, which its loading puts in place).
DISK_BYTES_SQL = "CASE WHEN exec_size > 0 THEN exec_size ELSE length(command) + length(environment) END"
_TERMINAL = (JobState.COMPLETED.value, JobState.FAILED.value, JobState.CANCELLED.value)
# Finished jobs that ended before a horizon, by the end-time index (the state index would walk the whole history).
PURGE_SQL = ("DELETE FROM jobs WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_end WHERE end_time > 0 AND "
             "end_time < ? AND state IN (?, ?, ?) LIMIT ?) RETURNING id")


def _list_json(x: list) -> str:
    """A list column as JSON; most are empty (a held job has no CPUs, environment or dependencies)."""
    return json.dumps(x) if x else "[]"


def job_to_row(job: Job) -> tuple:
    s = job.spec
    return (
        job.id, s.name, _list_json(s.command), s.uid, s.gid, s.user_name, job.state.value, job.reason,
        job.exit_code, s.priority, s.cpus, s.memory, s.gpus, _list_json(job.assigned_cpus),
        _list_json(job.assigned_gpus), job.node, s.working_directory, _list_json(s.environment),
        s.stdout_path, s.stderr_path, s.runtime_max_usec, int(s.hold), _list_json(s.after), s.node,
        int(s.requeue), job.restarts, job.submit_time, job.start_time, job.end_time, job.cpu_time_usec,
        job.memory_peak, json.dumps(job.handle) if job.handle is not None else None,
        job.array_job_id, s.array_task_id, s.array_max_running, job.suspended_usec, job.suspend_time,
        job.origin_node, job.origin_id, job.remote_node, job.remote_id, job.node_failures, job.attempt,
        int(job.start_granted), exec_bytes(s), s.container, s.begin_time, _list_json(s.after_any),
        _list_json(s.after_not_ok),
    )


_loads = json.loads
_COMMANDS: dict[str, tuple[str, ...]] = {}  # argv JSON -> its strings, shared by the jobs that run the same program
_COMMANDS_MAX = 4096


def _list_col(text: str) -> list:
    return EMPTY if text == "[]" else _loads(text)


def _command(text: str) -> list[str]:
    """A job's argv from its JSON; jobs of one array or script share the strings (each job its own list)."""
    argv = _COMMANDS.get(text)
    if argv is None:
        if len(_COMMANDS) >= _COMMANDS_MAX:
            _COMMANDS.clear()
        argv = _COMMANDS[text] = tuple(_loads(text))
    return list(argv)
_intern = sys.intern  # names, users, directories and nodes repeat across jobs: one string each in memory


def _padded(row: tuple) -> tuple:
    """An array template written before the later columns, with their defaults."""
    missing = len(COLUMNS) - len(row)
    return (*row, *(d for _, d in _LATER_DEFAULTS[len(_LATER_DEFAULTS) - missing:]))


def row_to_job(row: tuple) -> Job:
    if len(row) < len(COLUMNS):
        row = _padded(row)
    (id_, name, command, uid, gid, user_name, state, reason, exit_code, priority, cpus, memory, gpus,
     assigned_cpus, assigned_gpus, node, working_directory, environment, stdout_path, stderr_path,
     runtime_max_usec, hold, after, target_node, requeue, restarts, submit_time, start_time, end_time,
     cpu_time_usec, memory_peak, handle, array_job_id, array_task_id, array_max_running, suspended_usec,
     suspend_time, origin_node, origin_id, remote_node, remote_id, node_failures, attempt, start_granted,
     exec_size, container, begin_time, after_any, after_not_ok) = row
    spec = JobSpec(
        command=_command(command), name=_intern(name), cpus=cpus, memory=memory, gpus=gpus, priority=priority,
        working_directory=_intern(working_directory), environment=_list_col(environment), stdout_path=stdout_path,
        stderr_path=stdout_path if stderr_path == stdout_path else stderr_path, runtime_max_usec=runtime_max_usec,
        hold=bool(hold), uid=uid, gid=gid, user_name=_intern(user_name), after=_list_col(after),
        node=_intern(target_node), requeue=bool(requeue), array_task_id=array_task_id,
        array_max_running=array_max_running, exec_size=exec_size, container=_intern(container),
        begin_time=begin_time, after_any=_list_col(after_any), after_not_ok=_list_col(after_not_ok),
    )
    return Job(
        id=id_, spec=spec, state=JobState[state], reason=_intern(reason), exit_code=exit_code,
        assigned_cpus=_list_col(assigned_cpus), assigned_gpus=_list_col(assigned_gpus),
        node=_intern(node), submit_time=submit_time, start_time=start_time, end_time=end_time,
        cpu_time_usec=cpu_time_usec, memory_peak=memory_peak, restarts=restarts,
        handle=json.loads(handle) if handle else None,
        array_job_id=array_job_id, suspended_usec=suspended_usec, suspend_time=suspend_time,
        origin_node=_intern(origin_node), origin_id=origin_id, remote_node=_intern(remote_node),
        remote_id=remote_id, node_failures=node_failures, attempt=attempt, start_granted=bool(start_granted),
    )


# row_to_job unpacks the columns by position: it names them in COLUMNS' order.
assert row_to_job.__code__.co_varnames[1:1 + len(COLUMNS)] == ("id_", *COLUMNS[1:]), "row_to_job: columns out of order"


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # every commit reaches the disk before a Submit is answered
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _private(path: Path) -> None:
    """The database and its -wal/-shm hold every user's jobs (environments, tokens): root only.

    SQLite creates -wal and -shm with the main file's mode, so the main file is made 0600
    before the first connection; files left by an older schedd are tightened at start.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            os.chmod(f"{path}{suffix}", 0o600, follow_symlinks=False)
        except FileNotFoundError:
            pass


def _sqlite_code(e: BaseException) -> int | None:
    """SQLite's primary result code of an error it raised (extended codes carry it in the low byte)."""
    return (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF if isinstance(e, sqlite3.Error) else None


def disk_full(e: BaseException) -> bool:
    """The write failed because the file system is full (SQLite maps ENOSPC to SQLITE_FULL)."""
    if _sqlite_code(e) == sqlite3.SQLITE_FULL:
        return True
    return isinstance(e, OSError) and e.errno == errno.ENOSPC


@dataclass(slots=True)
class RowReader:
    """Rows of one query, read a slice at a time on a connection of their own."""

    conn: sqlite3.Connection
    cursor: sqlite3.Cursor

    def fetch(self, size: int) -> list[tuple]:
        return self.cursor.fetchmany(size)

    def close(self) -> None:
        self.conn.close()


@dataclass(slots=True)
class _Waiter:
    fut: asyncio.Future
    ids: frozenset[int]  # the rows it waits on: it fails only if one of them does
    whole: bool = False  # all of its rows or none (a SubmitMany is all-or-nothing)


class Store:
    LAZY_DELAY = 0.05
    RETRY_FIRST, RETRY_MAX = 0.1, 5.0  # seconds between attempts at rows that failed (doubling)

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _private(path)
        self._w = _connect(path)
        try:
            self._migrate()
        except BaseException:
            self._w.close()
            raise
        self._r = _connect(path)
        self._pending: dict[int, tuple] = {}
        self._no_retry: set[int] = set()  # rows in _pending whose saver undoes the change if they fail
        self._waiters: list[_Waiter] = []
        self._retry: dict[int, tuple] = {}  # rows that failed and nobody undid: written again later
        self._retry_timer: asyncio.TimerHandle | None = None
        self._retry_due = False
        self._retry_delay = self.RETRY_FIRST
        self._last_error: BaseException = RuntimeError("no write has failed")
        self._in_flight: frozenset[int] = frozenset()
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
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self._retry:
            log.error("store: closing with %d row(s) never written (jobs %s); recovery re-derives what it can",
                      len(self._retry), _ids(self._retry))
        if self._bg_pool is not None:
            self._bg_pool.shutdown(wait=True)
        if self._bg_conn is not None:
            self._bg_conn.close()
        self._w.close()
        self._r.close()

    def _out_of_space(self, e: BaseException) -> bool:
        """A full disk, as SQLite says it, or an I/O error on a file system with no room left
        (growing -shm or a sync can fail with SQLITE_IOERR_* where a write would say FULL)."""
        if disk_full(e):
            return True
        if _sqlite_code(e) == sqlite3.SQLITE_IOERR:
            try:
                st = os.statvfs(self.path.parent)
            except OSError:
                return False
            return st.f_bfree * st.f_frsize < 1 << 16 or (st.f_files > 0 and st.f_ffree == 0)
        return False

    def write_error(self, e: BaseException, what: str = "the job", *, kept: bool = False) -> SchedError:
        """The error a caller gets when its rows could not be written: NoSpace (with the remedy) on a full disk.

        kept: the change stays in effect and its row is written again later (it says so).
        """
        later = "; the change is in effect and is recorded once there is room" if kept else ""
        if self._out_of_space(e):
            return NoSpace(f"cannot record {what}: the state directory {self.path.parent} is full "
                           f"(No space left on device); free space there{later}")
        return SchedError(f"cannot record {what} in {self.path}: {e}{later}")

    # -- writes -------------------------------------------------------------

    def save(self, *jobs: Job, urgent: bool = True, retry: bool = True) -> asyncio.Future:
        """Queue the jobs' current rows; the future resolves once they are committed.

        urgent=False (state changes nobody waits on) lets the rows ride on the next
        commit, or on one LAZY_DELAY later: recovery re-derives such transitions from
        the scopes and exit files, so they need not cost a commit each.

        A row that cannot be written fails only the futures of the saves that include
        it (a SchedError: NoSpace when the disk is full). It is then written again,
        with backoff, until it lands or a newer copy of the job does, unless
        retry=False: that caller undoes the change itself (a Submit forgets the job).
        """
        return self.save_rows([job_to_row(job) for job in jobs], urgent=urgent, retry=retry)

    def save_rows(self, rows: list[tuple], *, urgent: bool = True, retry: bool = True) -> asyncio.Future:
        """save() of rows made with job_to_row beforehand (a big batch makes them in slices on the loop)."""
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        for row in rows:
            self._pending[row[0]] = row  # later snapshots of a job replace earlier ones
            if not retry:
                self._no_retry.add(row[0])  # stays for the batch: a later save of the row does not re-arm it
        fut = loop.create_future()
        self._waiters.append(_Waiter(fut, frozenset(r[0] for r in rows), whole=not retry))
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

    def unwritten(self, job_id: int) -> bool:
        """A copy of the job is queued, being written, or waiting to be written again."""
        return job_id in self._pending or job_id in self._retry or job_id in self._in_flight

    def _lazy_flush(self) -> None:
        self._lazy = None
        if self._waiters and not self._flushing:
            self._flushing = True
            self._start_flush()

    def _start_flush(self) -> None:
        rows, no_retry, waiters = self._pending, self._no_retry, self._waiters
        self._pending, self._no_retry, self._waiters, self._urgent = {}, set(), [], False
        self._in_flight = frozenset(rows)
        groups, grouped = [], set()
        for w in waiters:
            if w.whole:
                ids = [i for i in w.ids if i in rows and i not in grouped]
                grouped.update(ids)
                groups.append(ids)
        groups += [[i] for i in rows if i not in grouped]
        fut = self._loop.run_in_executor(None, self._commit, rows, groups)
        fut.add_done_callback(lambda f: self._flushed(f, rows, no_retry, waiters))

    def _transaction(self, rows: list[tuple]) -> None:
        w = self._w
        w.execute("BEGIN IMMEDIATE")
        try:
            w.executemany(_UPSERT, rows)
            w.execute("COMMIT")
        except BaseException:
            _rollback(w)
            raise

    def _commit(self, rows: dict[int, tuple], groups: list[list[int]]) -> dict[int, BaseException]:
        """Write the batch in one transaction; the rows that could not be written, with why.

        If the batch fails, it is written again with one savepoint per group (the rows
        of one all-or-nothing save, else one row), still one commit: a row SQLite
        refuses is left out with its group and fails alone. A failure of the commit
        itself (a full disk, an I/O error) fails every row.
        """
        try:
            self._transaction(list(rows.values()))
            self.commits += 1
            return {}
        except Exception as e:  # noqa: BLE001 - reported per row, never raised into the loop
            if len(rows) == 1:
                return dict.fromkeys(rows, e)
        w, failed = self._w, {}
        try:
            w.execute("BEGIN IMMEDIATE")
            for ids in groups:
                w.execute("SAVEPOINT one_group")
                try:
                    w.executemany(_UPSERT, [rows[i] for i in ids])
                except Exception as e:  # noqa: BLE001
                    failed.update(dict.fromkeys(ids, e))
                    w.execute("ROLLBACK TO one_group")
                w.execute("RELEASE one_group")
            w.execute("COMMIT")
        except Exception as e:  # noqa: BLE001
            _rollback(w)
            return dict.fromkeys(rows, e)
        self.commits += 1
        return failed

    def _flushed(self, fut: asyncio.Future, rows: dict[int, tuple], no_retry: set[int],
                 waiters: list[_Waiter]) -> None:
        self._in_flight = frozenset()
        try:
            failed = fut.result()
        except BaseException as e:  # noqa: BLE001 - the worker itself failed (cancelled at shutdown)
            failed = dict.fromkeys(rows, e)
        for jid in rows.keys() - failed.keys():
            self._retry.pop(jid, None)  # written: an older copy that had failed is superseded
        for jid in failed:
            if jid not in no_retry and jid not in self._pending:  # else: undone by its saver, or a newer copy
                self._retry[jid] = rows[jid]                       # is queued (and retried if it fails)
        if failed:
            e = self._last_error = next(iter(failed.values()))
            log.error("store: %d of %d row(s) not written (jobs %s): %s%s", len(failed), len(rows), _ids(failed),
                      e, f"; trying again in {self._retry_delay:g}s" if self._retry else "")
        for w in waiters:
            if w.fut.done():
                continue
            bad = next((failed[i] for i in w.ids if i in failed), None)
            if bad is None:
                w.fut.set_result(None)
            else:
                err = self.write_error(bad, kept=any(i in self._retry for i in w.ids))
                err.__cause__ = bad
                w.fut.set_exception(err)
                w.fut.exception()  # the store has logged it: a save nobody awaits is not an "unretrieved" error
        if self._retry:
            if self._retry_timer is None and not self._retry_due:
                self._retry_timer = self._loop.call_later(self._retry_delay, self._retry_now)
                self._retry_delay = min(self._retry_delay * 2, self.RETRY_MAX)
        else:
            if self._retry_delay != self.RETRY_FIRST and not failed:
                log.info("store: rows that had failed are written now")
            self._retry_delay = self.RETRY_FIRST
        self._flushing = False
        if self._retry_due:
            self._retry_due = False
            self._requeue_failed()
        if self._urgent:
            self._flushing = True
            self._start_flush()
        elif self._waiters and self._lazy is None:
            self._lazy = self._loop.call_later(self.LAZY_DELAY, self._lazy_flush)

    def _retry_now(self) -> None:
        self._retry_timer = None
        if self._flushing:
            self._retry_due = True  # after the commit in flight, which may hold newer copies
            return
        self._requeue_failed()
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None
        self._flushing = True
        self._start_flush()

    def _requeue_failed(self) -> None:
        """Queue the rows that failed again (newer copies queued meanwhile win), as one urgent save."""
        if not self._retry:
            return
        rows, self._retry = self._retry, {}
        for jid, row in rows.items():
            self._pending.setdefault(jid, row)
        fut = self._loop.create_future()
        self._waiters.append(_Waiter(fut, frozenset()))
        self._urgent = True

    async def drain(self, *job_ids: int) -> None:
        """Wait until everything queued so far has been tried; rows that had failed get one more try now.

        Raises the write's SchedError (NoSpace on a full disk) if a row of one of job_ids is
        still not written; rows of other jobs never fail this caller.
        """
        if self._retry:
            if self._retry_timer is not None:
                self._retry_timer.cancel()
                self._retry_timer = None
            if self._flushing:
                self._retry_due = True
            else:
                self._requeue_failed()
        if self._flushing or self._pending or self._lazy is not None:
            await self.save()
        stuck = [i for i in job_ids if i in self._retry]
        if stuck:
            raise self.write_error(self._last_error, "the change" if len(stuck) == 1 else "the changes", kept=True)

    # -- reads --------------------------------------------------------------

    def max_id(self) -> int:
        """The highest id ever given out and recorded: purged jobs and the ids arrays reserved included."""
        arrays = self._r.execute("SELECT COALESCE(MAX(id + count - 1), 0) FROM arrays").fetchone()[0]
        return max(self._r.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0], self.purged_max_id(),
                   arrays)

    # -- arrays (engine/arrays.py): one row per array, written by the background thread ---------

    def put_array(self, row: tuple) -> asyncio.Future:
        """Write an array's record (ARRAY_COLUMNS' order); resolves once durable."""
        return self.background(self._put_array, row)

    def _put_array(self, row: tuple) -> None:
        c = self._bg()
        c.execute(f"INSERT OR REPLACE INTO arrays ({', '.join(ARRAY_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(ARRAY_COLUMNS))})", row)

    def delete_array(self, array_id: int, purged_to: int = 0) -> asyncio.Future:
        """Delete an array's record; purged_to > 0 (its last id, for a record whose tasks never became
        rows) raises purged_max_id in the same transaction, so max_id never gives its ids out again."""
        return self.background(self._delete_array, array_id, purged_to)

    def _delete_array(self, array_id: int, purged_to: int) -> None:
        c = self._bg()
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("DELETE FROM arrays WHERE id = ?", (array_id,))
            if purged_to:
                c.execute("INSERT INTO meta (key, value) VALUES ('purged_max_id', ?) ON CONFLICT (key) "
                          "DO UPDATE SET value = max(value, excluded.value)", (purged_to,))
            c.execute("COMMIT")
        except BaseException:
            _rollback(c)
            raise

    def load_arrays(self) -> list[tuple]:
        return self._r.execute(f"SELECT {', '.join(ARRAY_COLUMNS)} FROM arrays ORDER BY id").fetchall()

    def array_job_ids(self, array_id: int, from_id: int = 0, states: Iterable[str] | None = None) -> list[int]:
        """Ids of the array's tasks that are jobs rows (from from_id on; of those states)."""
        sql, args = "SELECT id FROM jobs WHERE array_job_id = ? AND id >= ?", [array_id, from_id]
        if states is not None:
            states = list(states)
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            args += states
        return [r[0] for r in self._r.execute(sql + " ORDER BY id", args)]

    def purged_max_id(self) -> int:
        row = self._r.execute("SELECT value FROM meta WHERE key = 'purged_max_id'").fetchone()
        return row[0] if row else 0

    def get(self, job_id: int) -> Job | None:
        row = self.get_row(job_id)
        return None if row is None else row_to_job(row)

    def get_row(self, job_id: int) -> tuple | None:
        if not 0 < job_id <= MAX_ID:
            return None
        return self._r.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()

    def exists(self, job_id: int) -> bool:
        if not 0 < job_id <= MAX_ID:
            return False
        return self._r.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def load_live(self, finished_since_usec: int) -> list[Job]:
        """Jobs the daemon must hold in memory before it answers: unfinished ones but the deferred
        (DEFERRED_SQL: read later, deferred_rows), and recently finished ones."""
        rows = self._r.execute(
            f"{_SELECT} WHERE (state NOT IN (?, ?, ?) OR end_time >= ?) AND NOT ({DEFERRED_SQL}) ORDER BY id",
            (*_TERMINAL, finished_since_usec)).fetchall()
        return [row_to_job(r) for r in rows]

    def deferred_usage(self) -> list[tuple[str, int, str, int, int]]:
        """(state, uid, owner, jobs, bytes) of the deferred jobs (owner: JobSpec.owner; bytes:
        DISK_BYTES_SQL, as loading.deferred_bytes)."""
        return self._r.execute(
            "SELECT state, uid, CASE WHEN user_name != '' THEN user_name ELSE CAST(uid AS TEXT) END AS owner, "
            f"count(*), sum({DISK_BYTES_SQL}) FROM jobs WHERE {DEFERRED_SQL} GROUP BY state, uid, owner").fetchall()

    def live_ids(self, states: Iterable[str], exclude: Container[int]) -> list[int]:
        """The ids of the jobs in these states, by id, skipping those in exclude (in memory)."""
        marks = ",".join("?" * len(states := list(states)))
        rows = self._r.execute(f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY id", states).fetchall()
        return [i for (i,) in rows if i not in exclude]

    def deferred_reader(self, state: str) -> "RowReader":
        """The deferred jobs of one state by id (no sort: the scheduler waits for all of them), on a
        connection of its own: its snapshot is the start's, which is what a deferred row is until
        the engine loads the job (a change to a job loads it first)."""
        conn = _connect(self.path)
        return RowReader(conn, conn.execute(f"{_SELECT} WHERE state = ? AND {DEFERRED_SQL} ORDER BY id", (state,)))

    def query(
        self, states: Iterable[str] | None, uid: int | None, after: int, limit: int, exclude: Container[int]
    ) -> list[Job]:
        """Jobs by id > after, oldest first, skipping ids in exclude (the daemon's in-memory copies win).

        With states, one walk per state along its index (state, id): a page reads about `limit`
        rows per state, never the rows of the other states before it."""
        after = min(after, MAX_ID)
        if states is None:
            return self._query([], [], uid, after, limit, exclude)
        per_state = [self._query(["state = ?"], [st], uid, after, limit, exclude) for st in dict.fromkeys(states)]
        if len(per_state) == 1:
            return per_state[0]
        return heapq_merge_jobs(per_state, limit)

    def _query(self, where: list[str], args: list, uid: int | None, after: int, limit: int,
               exclude: Container[int]) -> list[Job]:
        where, args = ["id > ?", *where], [after, *args]
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
        at or after `since`, for schedd.core.stats; ids in exclude are skipped (memory has newer copies).

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

    def find_origin(self, origin_node: str, origin_id: int, attempt: int) -> Job | None:
        """The job run here for (origin node, its id there, the attempt), if that forward ever arrived."""
        if not 0 < origin_id <= MAX_ID or not 0 <= attempt <= MAX_ID:
            return None
        row = self._r.execute(f"{_SELECT} WHERE origin_node = ? AND origin_id = ? AND attempt = ?",
                              (origin_node, origin_id, attempt)).fetchone()
        return row_to_job(row) if row else None

    def by_origin(self, origin_node: str, since_usec: int) -> list[Job]:
        """Jobs run here for one origin node: unfinished ones and those finished since since_usec."""
        rows = self._r.execute(
            f"{_SELECT} WHERE origin_node = ? AND (end_time = 0 OR end_time >= ?) ORDER BY id", (origin_node, since_usec)
        ).fetchall()
        return [row_to_job(r) for r in rows]

    # -- membership and drain (small, rare writes: the background thread, not the job committer) --------

    def load_members(self) -> list[tuple[str, str, int, int]]:
        """(name, url, since, removed) of every member learned at run time, tombstones included."""
        return self._r.execute("SELECT name, url, since, removed FROM members ORDER BY name").fetchall()

    def put_member(self, name: str, url: str, since: int, removed: int = 0) -> asyncio.Future:
        return self.background(self._put_member, name, url, since, removed)

    def _put_member(self, name: str, url: str, since: int, removed: int) -> None:
        with self._bg() as c:
            c.execute("INSERT INTO members (name, url, since, removed) VALUES (?, ?, ?, ?) ON CONFLICT (name) "
                      "DO UPDATE SET url = excluded.url, since = excluded.since, removed = excluded.removed",
                      (name, url, since, removed))

    def forget_member(self, name: str) -> asyncio.Future:
        return self.background(self._forget_member, name)

    def _forget_member(self, name: str) -> None:
        with self._bg() as c:
            c.execute("DELETE FROM members WHERE name = ?", (name,))

    def load_drain(self, node: str) -> tuple[str, str, int] | None:
        """(reason, set_by, since) of this node's drain, or None."""
        return self._r.execute("SELECT reason, set_by, since FROM node_drain WHERE node = ?", (node,)).fetchone()

    def put_drain(self, node: str, drain: tuple[str, str, int] | None) -> asyncio.Future:
        return self.background(self._put_drain, node, drain)

    def _put_drain(self, node: str, drain: tuple[str, str, int] | None) -> None:
        with self._bg() as c:
            if drain is None:
                c.execute("DELETE FROM node_drain WHERE node = ?", (node,))
            else:
                c.execute("INSERT OR REPLACE INTO node_drain (node, reason, set_by, since) VALUES (?, ?, ?, ?)",
                          (node, *drain))

    def integrity_check(self) -> str:
        return self._r.execute("PRAGMA integrity_check").fetchone()[0]


def heapq_merge_jobs(lists: list[list[Job]], limit: int) -> list[Job]:
    """The first `limit` jobs of lists each sorted by id, in id order."""
    return list(islice(heapq.merge(*lists, key=lambda j: j.id), limit))


def _rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction (SQLite may have rolled it back itself, e.g. on SQLITE_FULL)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            log.error("store: rollback failed: %s", e)


def _ids(rows) -> str:
    ids = sorted(rows)
    return ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


def default_path(state_dir: Path) -> Path:
    return state_dir / "schedd.db"

