"""The job verbs: queue (list), show, and cancel/hold/release/suspend/resume/requeue, each
one call per job or one listing, rendered by schedctl.render."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from dbus_fast.errors import DBusError

from schedd.protocol import STATES, TERMINAL
from schedctl import render
from schedctl.client import Client
from schedctl.commands.common import emit, global_options, job_id, user_id
from schedctl.errors import UsageError

ACTIVE_STATES = [s for s in STATES if s not in TERMINAL]


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    q = sub.add_parser("queue", aliases=["list"], parents=[global_options(bus_user=False)], help="list jobs")
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
        if name in ARRAY_VERBS:
            x.add_argument("ids", nargs="+", type=array_target, metavar="ID|ARRAY_*")
            x.add_argument("--array", dest="whole", action="store_true",
                           help="each ID names an array (its first job id): act on every task of it, "
                                "also those not started (as ID_* or ID_[*] does)")
        else:
            x.add_argument("ids", nargs="+", type=job_id, metavar="ID")
        x.set_defaults(func=cmd_action)


ARRAY_VERBS = ("cancel", "hold", "release")


def array_target(text: str) -> tuple[int, bool]:
    """'12' -> (12, False): that job; '12_*' or '12_[*]' -> (12, True): the whole array 12, as
    Slurm's scancel 12 does (here 12 alone stays the one job, which is also the array's first task)."""
    head, sep, tail = text.partition("_")
    if sep and tail not in ("*", "[*]"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a job id, or ARRAY_* for every task of an array (a task is named by its own job id)")
    return job_id(head), bool(sep)


def prepare_queue(args: argparse.Namespace) -> None:
    """Which states and whose jobs (a name becomes a uid here, the daemon filters by uid)."""
    args.states = None if args.all else ACTIVE_STATES
    if args.state:
        args.states = [s.strip().upper() for s in args.state.split(",") if s.strip()]
        bad = [s for s in args.states if s not in STATES]
        if bad or not args.states:
            raise UsageError(f"--state {args.state!r}: states are {', '.join(STATES)}")
    args.uid = os.getuid() if args.me else (user_id(args.owner) if args.owner else None)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")


HEAD = 50  # waiting jobs the default view shows: the head of the queue, whatever its length
RUNNING_STATES = ["RUNNING", "SUSPENDED"]
WAITING_STATES = ["PENDING", "HELD"]


async def cmd_queue(c: Client, args: argparse.Namespace) -> int:
    """The default view is every running job and the head of the queue (a million pending jobs
    are no reading for a person); --all, --state and --limit list exactly what they select, and
    --json streams every selected job, a page at a time."""
    if args.all_nodes:
        jobs = await c.list_jobs(args.states, args.uid, args.limit, all_nodes=True)
        emit(args, jobs, None if args.json else render.queue(jobs, render.is_tty(), fold=not args.expand))
    elif args.json:
        await _stream_json(c, args)
    elif args.all or args.state or args.limit is not None:
        await _stream_table(c, args)
    else:
        await _head(c, args)
    return 0


async def _head(c: Client, args: argparse.Namespace) -> None:
    fold = not args.expand
    cols = render.QUEUE_PROPERTIES
    running = [j async for page in c.job_pages(RUNNING_STATES, args.uid, properties=cols) for j in page]
    waiting = [j async for page in c.job_pages(WAITING_STATES, args.uid, HEAD + 1, fold=fold, properties=cols)
               for j in page]
    count: int | None = len(waiting)
    if count > HEAD:
        waiting = waiting[:HEAD]
        # The Manager counts every user's waiting jobs; a per-user count would need a scan.
        count = None if args.uid is not None else max(HEAD + 1, (await c.properties())["PendingJobs"])
    footer = render.head_footer(len(running), len(waiting), count)
    print(render.queue(running + waiting, render.is_tty(), fold=not args.expand, footer=footer))


async def _stream_table(c: Client, args: argparse.Namespace) -> None:
    out, tty, n = render.StreamTable(render.QUEUE_HEADERS, render.QUEUE_RIGHT), render.is_tty(), 0
    async for page in c.job_pages(args.states, args.uid, args.limit, fold=not args.expand,
                                  properties=render.QUEUE_PROPERTIES):
        n += len(page)
        sys.stdout.write(out.page(render.queue_rows(page, tty, fold=not args.expand)) + "\n")
        sys.stdout.flush()
    print(("\n" if n else "") + f"{render.plural(n, 'job')} listed.")


async def _stream_json(c: Client, args: argparse.Namespace) -> None:
    """The same JSON array a single dump would print, written as the pages come."""
    sep = "["
    async for page in c.job_pages(args.states, args.uid, args.limit):
        for j in page:
            sys.stdout.write(sep + json.dumps(j))
            sep = ", "
        sys.stdout.flush()
    sys.stdout.write("[]\n" if sep == "[" else "]\n")


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
    """cancel/hold/release/suspend/resume/requeue: one Manager call per id; a refusal does not stop the rest.
    With --array or ID_* (cancel, hold, release): CancelArray/HoldArray/ReleaseArray of each array."""
    member = args.command_name.capitalize()
    results = []
    for target in args.ids:
        job_id, whole = target if isinstance(target, tuple) else (target, False)
        whole = whole or getattr(args, "whole", False)
        try:
            await c.call(f"{member}Array" if whole else member, "t", [job_id])
            results.append({"Id": job_id, "Ok": True})
        except DBusError as e:
            print(f"schedctl: {args.command_name} {job_id}: {e.text}", file=sys.stderr)
            results.append({"Id": job_id, "Ok": False, "Error": e.type, "Message": e.text})
    if args.json:
        print(json.dumps(results))
    return 0 if all(r["Ok"] for r in results) else 1
