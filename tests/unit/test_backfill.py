"""EASY backfill: later jobs start only if they cannot delay the blocked head job."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.core.ledger import Allocation, Ledger
from schedd.core.model import Job, JobSpec
from schedd.core.scheduler import Running, Scheduler

GiB = 1 << 30
S = 1_000_000  # µs per second
NOW = 1_000 * S


def job(job_id: int, cpus: int, limit_s: int = 0, priority: int = 0) -> Job:
    return Job(id=job_id, spec=JobSpec(command=["x"], name=f"j{job_id}", cpus=cpus, memory=GiB,
                                       priority=priority, runtime_max_usec=limit_s * S))


class Node:
    """A 4-CPU node with a ledger, a scheduler and the running jobs it reports."""

    def __init__(self, policy: str = "backfill", cpus: int = 4) -> None:
        self.ledger = Ledger(list(range(cpus)), 64 * GiB)
        self.running: dict[int, tuple[int | None, Allocation]] = {}
        self.sched = Scheduler(self.ledger, policy, running=lambda: [
            Running(end, len(a.cpus), a.memory, len(a.gpus)) for end, a in self.running.values()])

    def occupy(self, cpus: int, ends_in_s: int | None) -> None:
        alloc = self.ledger.allocate(cpus, GiB)
        self.running[-len(self.running) - 1] = (None if ends_in_s is None else NOW + ends_in_s * S, alloc)

    def submit(self, *jobs: Job) -> None:
        for j in jobs:
            self.sched.enqueue(j)

    def start(self, now: int = NOW) -> list[int]:
        started = self.sched.schedule(now)
        for j, a in started:
            self.running[j.id] = (now + j.spec.runtime_max_usec if j.spec.runtime_max_usec else None, a)
        return [j.id for j, _ in started]


def test_short_job_backfills_before_the_shadow_time():
    n = Node()
    n.occupy(3, ends_in_s=100)  # 1 CPU free; the 4-CPU head must wait 100 s
    n.submit(job(1, cpus=4, limit_s=50), job(2, cpus=1, limit_s=60))
    assert n.start() == [2]  # ends at +60 s, before the head's reservation at +100 s


def test_job_that_would_delay_the_head_does_not_backfill():
    n = Node()
    n.occupy(3, ends_in_s=100)
    n.submit(job(1, cpus=4, limit_s=50), job(2, cpus=1, limit_s=101))
    assert n.start() == []


def test_job_without_a_time_limit_never_backfills():
    n = Node()
    n.occupy(3, ends_in_s=100)
    n.submit(job(1, cpus=4, limit_s=50), job(2, cpus=1))
    assert n.start() == []


def test_no_reservation_when_the_head_waits_on_a_job_without_a_limit():
    n = Node()
    n.occupy(3, ends_in_s=None)
    n.submit(job(1, cpus=4, limit_s=50), job(2, cpus=1, limit_s=1))
    assert n.start() == []  # nothing can be promised to the head, so nothing jumps it


def test_long_job_may_use_what_the_head_will_not_need():
    n = Node()
    n.occupy(2, ends_in_s=100)  # 2 free now; at +100 s 4 free and the head needs 3 -> 1 spare
    n.submit(job(1, cpus=3, limit_s=50), job(2, cpus=1, limit_s=1000), job(3, cpus=1, limit_s=1000))
    assert n.start() == [2]  # the spare CPU, once; job 3 would take one the head needs


def test_head_starts_once_the_blockers_end():
    n = Node()
    n.occupy(3, ends_in_s=100)
    n.submit(job(1, cpus=4, limit_s=50), job(2, cpus=1, limit_s=60))
    assert n.start() == [2]
    for k in list(n.running):
        n.ledger.release(n.running.pop(k)[1])
    assert n.start(NOW + 100 * S) == [1]


def test_backfill_without_limits_is_strict():
    for policy in ("strict", "backfill"):
        n = Node(policy)
        n.occupy(3, ends_in_s=None)
        n.submit(job(1, cpus=4), job(2, cpus=1), job(3, cpus=1))
        assert n.start() == []


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 20), st.integers(-1, 1)), min_size=1, max_size=25),
       st.lists(st.tuples(st.integers(1, 2), st.integers(1, 20)), max_size=3))
def test_backfill_never_delays_the_head(specs, running):
    """Simulate to the end with a fake clock: the first blocked head starts no later than its
    reservation said, i.e. no later than it would have with nothing backfilled."""
    n = Node()
    for cpus, ends in running:
        if n.ledger.free_cpus >= cpus:
            n.occupy(cpus, ends)
    jobs = [job(i + 1, cpus, limit, prio) for i, (cpus, limit, prio) in enumerate(specs)]
    n.submit(*jobs)
    now, promised, head_started = NOW, None, {}
    for _ in range(500):
        for jid in n.start(now):
            head_started[jid] = now
        if promised is None:
            queue = list(n.sched.ordered())
            if queue:
                plan = n.sched.reservation(queue[0], now)
                if plan is not None:
                    promised = (queue[0].id, plan[0])
        if not len(n.sched):
            break
        ends = sorted(e for e, _ in n.running.values() if e is not None and e > now)
        if not ends:
            break
        now = ends[0]
        for k, (e, a) in list(n.running.items()):
            if e is not None and e <= now:
                n.ledger.release(a)
                del n.running[k]
    if promised is not None:
        head, at = promised
        assert head in head_started and head_started[head] <= at
