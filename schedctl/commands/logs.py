"""`schedctl logs [-f]`: a job's output from its file here or, for a job on another node, through
the daemon; -f keeps printing until the job ends (schedctl.logs holds the readers and sinks)."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from schedd.protocol import TERMINAL
from schedctl.client import Client
from schedctl.commands.common import RECHECK_S, job_id
from schedctl.errors import Failure
from schedctl.logs.local import Tail, read_file
from schedctl.logs.remote import RemoteTail, is_remote
from schedctl.logs.sinks import JsonLines, JsonWhole, Raw, Sink

FOLLOW_POLL_S = 0.1  # logs -f reads the file this often, like tail -f


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    lg = sub.add_parser("logs", parents=[common], help="a job's output, read from its file")
    lg.add_argument("id", type=job_id, metavar="ID")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    lg.add_argument("--stderr", action="store_true", help="StderrPath instead of StdoutPath")
    lg.set_defaults(func=cmd_logs)


async def cmd_logs(c: Client, args: argparse.Namespace) -> int:
    if args.follow:
        await c.subscribe()  # before reading the state: an end in between still arrives as a signal
    job = await c.get_job(args.id)
    path = job["StderrPath" if args.stderr else "StdoutPath"]
    remote = await is_remote(c, job)
    if not path and not remote:
        if job.get("User") != os.getuid():
            raise Failure(f"job {args.id} belongs to {job.get('UserName') or job.get('User')}: its output paths "
                          f"are shown only to its owner and root (private_data)")
        raise Failure(f"job {args.id} has no {'StderrPath' if args.stderr else 'StdoutPath'}")
    tail = RemoteTail(c, args.id, args.stderr) if remote else Tail(path)
    if args.follow:
        return await _follow(c, args.id, job["State"], tail, JsonLines(args.id, path) if args.json else Raw())
    if remote:
        sink = JsonWhole(job["Id"], path, job["Node"]) if args.json else Raw()
        await tail.pump(sink.write)
        sink.finish()
        return 0
    return _print_log(job, path, args.json)


def _print_log(job: dict[str, Any], path: str, as_json: bool) -> int:
    """The whole file as it is now (streamed in chunks; one JSON object with --json)."""
    sink = JsonWhole(job["Id"], path) if as_json else Raw()
    if read_file(job, path, sink.write):
        sink.finish()
    return 0


async def _follow(c: Client, job_id: int, state: str, tail: Tail | RemoteTail, sink: Sink) -> int:
    """Print new output until the job is terminal, then what is left (nothing written before the end is lost:
    the file is read to its end after the terminal state is known)."""
    loop = asyncio.get_running_loop()
    recheck = loop.time() + RECHECK_S
    next_read = 0.0
    while state not in TERMINAL:
        if loop.time() >= next_read:
            await tail.pump(sink.write)
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
    if isinstance(tail, RemoteTail):
        # The origin hears of the end a moment after the node writes the last bytes: one more read.
        await tail.pump(sink.write)
    await tail.pump(sink.write)
    sink.finish()
    return 0
