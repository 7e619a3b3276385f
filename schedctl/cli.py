"""schedctl: parse the command line, make one D-Bus call (or subscribe), render the answer.

No scheduling logic lives here (pueue's client is the model): the daemon validates and
decides. What a person can get wrong on the command line (sizes, durations, ids, a job
file) is checked before the first call, so a typo is reported even when the daemon is down.
Exit status: 0 ok, 1 the daemon refused or a job failed, 2 usage, 124 wait --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import os
import pwd
import sys
import time
from typing import Any, Callable

from dbus_fast import Variant
from dbus_fast.errors import DBusError, DBusFastError

from schedd import __version__
from schedd.protocol import (SPEC_KEYS, STATES, TERMINAL, job_file_to_spec, parse_array, parse_duration,
                             parse_size)

from . import render
from .client import Client, Unreachable, plain

ACTIVE_STATES = ["PENDING", "HELD", "RUNNING", "SUSPENDED"]
FOLLOW_POLL_S = 0.1  # logs -f reads the file this often, like tail -f
RECHECK_S = 5.0  # wait and logs -f also ask GetJob this often, so a signal lost (daemon restart) cannot hang them
EXIT_TIMEOUT = 124  # as timeout(1)
PROGRESS_EVERY_S = 1.0  # wait's progress lines when not on a terminal


class UsageError(Exception):
    """Bad command-line input, found before any call: exit 2, as argparse does."""


class Failure(Exception):
    """Something on the client side failed (e.g. reading a job's output): exit 1 with this message."""


# -- the Submit spec ------------------------------------------------------------------------

_TYPE_WORDS = {
    "u": "a whole number from 0 to 4294967295",
    "t": "a whole number, at least 0",
    "i": "a whole number from -2147483648 to 2147483647",
    "s": "a string",
    "b": "true or false",
    "as": "a list of strings",
    "at": "a list of job ids",
}


def typed_spec(values: dict[str, Any]) -> dict[str, Variant]:
    """Plain values -> the a{sv} Submit takes, each with exactly the D-Bus type SPEC_KEYS names."""
    spec: dict[str, Variant] = {}
    for key, value in values.items():
        sig = SPEC_KEYS.get(key)
        if sig is None:
            raise UsageError(f"unknown spec key {key!r}; known: {', '.join(SPEC_KEYS)}")
        items = value if sig.startswith("a") and isinstance(value, list) else [value]
        numeric = sig[-1] in "uti"
        try:
            if numeric and any(isinstance(v, bool) for v in items):  # bool is an int to Python, not to people
                raise TypeError
            spec[key] = Variant(sig, value)
        except (DBusFastError, ValueError, TypeError):
            raise UsageError(f"{key} must be {_TYPE_WORDS.get(sig, sig)}, got {value!r}") from None
    return spec


def parse_ids(option: str, text: str) -> list[int]:
    """'12,13' -> [12, 13] (the --after list)."""
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        ids = []
    if not ids or any(i < 1 for i in ids):
        raise UsageError(f"{option} {text!r}: give job ids separated by commas, e.g. 12,13")
    return ids


def _convert(parse: Callable[[str], int], option: str, text: str) -> int:
    try:
        return parse(text)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None


def read_job_file(path: str) -> dict[str, Any]:
    """A JSON job file (seed 000's format, or spec keys) -> spec values; its warnings go to stderr."""
    try:
        if path == "-":
            obj = json.load(sys.stdin)
        else:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
        values, warnings = job_file_to_spec(obj)
    except OSError as e:
        raise UsageError(f"--file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--file {path}: not valid JSON: {e}") from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"--file {path}: {e}") from None
    for w in warnings:
        print(f"schedctl: {path}: {w}", file=sys.stderr)
    return values


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The submit options given on the command line, in the spec's units."""
    given = {"CPUs": args.cpus, "GPUs": args.gpus, "Priority": args.priority, "Name": args.name,
             "Node": args.node, "WorkingDirectory": args.chdir, "StdoutPath": args.output, "StderrPath": args.error}
    values = {k: v for k, v in given.items() if v is not None}
    if args.mem is not None:
        values["Memory"] = _convert(parse_size, "--mem", args.mem)
    if args.time is not None:
        values["RuntimeMaxUSec"] = _convert(parse_duration, "--time", args.time)
    if args.after is not None:
        values["After"] = parse_ids("--after", args.after)
    if args.hold:
        values["Hold"] = True
    if args.no_requeue:
        values["Requeue"] = False
    return values


