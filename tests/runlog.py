"""The verdict on a fault test's run log: what the jobs themselves wrote, judged against issue 18's rules.

Each job appends `start TOKEN NODE TIME` when its program starts and `end TOKEN NODE TIME` when it
ends normally (a stopped program writes no `end`). A pure function of those lines, the daemons'
final reports and the fault's window, so the rules can be unit tested without a cluster
(tests/unit/test_partition_verdict.py). Times are wall-clock seconds (the jobs' `date +%s.%N`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


@dataclass(frozen=True)
class Run:
    node: str
    start: float
    end: float | None = None  # None: its program never wrote `end` (stopped, or still running)


@dataclass(frozen=True)
class Fault:
    node: str  # the node that failed (stalled, cut off, killed, restarted)
    start: float
    end: float


@dataclass(frozen=True)
class Outcome:
    """One job as its origin reports it at the end, and what its current copy says."""

    token: str
    requeue: bool
    state: str
    reason: str = ""
    restarts: int = 0
    node: str = ""  # where the origin says it ran
    copy_state: str | None = None  # its current copy on `node` (None: none found, or node is the origin)
    acknowledged: bool = True  # Submit returned its id (else: a timed-out Submit the origin carried out later)
    origin_id: int = 0
    copies: tuple[str, ...] = ()  # every copy of it, as "NODE#ID/attempt STATE reason" (for the message)
    stale_end: float | None = None  # when its stale copy on the failed node ended there (its EndTime), if any


@dataclass
class Verdict:
    jobs: int = 0
    acknowledged: int = 0
    runs: int = 0
    doubles: list[str] = field(default_factory=list)  # "TOKEN: cause" for every job that ran more than once
    problems: list[str] = field(default_factory=list)

    def line(self, label: str) -> str:
        late = self.jobs - self.acknowledged
        causes = "; ".join(self.doubles) or "none"
        return (f"[{label}] jobs submitted {self.acknowledged} acknowledged (+{late} from timed-out Submits), "
                f"runs seen {self.runs}, double runs {len(self.doubles)} ({causes}), problems {len(self.problems)}")


def parse_log(text: str) -> dict[str, list[Run]]:
    """Runs per token, by start time: each `start` paired with the next `end` of that token on that node."""
    events: list[tuple[float, str, str, str]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[0] not in ("start", "end"):
            continue
        events.append((float(parts[3]), parts[0], parts[1], parts[2]))
    events.sort()
    runs: dict[str, list[Run]] = {}
    open_: dict[tuple[str, str], list[int]] = {}  # (token, node) -> indexes of its runs without an end yet
    for t, kind, token, node in events:
        lst = runs.setdefault(token, [])
        if kind == "start":
            open_.setdefault((token, node), []).append(len(lst))
            lst.append(Run(node, t))
        else:
            pending = open_.get((token, node))
            if pending:
                i = pending.pop(0)
                lst[i] = Run(node, lst[i].start, t)
            else:  # an end without its start (a torn log): counted as a run of its own
                lst.append(Run(node, t, t))
    return runs


def judge(outcomes: list[Outcome], runs: dict[str, list[Run]], fault: Fault, origin: str,
          grace: float = 5.0) -> Verdict:
    """Issue 18's rules, per job:
    - it ends (terminal at its origin), and the origin's state is its current copy's;
    - a COMPLETED job has a run that wrote `end` on the node the origin names;
    - it runs twice only if its first run was on the failed node (not the origin), started before
      the fault, Requeue=true and Restarts >= 1, and that stale run wrote no `end` later than
      `grace` s after the fault ended (its program was stopped once its node was heard again);
      never three times; a job started again after an `end` line is only ever that case; and the
      failed node starts no other job after the fault began before that stale copy ended there;
    - a Requeue=false job running on the failed node when it failed runs once and ends FAILED
      node-failure (or COMPLETED, when its origin truly learnt that it did)."""
    v = Verdict(jobs=len(outcomes), acknowledged=sum(o.acknowledged for o in outcomes))
    for o in outcomes:
        rs = runs.get(o.token, [])
        v.runs += len(rs)
        bad = v.problems.append

        def say(what: str) -> None:
            seen = [(r.node, round(r.start - fault.start, 2), None if r.end is None else round(r.end - fault.start, 2))
                    for r in rs]
            bad(f"{o.token} (a#{o.origin_id}, {'requeue' if o.requeue else 'no-requeue'}, {o.state} {o.reason}, node "
                f"{o.node or '-'}, restarts {o.restarts}, runs {seen}, copies {list(o.copies)}): {what}")

        if o.state not in TERMINAL:
            say("never ended (lost)")
            continue
        # FAILED node-failure is the truth only of a job on the node that failed (its copy may say otherwise).
        failed_by_node = o.state == "FAILED" and o.reason == "node-failure" and o.node == fault.node != origin
        if o.state == "FAILED" and o.reason == "node-failure" and not failed_by_node:
            say(f"FAILED node-failure, but {o.node or 'no node'} is not the node that failed")
        if o.node and o.node != origin and not failed_by_node:
            if o.copy_state is None:
                say(f"no copy on {o.node}, where its origin says it ran")
            elif o.copy_state != o.state:
                say(f"origin says {o.state}, its copy on {o.node} says {o.copy_state}")
        if o.state == "COMPLETED":
            if not rs:
                say("COMPLETED but its program never started")
            elif not any(r.node == o.node and r.end is not None for r in rs):
                say(f"COMPLETED on {o.node} but no run there wrote its end line")
        first = rs[0] if rs else None
        on_failed = (first is not None and first.node == fault.node and fault.node != origin
                     and first.start < fault.start)
        if first is not None and on_failed and (first.end is None or first.end > fault.start) and not o.requeue:
            if len(rs) > 1:
                say("Requeue=false, running on the failed node, yet run again")
            elif not failed_by_node and not (o.state == "COMPLETED" and first.end is not None):
                say("Requeue=false, running on the failed node: should end FAILED node-failure")
        if len(rs) < 2:
            continue
        if len(rs) > 2:
            cause = f"ran {len(rs)} times"
        elif not on_failed:
            where = "on the failed node" if first.node == fault.node else f"on {first.node}"
            when = "after the fault began" if first.start >= fault.start else "before the fault"
            cause = f"first run {where} {when}: not a requeue from a failed node"
            if first.end is not None and rs[1].start > first.end:
                cause += "; started again after its end line"
        elif not o.requeue:
            cause = "Requeue=false yet run again"
        elif o.restarts < 1:
            cause = "run again but Restarts=0"
        elif first.end is not None and first.end > fault.end + grace:
            cause = f"stale copy on {first.node} not stopped: it ended {first.end - fault.end:.1f}s after the fault"
        elif o.stale_end is not None and (early := [
                t for t, other in runs.items() if t != o.token
                for r in other if r.node == fault.node and fault.start <= r.start < o.stale_end]):
            cause = (f"{fault.node} started {len(early)} other job(s) ({early[0]}, ...) after the fault began, before "
                     f"it stopped this stale copy")
        else:
            v.doubles.append(f"{o.token}: requeued from {fault.node}, where it was running (allowed)")
            continue
        v.doubles.append(f"{o.token}: {cause}")
        say(cause)
    return v
