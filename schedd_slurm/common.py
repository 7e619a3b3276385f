"""What every command shares: the connection to schedd, Slurm's job ids (`N`, `A_i`), looking jobs
up, and the error wording and exit codes Slurm's clients expect."""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from dbus_fast import Variant
from dbus_fast.errors import DBusError

from schedctl.client import Client, Unreachable
from schedctl.errors import UsageError
from schedd.protocol import parse_array
from schedd_slurm.options import GetoptError, SlurmUsage

CLUSTER = "schedd"
NOT_FOUND = "org.schedd.Schedd1.Error.NotFound"


VERSION = "slurm 22.05.8"  # the Slurm whose output these commands copy


def parsed(table: Any, argv: list[str]) -> Any:
    """The command line parsed by `table` (options.Table), or None once --version is answered."""
    p = table.parse(argv)
    if p.get("version"):
        print(VERSION)
        return None
    return p


def user_bus() -> bool:
    """Which schedd: the system one unless SCHEDD_BUS=user (a per-user `schedd --user`)."""
    return os.environ.get("SCHEDD_BUS", "system") == "user"


def connect() -> Client:
    return Client(user_bus())


@dataclass(frozen=True)
class JobRef:
    """A job id as Slurm's commands take it: N (a job, or a whole array), A_i, or A_[ranges]."""

    id: int
    tasks: tuple[int, ...] | None = None  # None: the job N (all of its array, if it is one)

    @staticmethod
    def parse(text: str, prog: str = "") -> "JobRef":
        t = text.strip()
        head, sep, tail = t.partition("_")
        try:
            jid = int(head)
            if not 0 < jid < 1 << 64:  # a D-Bus 't': beyond it no job can exist
                raise ValueError
            if not sep:
                return JobRef(jid)
            inner = tail[1:-1] if tail.startswith("[") and tail.endswith("]") else tail
            ids, _cap = parse_array(inner)
            return JobRef(jid, tuple(ids))
        except ValueError:
            raise SlurmUsage(f"Invalid job id: {text}") from None


def parse_refs(values: list[str] | None, prog: str) -> list[JobRef]:
    """Repeated options and comma lists (`-j 1,2 -j 3_4`); a bracket range keeps its commas."""
    refs: list[JobRef] = []
    for v in values or []:
        depth, word = 0, ""
        for ch in v + ",":
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
            if ch == "," and depth == 0:
                if word.strip():
                    refs.append(JobRef.parse(word, prog))
                word = ""
            else:
                word += ch
    return refs


def slurm_id(job: dict[str, Any]) -> str:
    """A job's JobID as Slurm prints it: A_i for an array task (A = the id sbatch printed), else N."""
    if job.get("ArrayJobId"):
        return f"{job['ArrayJobId']}_{job['ArrayTaskId']}"
    return str(job["Id"])


def array_job_id(job: dict[str, Any]) -> int:
    return job.get("ArrayJobId") or job["Id"]


async def get_job(c: Client, jid: int) -> dict[str, Any] | None:
    try:
        return await c.get_job(jid)
    except DBusError as e:
        if e.type == NOT_FOUND:
            return None
        raise


async def array_tasks(c: Client, first: dict[str, Any]) -> list[dict[str, Any]]:
    """Every task of the array whose first task is `first` (tasks are submitted in one SubmitMany: ids follow)."""
    aid = first["Id"]
    out = [first]
    after = aid
    while True:
        flt = {"After": Variant("t", after), "Limit": Variant("u", 1000)}
        if first.get("User") is not None:
            flt["User"] = Variant("u", first["User"])
        (page,) = await c.call("ListJobs", "a{sv}", [flt])
        from schedctl.client import plain_rows

        rows = plain_rows(page)
        if not rows:
            return out
        for r in rows:
            if r.get("ArrayJobId") != aid:
                return out
            out.append(r)
        after = rows[-1]["Id"]


async def resolve(c: Client, refs: list[JobRef]) -> tuple[list[dict[str, Any]], list[JobRef]]:
    """The jobs the refs name (an array's tasks for its id), and the refs that name nothing."""
    found: dict[int, dict[str, Any]] = {}
    missing: list[JobRef] = []
    for ref in refs:
        job = await get_job(c, ref.id)
        if job is None:
            missing.append(ref)
            continue
        if job.get("ArrayJobId") == job["Id"]:  # the id of a whole array
            tasks = await array_tasks(c, job)
            if ref.tasks is not None:
                tasks = [t for t in tasks if t.get("ArrayTaskId") in ref.tasks]
                if not tasks:
                    missing.append(ref)
            for t in tasks:
                found[t["Id"]] = t
        elif ref.tasks is None:
            found[job["Id"]] = job
        else:
            missing.append(ref)
    return [found[k] for k in sorted(found)], missing


def uid_of(name: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise SlurmUsage(f"Invalid user: {name}") from None


class Listing:
    """A listing printed a page at a time: its head (header lines) once, before the first page's
    lines or alone at the end; if it fails after some of it is out, stderr says the lines above are
    not the whole list, before the error itself (a stdout closed early is no failure: nothing said)."""

    def __init__(self, prog: str, head: Callable[[], list[str]]) -> None:
        self.prog, self.head = prog, head
        self.started, self.jobs = False, 0

    def write(self, lines: list[str], jobs: int) -> None:
        """The lines of `jobs` jobs (a job may have more than one: sacct's steps)."""
        if not self.started:
            self.started = True
            lines = self.head() + lines
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
            self.jobs += jobs

    def end(self) -> None:
        """After the last page: the head alone if no line came (no job at all), as Slurm prints it."""
        self.write([], 0)

    def __enter__(self) -> "Listing":
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is not None and not issubclass(kind, BrokenPipeError) and self.jobs:
            n = self.jobs
            print(f"{self.prog}: error: the listing above stops after {n} job{'' if n == 1 else 's'}: it is "
                  "incomplete", file=sys.stderr)


def run(prog: str, body: Callable[[], Awaitable[int]]) -> int:
    """Run one command's coroutine with Slurm's error wording: `prog: error: ...`, exit 1."""
    try:
        return asyncio.run(body())
    except GetoptError as e:
        print(f"{prog}: {e}\nTry \"{prog} --help\" for more information", file=sys.stderr)
        return 1
    except SlurmUsage as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except Unreachable as e:
        print(f"{prog}: error: Unable to contact slurm controller (connect failure): schedd does not answer "
              f"({e}); is it running? try: systemctl status schedd", file=sys.stderr)
        return 1
    except DBusError as e:
        print(f"{prog}: error: {e.text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, ValueError, ArithmeticError, MemoryError, OSError) as e:
        # A value no parser above foresaw (a huge number, a non-ASCII digit, a missing file):
        # Slurm's one-line error, never a traceback.
        print(f"{prog}: error: {str(e)[:200] or type(e).__name__}", file=sys.stderr)
        return 1
