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


# -- the shape index: a pass costs O(shapes), and starts exactly what the walk of the whole queue did --

import heapq  # noqa: E402
import random  # noqa: E402

from schedd.core.scheduler import Running as _Running  # noqa: E402


def test_a_backfill_pass_after_a_change_looks_at_shapes_not_at_the_queue():
    s, _, _ = blocked(100_000)  # 100,000 jobs of one shape behind the blocked head
    for i in range(3):  # and a few other shapes
        s.enqueue(job(200_000 + i, 3 + i, 10))
    assert s.schedule(now=0) == []
    for t in range(1, 20):  # each pass follows a change (the queue's version moves): none is skipped as idle
        s.enqueue(job(300_000 + t, 2, 10))
        before = s.examined
        assert s.schedule(now=t) == []
        assert s.examined - before <= 8, s.examined - before


def test_a_first_fit_pass_behind_a_blocked_head_looks_at_shapes_not_at_the_queue():
    led = Ledger([0, 1, 2, 3], 1 << 34, [])
    led.allocate(3, MIB, 0)
    s = Scheduler(led, "first-fit")
    s.enqueue(job(1, 4, 0))
    for i in range(2, 100_002):
        s.enqueue(job(i, 2, 10))
    s.enqueue(job(100_002, 1, 0))  # the only one that fits, far down the queue
    before = s.examined
    assert [j.id for j, _ in s.schedule(now=0)] == [100_002]
    assert s.examined - before <= 6
    assert len(s) == 100_001 and [j.id for j in s.head(2)] == [1, 2]


class _Walk(Scheduler):
    """The scheduler as it was: every pass behind a blocked head walks the sorted queue (the reference)."""

    def schedule(self, now: int = 0):
        started, skipped, heap = [], [], self._heap
        while heap and self.ledger.free_cpus:
            entry = heap[0]
            j = self._live(entry)
            if j is None:
                self._entries.discard(heapq.heappop(heap))
                continue
            alloc = self.ledger.allocate(j.spec.cpus, j.spec.memory, j.spec.gpus)
            if alloc is not None:
                self._take(entry, j)
                started.append((j, alloc))
            elif self.policy == "strict":
                break
            elif self.policy == "backfill":
                started += self._walk_backfill(j, now, started)
                break
            else:
                skipped.append(heapq.heappop(heap))
        for entry in skipped:
            heapq.heappush(heap, entry)
        return started

    def _walk_backfill(self, head, now, started):
        planned = self.reservation(head, now, started)
        if planned is None:
            return []
        shadow, extra = planned
        out = []
        for entry in sorted(self._heap):
            j = self._live(entry)
            if j is None or j is head:
                continue
            lim = j.spec.runtime_max_usec
            if not lim or not self.ledger.fits(j.spec.cpus, j.spec.memory, j.spec.gpus):
                continue
            ends_in_time = now + lim <= shadow
            if not ends_in_time and not extra.holds(j):
                continue
            alloc = self.ledger.allocate(j.spec.cpus, j.spec.memory, j.spec.gpus)
            if alloc is None:
                continue
            if not ends_in_time:
                extra.take(j)
            self._take(entry, j)
            out.append((j, alloc))
            if not self.ledger.free_cpus:
                break
        return out


def _random_job(rng: random.Random, i: int) -> Job:
    spec = JobSpec(command=["true"], name="t", cpus=rng.choice([1, 1, 2, 3, 8]), memory=rng.choice([1, 2, 4, 16]) * MIB,
                   gpus=rng.choice([0, 0, 0, 1]), runtime_max_usec=rng.choice([0, 10, 100, 1000]),
                   priority=rng.choice([0, 0, 5]))
    return Job(id=i, spec=spec)


def test_the_shape_index_starts_exactly_what_the_walk_of_the_queue_started():
    for seed in range(150):
        rng = random.Random(seed)
        policy = ("strict", "first-fit", "backfill")[seed % 3]
        sides = []
        for cls in (Scheduler, _Walk):
            led = Ledger(list(range(8)), 24 * MIB, [0, 1])
            runs: list[tuple[_Running, object]] = []
            sides.append((cls(led, policy, running=lambda runs=runs: [r for r, _ in runs]), led, runs))
        jobs: dict[int, Job] = {}
        s_jobs: dict[int, dict[int, Job]] = {id(s): {} for s, _, _ in sides}
        held: list[int] = []
        now = 0
        for step in range(60):
            op = rng.random()
            now += rng.choice([0, 10, 90, 100])
            if op < 0.5:
                jid = len(jobs) + 1
                jobs[jid] = _random_job(rng, jid)
                for s, _, _ in sides:
                    s_jobs[id(s)][jid] = Job(id=jid, spec=jobs[jid].spec)
                    s.enqueue(s_jobs[id(s)][jid])
            elif op < 0.6 and jobs:
                jid = rng.choice(list(jobs))
                got = {s.dequeue(jid) is not None for s, _, _ in sides}
                assert len(got) == 1
                if got == {True}:
                    held.append(jid)
            elif op < 0.7 and held:
                jid = held.pop(rng.randrange(len(held)))  # released (maybe with a new priority): old entries remain
                if rng.random() < 0.5:
                    jobs[jid].spec.priority = rng.choice([0, 3, 5])
                for s, _, _ in sides:
                    s.enqueue(s_jobs[id(s)][jid])
            elif op < 0.85:
                for _, led, runs in sides:
                    if runs:
                        _, alloc = runs.pop(0)
                        led.release(alloc)
            picks = []
            for s, led, runs in sides:
                started = s.schedule(now=now)
                picks.append([(j.id, a.cpus, a.gpus) for j, a in started])
                for j, a in started:
                    lim = j.spec.runtime_max_usec
                    runs.append((_Running(now + lim if lim else None, len(a.cpus), a.memory, len(a.gpus)), a))
            assert picks[0] == picks[1], (seed, policy, step, picks)
            assert sorted(j.id for j in sides[0][0].queued()) == sorted(j.id for j in sides[1][0].queued())
