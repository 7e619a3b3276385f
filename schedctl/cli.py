"""schedctl: argument parsing, one D-Bus call (or a subscription), rendering. No scheduling logic."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import sys
from typing import Any

from dbus_fast import Variant
from dbus_fast.errors import DBusError

from schedd import __version__
from schedd.protocol import SPEC_KEYS, STATES, job_file_to_spec, parse_duration, parse_size

from . import render
from .client import Client, Unreachable

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
ACTIVE_STATES = ["PENDING", "HELD", "RUNNING", "SUSPENDED"]


class UsageError(Exception):
    """Bad command-line input, found before any call."""


# -- building a Submit spec -------------------------------------------------------------


def _ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageError(f"--after: {text!r} is not a comma-separated list of job ids") from None


def build_spec(args: argparse.Namespace, environ: dict[str, str], cwd: str) -> dict[str, Variant]:
    """The Submit a{sv} for `schedctl submit`: file values, then command-line options over them."""
    values: dict[str, Any] = {}
    if args.file:
        try:
            with open(args.file) as f:
                obj = json.load(f)
            values, warnings = job_file_to_spec(obj)
        except (OSError, json.JSONDecodeError, ValueError) as e:
            raise UsageError(f"--file {args.file}: {e}") from None
        for w in warnings:
            print(f"schedctl: {args.file}: {w}", file=sys.stderr)
    if args.command:
        values["Command"] = list(args.command)
    if not values.get("Command"):
        raise UsageError("submit: give the command after --, e.g. schedctl submit -- sleep 60 (or --file job.json)")
    try:
        if args.cpus is not None:
            values["CPUs"] = args.cpus
        if args.mem is not None:
            values["Memory"] = parse_size(args.mem)
        if args.gpus is not None:
            values["GPUs"] = args.gpus
        if args.priority is not None:
            values["Priority"] = args.priority
        if args.time is not None:
            values["RuntimeMaxUSec"] = parse_duration(args.time)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.after:
        values["After"] = _ids(args.after)
    if args.name:
        values["Name"] = args.name
    if args.hold:
        values["Hold"] = True
    if args.node:
        values["Node"] = args.node
    for key, opt in (("StdoutPath", args.output), ("StderrPath", args.error), ("WorkingDirectory", args.chdir)):
        if opt:
            values[key] = opt
    for key in ("StdoutPath", "StderrPath", "WorkingDirectory"):
        if key in values and isinstance(values[key], str):
            values[key] = os.path.normpath(os.path.join(cwd, values[key]))
    values.setdefault("WorkingDirectory", cwd)
    env = {} if args.no_env else dict(environ)
    if isinstance(values.get("Environment"), list):
        env.update(e.split("=", 1) for e in values["Environment"] if "=" in e)
    for e in args.env or []:
        if "=" not in e:
            raise UsageError(f"--env {e!r}: give NAME=VALUE")
        k, v = e.split("=", 1)
        env[k] = v
    values["Environment"] = [f"{k}={v}" for k, v in env.items()]
    out = {}
    for key, value in values.items():
        sig = SPEC_KEYS.get(key)
        if sig is None:
            raise UsageError(f"unknown spec key {key!r}")
        try:
            out[key] = Variant(sig, value)
        except Exception as e:  # noqa: BLE001 - dbus-fast reports wrong Python types variously
            raise UsageError(f"{key}: {value!r} does not fit D-Bus type {sig!r} ({e})") from None
    return out


# -- exit codes ------------------------------------------------------------------------


def wait_exit_code(jobs: list[dict[str, Any]]) -> int:
    """One job: its exit code (0 if COMPLETED, 1 if it ended otherwise with code 0). Several: 0 if all COMPLETED."""
    if len(jobs) == 1:
        j = jobs[0]
        if j["State"] == "COMPLETED":
            return 0
        return j["ExitCode"] if j["State"] == "FAILED" and j["ExitCode"] else 1
    return 0 if all(j["State"] == "COMPLETED" for j in jobs) else 1


# -- commands ---------------------------------------------------------------------------


def _emit(args, data: Any, text: str | None) -> None:
    if args.json:
        print(json.dumps(data, indent=None, sort_keys=False))
    elif text is not None:
        print(text)


async def cmd_submit(c: Client, args) -> int:
    spec = build_spec(args, dict(os.environ), os.getcwd())
    jid, path = await c.submit(spec)
    _emit(args, {"id": jid, "path": path}, f"Submitted job {jid}")
    return 0


def _uid(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise UsageError(f"--user-name: no user {text!r}") from None


async def cmd_queue(c: Client, args) -> int:
    states = None if args.all else ACTIVE_STATES
    if args.state:
        states = [s.strip().upper() for s in args.state.split(",") if s.strip()]
        bad = [s for s in states if s not in STATES]
        if bad:
            raise UsageError(f"--state {bad[0]}: states are {', '.join(STATES)}")
    uid = None
    if args.me:
        uid = os.getuid()
    elif args.owner:
        uid = _uid(args.owner)
    jobs = await c.list_jobs(states, uid, args.limit)
    _emit(args, jobs, render.queue(jobs, render.is_tty()))
    return 0


async def cmd_show(c: Client, args) -> int:
    jobs = [await c.get_job(j) for j in args.ids]
    _emit(args, jobs if len(jobs) > 1 else jobs[0], "\n\n".join(render.show(j) for j in jobs))
    return 0


async def cmd_simple(c: Client, args) -> int:
    """cancel/hold/release/suspend/resume/requeue: one call per id; go on past failures."""
    member = args.command_name.capitalize()
    rc, done = 0, []
    for jid in args.ids:
        try:
            await c.call(member, "t", [jid])
            done.append(jid)
        except DBusError as e:
            print(f"schedctl: {args.command_name} {jid}: {e.text}", file=sys.stderr)
            rc = 1
    if args.json:
        print(json.dumps({"ok": done}))
    return rc


async def cmd_logs(c: Client, args) -> int:
    if args.follow:
        await c.subscribe()  # before looking at the state: the end cannot slip past us
    job = await c.get_job(args.id)
    path = job["StderrPath"] if args.stderr else job["StdoutPath"]
    offset = 0

    def pump() -> None:
        nonlocal offset
        try:
            with open(path, "rb") as f:  # opened with the caller's own rights
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            offset += len(data)
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    if not args.follow:
        try:
            with open(path, "rb") as f:
                sys.stdout.buffer.write(f.read())
        except FileNotFoundError:
            if job["State"] in ("PENDING", "HELD"):
                print(f"schedctl: job {args.id} has not started yet; no output", file=sys.stderr)
                return 0
            raise UsageError(f"job {args.id}: {path} does not exist (removed?)") from None
        return 0
    state = job["State"]
    while state not in TERMINAL:
        pump()
        try:
            jid, _, st, _ = await c.next_change(timeout=0.1)
            if jid == args.id:
                state = st
        except asyncio.TimeoutError:
            pass
    pump()  # whatever was written just before the end
    return 0


async def cmd_wait(c: Client, args) -> int:
    await c.subscribe()
    final: dict[int, dict[str, Any]] = {}
    for jid in args.ids:
        j = await c.get_job(jid)
        if j["State"] in TERMINAL:
            final[jid] = j
            if not args.json:
                print(f"job {jid} {j['State']} ({j['Reason']})")
    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    while len(final) < len(args.ids):
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            print(f"schedctl: timed out waiting for {len(args.ids) - len(final)} job(s)", file=sys.stderr)
            return 124
        try:
            jid, _, state, reason = await c.next_change(timeout=left)
        except asyncio.TimeoutError:
            continue
        if jid in args.ids and jid not in final and state in TERMINAL:
            final[jid] = await c.get_job(jid)
            if not args.json:
                print(f"job {jid} {state} ({reason})")
    jobs = [final[j] for j in args.ids]
    if args.json:
        print(json.dumps(jobs))
    return wait_exit_code(jobs)


async def cmd_stats(c: Client, args) -> int:
    s = render.stats(await c.list_jobs())
    _emit(args, s, render.stats_text(s))
    return 0


async def cmd_nodes(c: Client, args) -> int:
    (rows,) = await c.call("ListNodes")
    from .client import plain

    rows = plain(rows)
    _emit(args, rows, render.nodes(rows, render.is_tty()))
    return 0


async def cmd_status(c: Client, args) -> int:
    props = await c.properties()
    _emit(args, props, render.status(props, render.is_tty()))
    return 0


# -- parsing -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("global options")
    g.add_argument("--user", dest="user_bus", action="store_true", default=argparse.SUPPRESS,
                   help="talk to your own schedd on the session bus")
    g.add_argument("--system", dest="user_bus", action="store_false", default=argparse.SUPPRESS,
                   help="talk to the system schedd (default)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    g.add_argument("--bus-address", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    p = argparse.ArgumentParser(prog="schedctl", parents=[common],
                                description="Control the schedd job scheduler.")
    p.add_argument("--version", action="version", version=f"schedctl {__version__}")
    sub = p.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    s = sub.add_parser("submit", parents=[common], help="queue a job")
    s.add_argument("--cpus", type=int, help="CPUs (default 1)")
    s.add_argument("--mem", help="memory, e.g. 512M, 4G (default from the daemon's config)")
    s.add_argument("--gpus", type=int)
    s.add_argument("--priority", type=int, help="higher runs first (default 0)")
    s.add_argument("--time", help="time limit, e.g. 90s, 1h30m, 2-00:00:00")
    s.add_argument("--after", help="job ids that must complete first, e.g. 12,13")
    s.add_argument("--name")
    s.add_argument("--chdir", help="working directory (default: the current one)")
    s.add_argument("-o", "--output", help="stdout file (%%j = job id)")
    s.add_argument("-e", "--error", help="stderr file (default: with stdout)")
    s.add_argument("--env", action="append", metavar="NAME=VALUE", help="set a variable (repeatable)")
    s.add_argument("--no-env", action="store_true", help="do not pass the current environment")
    s.add_argument("--hold", action="store_true", help="queue it held")
    s.add_argument("--node", help="a node name, or 'any'")
    s.add_argument("--file", help="a JSON job file")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    s.set_defaults(func=cmd_submit)

    for name, aliases in (("queue", ["list"]),):
        q = sub.add_parser(name, aliases=aliases, parents=[common], help="list jobs")
        q.add_argument("--all", action="store_true", help="include finished jobs")
        q.add_argument("--state", help="comma-separated states")
        q.add_argument("--user-name", dest="owner", help="only this user's jobs (name or uid)")
        q.add_argument("--me", action="store_true", help="only my jobs")
        q.add_argument("--limit", type=int)
        q.set_defaults(func=cmd_queue)

    sh = sub.add_parser("show", parents=[common], help="every property of jobs")
    sh.add_argument("ids", nargs="+", type=int)
    sh.set_defaults(func=cmd_show)

    for name, what in (("cancel", "cancel jobs"), ("hold", "hold pending jobs"), ("release", "release held jobs"),
                       ("suspend", "stop running jobs, keeping their resources"), ("resume", "continue them"),
                       ("requeue", "put jobs back in the queue")):
        x = sub.add_parser(name, parents=[common], help=what)
        x.add_argument("ids", nargs="+", type=int)
        x.set_defaults(func=cmd_simple)

    lg = sub.add_parser("logs", parents=[common], help="a job's output")
    lg.add_argument("id", type=int)
    lg.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    lg.add_argument("--stderr", action="store_true", help="show StderrPath instead of StdoutPath")
    lg.set_defaults(func=cmd_logs)

    w = sub.add_parser("wait", parents=[common], help="wait for jobs to end; exits with the job's code")
    w.add_argument("ids", nargs="+", type=int)
    w.add_argument("--timeout", type=float, help="give up after this many seconds (exit 124)")
    w.set_defaults(func=cmd_wait)

    for name, func, what in (("stats", cmd_stats, "totals and per-user figures"),
                             ("nodes", cmd_nodes, "this node and its peers"),
                             ("status", cmd_status, "the daemon's state")):
        x = sub.add_parser(name, parents=[common], help=what)
        x.set_defaults(func=func)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    args = parser().parse_args(argv)
    args.user_bus = getattr(args, "user_bus", False)
    args.json = getattr(args, "json", False)
    args.bus_address = getattr(args, "bus_address", None)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return args


async def _run(args: argparse.Namespace) -> int:
    client = Client(args.user_bus, args.bus_address)
    await client.connect()
    try:
        return await args.func(client, args)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    try:
        return asyncio.run(_run(args))
    except UsageError as e:
        print(f"schedctl: {e}", file=sys.stderr)
        return 2
    except Unreachable as e:
        hint = "systemctl --user status schedd" if args.user_bus else "systemctl status schedd"
        print(f"schedctl: {e}: is it running? try: {hint}", file=sys.stderr)
        return 1
    except DBusError as e:
        print(f"schedctl: {e.text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