def _assignment(where: str, text: Any, environ: dict[str, str]) -> tuple[str, str]:
    """'NAME=VALUE' -> (NAME, VALUE); a bare NAME takes the caller's value (sbatch --export=NAME)."""
    if not isinstance(text, str):
        raise UsageError(f"{where}: {text!r} is not a NAME=VALUE string")
    name, sep, value = text.partition("=")
    if not sep and name in environ:
        return name, environ[name]
    if not sep or not name:
        raise UsageError(f"{where} {text!r}: give NAME=VALUE (or the name of a variable you have set)")
    return name, value


def _environment(environ: dict[str, str], exported: bool, from_file: Any, from_cli: list[str]) -> list[str]:
    """The caller's environment (unless --no-env), then the job file's, then each --env."""
    env = dict(environ) if exported else {}
    if from_file is not None:
        if not isinstance(from_file, list):
            raise UsageError("the job file's environment must be an object or a list of \"NAME=VALUE\" strings")
        env.update(_assignment("job file environment", e, environ) for e in from_file)
    env.update(_assignment("--env", e, environ) for e in from_cli)
    return [f"{k}={v}" for k, v in env.items()]


def build_spec(args: argparse.Namespace, environ: dict[str, str], cwd: str) -> dict[str, Variant]:
    """The Submit a{sv} of `schedctl submit`: job file values, command-line options over them,
    the caller's environment and directory by default; relative paths are the caller's."""
    values = read_job_file(args.file) if args.file else {}
    if args.command:
        values["Command"] = list(args.command)
    if not values.get("Command"):
        raise UsageError("submit: give the command after --, e.g. schedctl submit -- sleep 60 (or --file job.json)")
    values.update(_options(args))
    for key in ("WorkingDirectory", "StdoutPath", "StderrPath"):
        if isinstance(values.get(key), str) and values[key]:
            values[key] = os.path.normpath(os.path.join(cwd, values[key]))
    values.setdefault("WorkingDirectory", cwd)
    values["Environment"] = _environment(environ, not args.no_env, values.get("Environment"), args.env or [])
    return typed_spec(values)


# -- exit status of wait --------------------------------------------------------------------


def wait_exit_code(jobs: list[dict[str, Any]]) -> int:
    """One job: 0 if COMPLETED, its ExitCode if FAILED with one, else 1 (CANCELLED, oom-kill with
    code 0...). Several: 0 if all COMPLETED, else 1."""
    if len(jobs) == 1:
        job = jobs[0]
        if job["State"] == "COMPLETED":
            return 0
        code = job.get("ExitCode", 0)
        return code if job["State"] == "FAILED" and 0 < code < 256 else 1
    return 0 if all(j["State"] == "COMPLETED" for j in jobs) else 1


# -- commands -------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, data: Any, text: str | None) -> None:
    """--json: the data (D-Bus property names, bytes, µs); otherwise the human text."""
    if args.json:
        print(json.dumps(data))
    elif text is not None:
        print(text)


def prepare_submit(args: argparse.Namespace) -> None:
    try:
        cwd = os.getcwd()
    except OSError as e:
        raise UsageError(f"cannot tell the current directory ({e.strerror}); give --chdir") from None
    args.spec = build_spec(args, dict(os.environ), cwd)
    args.tasks, args.cap = _convert_array(args.array) if args.array else (None, 0)


def _convert_array(text: str) -> tuple[list[int], int]:
    try:
        return parse_array(text)
    except ValueError as e:
        raise UsageError(f"--array {e}") from None


def array_specs(spec: dict[str, Variant], tasks: list[int], cap: int) -> list[dict[str, Variant]]:
    """One spec per task, for a single all-or-nothing SubmitMany."""
    extra = {"ArrayMaxRunning": Variant("u", cap)} if cap else {}
    return [{**spec, "ArrayTaskId": Variant("u", t), **extra} for t in tasks]


