"""A backfill pass behind a blocked head does not walk the whole queue again when nothing it
depends on changed -- and still starts what a change lets start."""

from __future__ import annotations

import time

from schedd.core.ledger import Ledger
from schedd.core.model import Job, JobSpec
from schedd.core.scheduler import Running, Scheduler

MIB = 1 << 20


def job(i: int, cpus: int, lim: int) -> Job:
    return Job(id=i, spec=JobSpec(command=["true"], name="t", cpus=cpus, memory=MIB, runtime_max_usec=lim))


def blocked(n: int) -> tuple[Scheduler, Ledger, list]:
    """4 CPUs, 3 held by a run ending at t=1000; the head wants all 4; n jobs of 2 CPUs behind it."""
    led = Ledger([0, 1, 2, 3], 1 << 34, [])
    running = [Running(1000, 3, MIB)]
    running.append(led.allocate(3, MIB, 0))
    s = Scheduler(led, "backfill", running=lambda: running[:1])
    s.enqueue(job(1, 4, 0))
    for i in range(2, n + 2):
        s.enqueue(job(i, 2, 10))
    return s, led, running


def test_a_repeated_idle_pass_is_cheap():
    s, _, _ = blocked(50_000)
    t0 = time.perf_counter()
    assert s.schedule(now=0) == []
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(100):
        assert s.schedule(now=5) == []
    again = (time.perf_counter() - t0) / 100
    assert again < first / 10, (first, again)


def test_what_a_change_allows_still_starts_after_idle_passes():
    s, led, running = blocked(100)
    assert s.schedule(now=0) == [] and s.schedule(now=1) == []
    small = job(500, 1, 10)  # fits the free CPU and ends before the head's reservation
    s.enqueue(small)
    assert [j.id for j, _ in s.schedule(now=2)] == [500]
    assert s.schedule(now=3) == []
    s.dequeue(1)  # the head leaves: the next job is the head, but the free CPU is taken
    assert s.schedule(now=4) == []
    led.release(running.pop())  # the long run ends
    running.clear()
    assert [j.id for j, _ in s.schedule(now=5)] == [2]  # 3 CPUs free: one job of 2
