"""Waiting on jobs: wait (until they end, exiting with their status) and monitor (each
JobStateChanged as it arrives). Both subscribe before they look, so no change is missed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Callable

from schedd.protocol import TERMINAL
from schedctl import render
from schedctl.client import Client
from schedctl.commands.common import RECHECK_S, job_id

EXIT_TIMEOUT = 124  # as timeout(1)
PROGRESS_EVERY_S = 1.0  # wait's progress lines when not on a terminal


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    w = sub.add_parser("wait", parents=[common], help="wait for jobs to end; exit with the job's status")
    w.add_argument("ids", nargs="+", type=job_id, metavar="ID")
    w.add_argument("--timeout", type=seconds, metavar="SECONDS", help=f"give up after this long (exit {EXIT_TIMEOUT})")
    w.set_defaults(func=cmd_wait)

    mo = sub.add_parser("monitor", parents=[common], help="print JobStateChanged signals as they arrive")
    mo.add_argument("ids", nargs="*", type=job_id, metavar="ID", help="only these jobs (default: all)")
    mo.add_argument("--count", type=int, metavar="N", help="exit after N changes")
    mo.set_defaults(func=cmd_monitor)


def seconds(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        n = -1.0
    if not 0 <= n < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return n


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