async def cmd_submit(c: Client, args: argparse.Namespace) -> int:
    if args.tasks is not None:
        (ids,) = await c.call("SubmitMany", "aa{sv}", [array_specs(args.spec, args.tasks, args.cap)])
        cap = f", at most {args.cap} running at once" if args.cap else ""
        _emit(args, {"id": ids[0], "ArrayJobId": ids[0], "ids": ids},
              f"Submitted array job {ids[0]}: {len(ids)} tasks (jobs {ids[0]}-{ids[-1]}){cap}")
        return 0
    job_id, path = await c.submit(args.spec)
    _emit(args, {"id": job_id, "path": path}, f"Submitted job {job_id}")
    return 0


def _uid(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise UsageError(f"--user {text!r}: no such user") from None


def prepare_queue(args: argparse.Namespace) -> None:
    """Which states and whose jobs (a name becomes a uid here, the daemon filters by uid)."""
    args.states = None if args.all else ACTIVE_STATES
    if args.state:
        args.states = [s.strip().upper() for s in args.state.split(",") if s.strip()]
        bad = [s for s in args.states if s not in STATES]
        if bad or not args.states:
            raise UsageError(f"--state {args.state!r}: states are {', '.join(STATES)}")
    args.uid = os.getuid() if args.me else (_uid(args.owner) if args.owner else None)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")


async def cmd_queue(c: Client, args: argparse.Namespace) -> int:
    jobs = await c.list_jobs(args.states, args.uid, args.limit, all_nodes=args.all_nodes)
    _emit(args, jobs, None if args.json else render.queue(jobs, render.is_tty(), fold=not args.expand))
    return 0


async def cmd_show(c: Client, args: argparse.Namespace) -> int:
    """Every property (or -p ones) of each job; a job that cannot be shown does not stop the others."""
    props = [p for group in args.property or [] for p in group.split(",") if p] or None
    jobs, failed = [], False
    for job_id in args.ids:
        try:
            jobs.append(await c.get_job(job_id))
        except DBusError as e:
            print(f"schedctl: {e.text}", file=sys.stderr)
            failed = True
    if args.json:
        picked = [{k: j[k] for k in props if k in j} if props else j for j in jobs]
        if len(args.ids) > 1 or picked:
            print(json.dumps(picked if len(args.ids) > 1 else picked[0]))
    elif jobs:
        human = render.is_tty()
        sep = "\n" if args.value else "\n\n"
        print(sep.join(render.show(j, human, props, args.value) for j in jobs))
    return 1 if failed else 0


async def cmd_action(c: Client, args: argparse.Namespace) -> int:
    """cancel/hold/release/suspend/resume/requeue: one Manager call per id; a refusal does not stop the rest."""
    member = args.command_name.capitalize()
    results = []
    for job_id in args.ids:
        try:
            await c.call(member, "t", [job_id])
            results.append({"Id": job_id, "Ok": True})
        except DBusError as e:
            print(f"schedctl: {args.command_name} {job_id}: {e.text}", file=sys.stderr)
            results.append({"Id": job_id, "Ok": False, "Error": e.type, "Message": e.text})
    if args.json:
        print(json.dumps(results))
    return 0 if all(r["Ok"] for r in results) else 1


class _Tail:
    """What was appended to a file since the last look, read with the caller's own rights (the
    daemon never reads user files for anyone). tail -F rules: no file yet is 'nothing yet', and a
    file that shrank was truncated by a restart (requeue) and is read again from the start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    async def apump(self, write: Callable[[bytes], None]) -> None:
        self.pump(write)

    def pump(self, write: Callable[[bytes], None]) -> None:
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:
                    self.offset = 0
                f.seek(self.offset)
                while chunk := f.read(1 << 20):
                    self.offset += len(chunk)
                    write(chunk)
        except FileNotFoundError:
            return
        except OSError as e:
            raise Failure(f"cannot read {self.path}: {e.strerror}") from None


class _Sink:
    """Output bytes go to stdout unchanged, or with --json as {"Id", "Path", "Output"} objects
    (one per chunk when following: JSON lines), decoded as UTF-8 across chunk boundaries."""

    def __init__(self, job_id: int, path: str, as_json: bool) -> None:
        self.job_id, self.path, self.as_json = job_id, path, as_json
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> None:
        if self.as_json:
            self._emit(self.decoder.decode(data))
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def finish(self) -> None:
        if self.as_json:
            self._emit(self.decoder.decode(b"", final=True))

    def _emit(self, text: str) -> None:
        if text:
            print(json.dumps({"Id": self.job_id, "Path": self.path, "Output": text}), flush=True)


class _RemoteTail:
    """The same for a job that runs on another node: its origin reads it there (ReadOutput), for us."""

    def __init__(self, c: Client, job_id: int, stderr: bool) -> None:
        self.c, self.job_id, self.stderr = c, job_id, stderr
        self.offset = 0

    async def apump(self, write: Callable[[bytes], None]) -> None:
        while True:
            (data,) = await self.c.call("ReadOutput", "tbt", [self.job_id, self.stderr, self.offset])
            if not data:
                return
            self.offset += len(data)
            write(bytes(data))


async def _is_remote(c: Client, job: dict[str, Any]) -> bool:
    """Runs on another node: its output file is not on this machine."""
    node = job.get("Node") or ""
    return bool(node) and node != (await c.properties()).get("NodeName")


async def cmd_logs(c: Client, args: argparse.Namespace) -> int:
    if args.follow:
        await c.subscribe()  # before reading the state: an end in between still arrives as a signal
    job = await c.get_job(args.id)
    path = job["StderrPath" if args.stderr else "StdoutPath"]
    remote = await _is_remote(c, job)
    if not path and not remote:
        if job.get("User") != os.getuid():
            raise Failure(f"job {args.id} belongs to {job.get('UserName') or job.get('User')}: its output paths "
                          f"are shown only to its owner and root (private_data)")
        raise Failure(f"job {args.id} has no {'StderrPath' if args.stderr else 'StdoutPath'}")
    tail = _RemoteTail(c, args.id, args.stderr) if remote else _Tail(path)
    if args.follow:
        return await _follow(c, args.id, job["State"], tail, _Sink(args.id, path, args.json))
    if remote:
        chunks: list[bytes] = []
        await tail.apump(chunks.append if args.json else _Sink(args.id, path, False).write)
        if args.json:
            print(json.dumps({"Id": job["Id"], "Path": path, "Node": job["Node"],
                              "Output": b"".join(chunks).decode("utf-8", "replace")}))
        return 0
    return _print_log(job, path, args.json)


def _print_log(job: dict[str, Any], path: str, as_json: bool) -> int:
    """The whole file as it is now (streamed in chunks; one JSON object with --json)."""
    sink = _Sink(job["Id"], path, as_json)
    chunks: list[bytes] = []
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                if as_json:
                    chunks.append(chunk)
                else:
                    sink.write(chunk)
    except FileNotFoundError:
        if not job.get("StartTime"):
            print(f"schedctl: job {job['Id']} has not started ({job['State']}): no output yet", file=sys.stderr)
            return 0
        raise Failure(f"cannot read {path}: no such file (removed?)") from None
    except OSError as e:
        raise Failure(f"cannot read {path}: {e.strerror}") from None
    if as_json:
        print(json.dumps({"Id": job["Id"], "Path": path, "Output": b"".join(chunks).decode("utf-8", "replace")}))
    return 0


async def _follow(c: Client, job_id: int, state: str, tail: "_Tail | _RemoteTail", sink: _Sink) -> int:
    """Print new output until the job is terminal, then what is left (nothing written before the end is lost:
    the file is read to its end after the terminal state is known)."""
    loop = asyncio.get_running_loop()
    recheck = loop.time() + RECHECK_S
    next_read = 0.0
    while state not in TERMINAL:
        if loop.time() >= next_read:
            await tail.apump(sink.write)
            next_read = loop.time() + FOLLOW_POLL_S
        try:
            changed, _path, new_state, _reason = await c.next_change(max(0.0, next_read - loop.time()))
            if changed == job_id:
                state = new_state
        except TimeoutError:
            pass
        if loop.time() >= recheck:
            state = (await c.get_job(job_id))["State"]
            recheck = loop.time() + RECHECK_S
    if isinstance(tail, _RemoteTail):
        # The origin hears of the end a moment after the node writes the last bytes: one more read.
        await tail.apump(sink.write)
    await tail.apump(sink.write)
    sink.finish()
    return 0


class _Progress:
    """For several jobs: counts by state on stderr, redrawn as a bar on a terminal, else a plain line
    whenever they change (stdout keeps one line per ended job, for scripts)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = render.is_tty(sys.stderr)
        self.states: dict[int, str] = {}
        self._last = ""
        self._printed_at = 0.0

    def update(self, job_id: int, state: str) -> None:
        self.states[job_id] = state
        if not self.enabled or len(self.states) < self.total:
            return
        counts: dict[str, int] = {}
        for s in self.states.values():
            counts[s] = counts.get(s, 0) + 1
        line = render.progress(counts, self.total, self.tty)
        finished = sum(n for s, n in counts.items() if s in TERMINAL) == self.total
        now = time.monotonic()
        if line == self._last or (not self.tty and not finished and now - self._printed_at < PROGRESS_EVERY_S):
            return  # plain lines: at most one a second, and always the last one
        self._last, self._printed_at = line, now
        sys.stderr.write(f"\r\033[K{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._last:
            sys.stderr.write("\n")
            sys.stderr.flush()


async def cmd_wait(c: Client, args: argparse.Namespace) -> int:
    """Block until every job is terminal: subscribe, then look at each, then wait on signals."""
    await c.subscribe()
    ids = list(dict.fromkeys(args.ids))
    final: dict[int, dict[str, Any]] = {}
    progress = _Progress(len(ids), len(ids) > 1 and not args.json)

    def ended(job: dict[str, Any]) -> None:
        if job["State"] in TERMINAL and job["Id"] not in final:
            final[job["Id"]] = job
            if not args.json:
                if progress.tty and progress._last:
                    sys.stderr.write("\r\033[K")
                print(render.ended(job), flush=True)
        progress.update(job["Id"], job["State"])

    try:
        return await _wait_loop(c, args, ids, final, ended, progress)
    finally:
        progress.close()


async def _wait_loop(c: Client, args: argparse.Namespace, ids: list[int], final: dict[int, dict[str, Any]],
                     ended: Callable[[dict[str, Any]], None], progress: _Progress) -> int:
    for job_id in ids:
        ended(await c.get_job(job_id))
    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    recheck = loop.time() + RECHECK_S
    while len(final) < len(ids):
        now = loop.time()
        if deadline is not None and now >= deadline:
            return await _timed_out(c, args, ids, final)
        if now >= recheck:
            for job_id in ids:
                if job_id not in final:
                    ended(await c.get_job(job_id))
            recheck = loop.time() + RECHECK_S
            continue
        try:
            job_id, _path, state, _reason = await c.next_change(min(recheck, deadline or recheck) - now)
        except TimeoutError:
            continue
        if job_id in ids and job_id not in final and state in TERMINAL:
            ended(await c.get_job(job_id))  # the full record (ExitCode, EndTime) for the exit status and --json
        elif job_id in ids and job_id not in final:
            progress.update(job_id, state)
    jobs = [final[j] for j in ids]
    if args.json:
        print(json.dumps(jobs))
    return wait_exit_code(jobs)


async def _timed_out(c: Client, args: argparse.Namespace, ids: list[int], final: dict[int, dict[str, Any]]) -> int:
    left = [j for j in ids if j not in final]
    print(f"schedctl: timed out after {args.timeout:g}s; still waiting for job {', '.join(map(str, left))}",
          file=sys.stderr)
    if args.json:
        print(json.dumps([final[j] if j in final else await c.get_job(j) for j in ids]))
    return EXIT_TIMEOUT


async def cmd_stats(c: Client, args: argparse.Namespace) -> int:
    """Accounting from the daemon (GetStats); an older daemon without it: computed here from ListJobs."""
    flt: dict[str, Variant] = {}
    if args.since is not None:
        flt["Since"] = Variant("t", max(0, render.now_usec() - args.since))
    if args.owner is not None:
        flt["User"] = Variant("u", args.owner)
    try:
        (answer,) = await c.call("GetStats", "a{sv}", [flt])
        figures = plain(answer)
    except DBusError as e:
        if e.type != "org.freedesktop.DBus.Error.UnknownMethod":
            raise
        jobs = await c.list_jobs(uid=args.owner)
        figures = render.stats([j for j in jobs if args.since is None or j["SubmitTime"] >= flt["Since"].value])
    _emit(args, figures, None if args.json else render.stats_text(figures))
    return 0


async def cmd_monitor(c: Client, args: argparse.Namespace) -> int:
    """Print each JobStateChanged as it arrives (of the given jobs, or all), until interrupted
    or, with --count, after that many."""
    await c.subscribe()
    print(f"Monitoring JobStateChanged on {c.where}.", file=sys.stderr, flush=True)
    wanted = set(args.ids)
    seen = 0
    while args.count is None or seen < args.count:
        job_id, path, state, reason = await c.next_change()
        if wanted and job_id not in wanted:
            continue
        seen += 1
        if args.json:
            print(json.dumps({"Id": job_id, "Job": path, "State": state, "Reason": reason}), flush=True)
        else:
            print(render.state_change(job_id, state, reason), flush=True)
    return 0


async def cmd_nodes(c: Client, args: argparse.Namespace) -> int:
    nodes = await c.list_nodes()
    _emit(args, nodes, None if args.json else render.nodes(nodes, render.is_tty()))
    return 0


async def cmd_status(c: Client, args: argparse.Namespace) -> int:
    props = await c.properties()
    _emit(args, props, None if args.json else render.status(props, render.is_tty()))
    return 0


# -- the command line -----------------------------------------------------------------------


def job_id(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 0 < n < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id")
    return n


def _duration_arg(option: str, text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{option}: {e}") from None


def _uid_arg(text: str) -> int:
    try:
        return _uid(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def seconds(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        n = -1.0
    if not 0 <= n < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return n


def _globals(bus_user: bool = True) -> argparse.ArgumentParser:
    """Options accepted before and after the command. SUPPRESS keeps a subcommand's parser from
    resetting what was given before the command."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("global options")
    if bus_user:
        g.add_argument("--user", dest="user_bus", action="store_true", default=argparse.SUPPRESS,
                       help="talk to your own schedd on the session bus")
    g.add_argument("--system", dest="user_bus", action="store_false", default=argparse.SUPPRESS,
                   help="talk to the system-wide schedd (the default)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output (D-Bus property names; bytes; µs)")
    g.add_argument("--bus-address", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _submit_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("submit", parents=[common], help="queue a job",
                       usage="schedctl submit [OPTIONS] [--file job.json] [--] COMMAND [ARGS...]")
    s.add_argument("--cpus", type=int, help="CPUs (default 1)")
    s.add_argument("--mem", help="memory, e.g. 512M, 4G (default: the daemon's)")
    s.add_argument("--gpus", type=int)
    s.add_argument("--priority", type=int, help="higher runs first (default 0)")
    s.add_argument("--time", help="time limit, e.g. 90s, 1h30m, 2-00:00:00")
    s.add_argument("--after", help="job ids that must complete first, e.g. 12,13")
    s.add_argument("--name")
    s.add_argument("--chdir", help="working directory (default: the current one)")
    s.add_argument("-o", "--output", help="stdout file (%%j = the job id)")
    s.add_argument("-e", "--error", help="stderr file (default: with stdout)")
    s.add_argument("--env", action="append", metavar="NAME[=VALUE]", help="set (or pass) a variable; repeatable")
    s.add_argument("--no-env", action="store_true", help="do not pass on the current environment")
    s.add_argument("--hold", action="store_true", help="queue it held")
    s.add_argument("--node", help="a node's name, or 'any' (here if it fits now, else the peer with most room)")
    s.add_argument("--no-requeue", action="store_true",
                   help="if the node running it goes down, end it FAILED (node-failure) instead of requeueing it once")
    s.add_argument("--array", metavar="IDS[%N]",
                   help="a job array: task ids like 1-1000, 0,3,5-7 or 0-15:4; %%N runs at most N at once. "
                        "Each task gets SCHEDD_ARRAY_TASK_ID and SCHEDD_ARRAY_JOB_ID")
    s.add_argument("--file", help="a JSON job file ('-': stdin); options given here override it")
    s.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_submit, prepare=prepare_submit)


def _queue_parser(sub: Any) -> None:
    q = sub.add_parser("queue", aliases=["list"], parents=[_globals(bus_user=False)], help="list jobs")
    q.add_argument("--all", action="store_true", help="include finished jobs")
    q.add_argument("--state", help="only these states, comma-separated (e.g. RUNNING,PENDING)")
    q.add_argument("-u", "--user", dest="owner", nargs="?", const="", metavar="NAME|UID",
                   help="only this user's jobs; without a value: the session bus, as before the command")
    q.add_argument("--me", action="store_true", help="only my jobs")
    q.add_argument("--limit", type=int, help="at most this many jobs")
    q.add_argument("--all-nodes", action="store_true",
                   help="the whole cluster: every node's own jobs (ids are per origin node: see Origin)")
    q.add_argument("-r", "--array", dest="expand", action="store_true",
                   help="one line per array task (pending tasks of an array are folded into one line by default)")
    q.set_defaults(func=cmd_queue, prepare=prepare_queue)


def parser() -> argparse.ArgumentParser:
    common = _globals()
    p = argparse.ArgumentParser(prog="schedctl", parents=[common], description="Control the schedd job scheduler.")
    p.add_argument("--version", action="version", version=f"schedctl {__version__}")
    sub = p.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    _submit_parser(sub, common)
    _queue_parser(sub)

    sh = sub.add_parser("show", parents=[common], help="every property of jobs (Key=Value)",
                        description="Key=Value lines per job. --json: one object for one ID, an array for several.")
    sh.add_argument("ids", nargs="+", type=job_id, metavar="ID")
    sh.add_argument("-p", "--property", action="append", metavar="NAME[,NAME]", help="only these properties")
    sh.add_argument("--value", action="store_true", help="print values only (with -p)")
    sh.set_defaults(func=cmd_show)

    for name, what in (("cancel", "cancel jobs"), ("hold", "keep pending jobs from starting"),
                       ("release", "let held jobs start"), ("suspend", "stop running jobs, keeping their resources"),
                       ("resume", "continue suspended jobs"), ("requeue", "put jobs back in the queue")):
        x = sub.add_parser(name, parents=[common], help=what)
        x.add_argument("ids", nargs="+", type=job_id, metavar="ID")
        x.set_defaults(func=cmd_action)

    lg = sub.add_parser("logs", parents=[common], help="a job's output, read from its file")
    lg.add_argument("id", type=job_id, metavar="ID")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    lg.add_argument("--stderr", action="store_true", help="StderrPath instead of StdoutPath")
    lg.set_defaults(func=cmd_logs)

    w = sub.add_parser("wait", parents=[common], help="wait for jobs to end; exit with the job's status")
    w.add_argument("ids", nargs="+", type=job_id, metavar="ID")
    w.add_argument("--timeout", type=seconds, metavar="SECONDS", help=f"give up after this long (exit {EXIT_TIMEOUT})")
    w.set_defaults(func=cmd_wait)

    mo = sub.add_parser("monitor", parents=[common], help="print JobStateChanged signals as they arrive")
    mo.add_argument("ids", nargs="*", type=job_id, metavar="ID", help="only these jobs (default: all)")
    mo.add_argument("--count", type=int, metavar="N", help="exit after N changes")
    mo.set_defaults(func=cmd_monitor)

    st = sub.add_parser("stats", parents=[common], help="job counts, success rate, wait and CPU-hours per user")
    st.add_argument("--since", type=lambda t: _duration_arg("--since", t), metavar="DURATION",
                    help="only jobs submitted in this last stretch, e.g. 1h, 7d")
    st.add_argument("-u", "--for", dest="owner", type=_uid_arg, metavar="NAME|UID", help="only this user's jobs")
    st.set_defaults(func=cmd_stats)

    for name, func, what in (("nodes", cmd_nodes, "this node and its peers"),
                             ("status", cmd_status, "the daemon and its resources")):
        sub.add_parser(name, parents=[common], help=what).set_defaults(func=func)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """argv -> Namespace with the global options filled in whatever their position."""
    args = parser().parse_args(argv)
    if getattr(args, "owner", None) == "":  # `queue --user` without a name is the global --user
        args.user_bus, args.owner = True, None
    args.user_bus = getattr(args, "user_bus", False)
    args.json = getattr(args, "json", False)
    args.bus_address = getattr(args, "bus_address", None)
    if args.command_name == "submit" and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return args


async def _run(args: argparse.Namespace) -> int:
    async with Client(args.user_bus, args.bus_address) as client:
        return await args.func(client, args)


def _say(message: object) -> None:
    print(f"schedctl: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as e:  # argparse: a usage error (2), or --help/--version (0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        prepare = getattr(args, "prepare", None)
        if prepare is not None:
            prepare(args)
        return asyncio.run(_run(args))
    except UsageError as e:
        _say(e)
        return 2
    except Unreachable as e:
        bus, systemctl = ("session", "systemctl --user") if args.user_bus else ("system", "systemctl")
        _say(f"cannot reach schedd on the {bus} bus ({e}): is it running? try: {systemctl} status schedd")
        return 1
    except DBusError as e:
        _say(e.text)
        return 1
    except Failure as e:
        _say(e)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `schedctl queue | head`: stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
