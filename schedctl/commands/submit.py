"""`schedctl submit`: the Submit a{sv} built from a job file, the options and the caller's
environment, checked before the first call; --array makes it one Submit with ArrayTasks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from dbus_fast import Variant
from dbus_fast.errors import DBusFastError

from schedd.protocol import SPEC_KEYS, TaskRanges, job_file_to_spec, parse_duration, parse_size
from schedctl.client import Client
from schedctl.commands.common import emit
from schedctl.errors import UsageError


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
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
    s.add_argument("--container", metavar="IMAGE",
                   help="run COMMAND inside IMAGE, an image in the node's local store (podman images), "
                        "as you, in the job's scope")
    s.add_argument("--file", help="a JSON job file ('-': stdin); options given here override it")
    s.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_submit, prepare=prepare_submit)


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
             "Node": args.node, "Container": args.container, "WorkingDirectory": args.chdir, "StdoutPath": args.output, "StderrPath": args.error}
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


def prepare_submit(args: argparse.Namespace) -> None:
    try:
        cwd = os.getcwd()
    except OSError as e:
        raise UsageError(f"cannot tell the current directory ({e.strerror}); give --chdir") from None
    args.spec = build_spec(args, dict(os.environ), cwd)
    args.tasks = _convert_array(args.array) if args.array else None


def _convert_array(text: str) -> TaskRanges:
    """Checked here (the daemon checks again, with its max_array_tasks), never expanded."""
    try:
        return TaskRanges.parse(text)
    except ValueError as e:
        raise UsageError(f"--array {e}") from None


IDS_IN_JSON = 10_000  # --json lists the ids of an array up to this many tasks (they are first..last anyway)


async def cmd_submit(c: Client, args: argparse.Namespace) -> int:
    if args.tasks is not None:
        # One Submit for the whole array (ArrayTasks): the daemon keeps it as one record and makes
        # tasks into jobs as they can start; task i (in id order) is job first + i.
        first, _ = await c.submit({**args.spec, "ArrayTasks": Variant("s", args.tasks.format())})
        n = args.tasks.count
        cap = f", at most {args.tasks.cap} running at once" if args.tasks.cap else ""
        out = {"id": first, "ArrayJobId": first, "Tasks": n, "LastId": first + n - 1}
        if n <= IDS_IN_JSON:
            out["ids"] = list(range(first, first + n))
        emit(args, out, f"Submitted array job {first}: {n} tasks (jobs {first}-{first + n - 1}){cap}")
        return 0
    job_id, path = await c.submit(args.spec)
    emit(args, {"id": job_id, "path": path}, f"Submitted job {job_id}")
    return 0
