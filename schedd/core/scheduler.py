"""The queue and the placement decision: pure logic, no I/O, so a simulation can drive it.

Order: priority descending, then id ascending (ids are handed out in submit
order, so this is FIFO within a priority, and a requeued job keeps its place).

Policies (``[scheduler] policy``; backfill is the default):
- ``strict`` (Slurm's sched/builtin): jobs start in queue order; when
  the head does not fit, nothing behind it starts. A big job is never starved
  by a stream of small ones.
- ``first-fit`` (seed Mini-SLURM): every job that fits starts, in queue order;
  better utilisation, but a big job can wait for ever.
- ``backfill`` (EASY, Slurm's sched/backfill): as strict, but when the head job
  is blocked it gets a reservation at the earliest time the running jobs' time
  limits guarantee it will fit (the shadow time); a later job may start now if
  its own time limit ends before that, or if it only uses what the head will not
  need then. A job without a time limit never starts ahead of a blocked one, and
  when any running job that the head waits for has no limit, there is no
  reservation to plan around, so nothing backfills (it degrades to strict).

Time comes in as an argument (µs), so a simulation can drive it with a fake clock.

Cost: besides the queue's heap, queued jobs are indexed by shape (CPUs, memory, GPUs, time
limit), one heap per shape. Whether a job may start behind a blocked head (backfill) or after
one (first-fit) depends only on its shape, and resources only shrink during a pass, so "the next
job in queue order that fits" is the earliest of the shapes' heads that fit: a pass costs
O(shapes x starts x log n), never a walk or sort of the whole queue.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from schedd.core.ledger import Allocation, Ledger
from schedd.core.model import Job

POLICIES = ("strict", "first-fit", "backfill")


@dataclass(frozen=True, slots=True)
class Running:
    """What the backfill planner knows of a running job: when it ends at the latest, and what it holds."""

    end: int | None  # µs since the epoch; None: unknown (no time limit, or suspended)
    cpus: int
    memory: int
    gpus: int = 0


Shape = tuple[int, int, int, int]  # CPUs, memory, GPUs, time limit (µs; 0: none)


def _shape(job: Job) -> Shape:
    s = job.spec
    return (s.cpus, s.memory, s.gpus, s.runtime_max_usec)


@dataclass(slots=True)
class _Vec:
    cpus: int
    memory: int
    gpus: int

    def holds(self, job: Job) -> bool:
        s = job.spec
        return s.cpus <= self.cpus and s.memory <= self.memory and s.gpus <= self.gpus

    def holds_shape(self, shape: Shape) -> bool:
        return shape[0] <= self.cpus and shape[1] <= self.memory and shape[2] <= self.gpus

    def take(self, job: Job) -> None:
        self.cpus -= job.spec.cpus
        self.memory -= job.spec.memory
        self.gpus -= job.spec.gpus


class Scheduler:
    def __init__(self, ledger: Ledger, policy: str = "strict",
                 running: Callable[[], Iterable[Running]] = lambda: ()) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        self.ledger = ledger
        self.policy = policy
        self.running = running  # the jobs holding resources now (for backfill's reservation)
        self._heap: list[tuple[int, int]] = []
        self._queued: dict[int, Job] = {}
        self._entries: set[tuple[int, int]] = set()  # what is in the heap, live or stale
        self._shapes: dict[Shape, list[tuple[int, int]]] = {}  # the same entries, one heap per shape
        self._in_shapes: set[tuple[int, int]] = set()  # what is in a shape's heap, live or stale
        self.examined = 0  # shape heads looked at by passes (a measure of a pass's cost)
        # Backfill: the inputs of the last pass behind a blocked head that started nothing. The same
        # inputs later start nothing either (time only makes fewer jobs end before the shadow), so
        # passes after events that change none of them (a job held, a job ending elsewhere) skip
        # the walk through the queue.
        self._version = 0  # bumped whenever the queue changes
        self._idle: tuple | None = None

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._queued

    def queued(self) -> Iterable[Job]:
        """The jobs waiting to start, in no particular order (what they ask for is not free for newcomers)."""
        return self._queued.values()

    def dequeue(self, job_id: int) -> Job | None:
        """Forget a queued job (cancel, hold); its heap entry is dropped lazily."""
        self._version += 1
        return self._queued.pop(job_id, None)

    def _live(self, entry: tuple[int, int]) -> Job | None:
        job = self._queued.get(entry[1])
        return job if job is not None and -job.spec.priority == entry[0] else None

    def _head(self) -> tuple[tuple[int, int], Job] | None:
        """The heap's first live entry and its job (stale entries dropped on the way), or None."""
        heap = self._heap
        while heap:
            job = self._live(heap[0])
            if job is not None:
                return heap[0], job
            self._entries.discard(heapq.heappop(heap))
        return None

    def schedule(self, now: int = 0) -> list[tuple[Job, Allocation]]:
        """Decide which queued jobs start now and take their resources from the ledger."""
        started: list[tuple[Job, Allocation]] = []
        while self.ledger.free_cpus and (top := self._head()) is not None:
            entry, job = top
            alloc = self.ledger.allocate(job.spec.cpus, job.spec.memory, job.spec.gpus)
            if alloc is not None:
                self._take(entry, job)
                started.append((job, alloc))
            elif self.policy == "strict":
                break
            elif self.policy == "backfill":
                started += self._backfill(job, now, started)
                break
            else:
                started += self._first_fit()
                break
        return started

    def _take(self, entry: tuple[int, int], job: Job) -> None:
        if self._heap and self._heap[0] == entry:
            self._entries.discard(heapq.heappop(self._heap))
        # else: the entry stays in the heap, stale, and is dropped when it reaches the top
        shape = _shape(job)
        h = self._shapes.get(shape)
        if h and self._shape_head(shape, h) == entry:  # stale entries above it go first (each popped once)
            self._in_shapes.discard(heapq.heappop(h))
        del self._queued[job.id]
        self._version += 1

    def _shape_head(self, shape: Shape, h: list[tuple[int, int]]) -> tuple[int, int] | None:
        """The first live entry of a shape's heap (stale ones above it dropped), or None."""
        while h:
            entry = h[0]
            job = self._live(entry)
            if job is not None and _shape(job) == shape:
                return entry
            self._in_shapes.discard(heapq.heappop(h))
        return None

    def _earliest(self, usable, dead: set[Shape]) -> tuple[tuple[int, int], Shape] | None:
        """The first job in queue order whose shape is usable(shape) now; shapes found unusable go in
        `dead` (resources only shrink during a pass: they stay unusable until it ends)."""
        best: tuple[tuple[int, int], Shape] | None = None
        empty = []
        for shape, h in self._shapes.items():
            if shape in dead:
                continue
            self.examined += 1
            if not usable(shape):
                dead.add(shape)
                continue
            entry = self._shape_head(shape, h)
            if entry is None:
                empty.append(shape)
            elif best is None or entry < best[0]:
                best = (entry, shape)
        for shape in empty:
            dead.add(shape)
            del self._shapes[shape]
        return best

    def _fill(self, usable: Callable[[Shape], bool],
              taken: Callable[[Job, Shape], None] | None = None) -> list[tuple[Job, Allocation]]:
        """While CPUs are free: the earliest queued job of a usable shape the ledger can allocate
        (taken: told of each before it leaves the queue)."""
        led, out, dead = self.ledger, [], set()
        while led.free_cpus:
            found = self._earliest(usable, dead)
            if found is None:
                break
            entry, shape = found
            job = self._queued[entry[1]]
            alloc = led.allocate(shape[0], shape[1], shape[2])
            if alloc is None:
                dead.add(shape)
                continue
            if taken is not None:
                taken(job, shape)
            self._take(entry, job)
            out.append((job, alloc))
        return out

    def _first_fit(self) -> list[tuple[Job, Allocation]]:
        """Behind a head that does not fit: every later job that fits, in queue order."""
        led = self.ledger
        return self._fill(lambda sh: led.fits(sh[0], sh[1], sh[2]))

    def reservation(self, head: Job, now: int, started: Iterable[tuple[Job, Allocation]] = ()) -> tuple[int, _Vec] | None:
        """(shadow time, what is left over then) for the blocked head job, or None when unknowable."""
        free = _Vec(self.ledger.free_cpus, self.ledger.free_memory, self.ledger.free_gpus)
        # Jobs without a known end are taken to run for ever: the head never counts on their resources.
        ends = [r for r in self.running() if r.end is not None]
        for job, alloc in started:
            lim = job.spec.runtime_max_usec
            if lim:
                ends.append(Running(now + lim, len(alloc.cpus), alloc.memory, len(alloc.gpus)))
        ends.sort(key=lambda r: r.end)
        for r in ends:
            free.cpus += r.cpus
            free.memory += r.memory
            free.gpus += r.gpus
            if free.holds(head):
                free.take(head)
                return max(r.end, now), free
        return None  # it waits on jobs without a time limit: no reservation can be promised

    def _backfill(self, head: Job, now: int, started: list[tuple[Job, Allocation]]) -> list[tuple[Job, Allocation]]:
        """EASY backfill behind a blocked head job: start later jobs that cannot delay it."""
        planned = self.reservation(head, now, started)
        if planned is None:
            return []
        shadow, extra = planned
        led = self.ledger
        key = (head.id, shadow, extra.cpus, extra.memory, extra.gpus, led.free_cpus, led.free_memory, led.free_gpus,
               self._version)
        if key == self._idle:
            return []

        def usable(sh: Shape) -> bool:
            lim = sh[3]
            if not lim or not led.fits(sh[0], sh[1], sh[2]):
                return False
            return now + lim <= shadow or extra.holds_shape(sh)

        def taken(job: Job, sh: Shape) -> None:
            if now + sh[3] > shadow:  # runs past the shadow: on what the head will not need
                extra.take(job)

        # The head is not a candidate: out of its shape's heap for the pass (it is that heap's first).
        head_shape = _shape(head)
        hh = self._shapes.get(head_shape)
        held_back = heapq.heappop(hh) if hh and self._shape_head(head_shape, hh) == (-head.spec.priority, head.id) \
            else None
        try:
            out = self._fill(usable, taken)
        finally:
            if held_back is not None:
                self._shapes.setdefault(head_shape, [])
                heapq.heappush(self._shapes[head_shape], held_back)
        self._idle = None if out else key
        return out

    def enqueue(self, job: Job) -> None:
        self._queued[job.id] = job
        self._version += 1
        entry = (-job.spec.priority, job.id)
        if entry not in self._entries:  # a held-then-released job may still have its old entry
            self._entries.add(entry)
            heapq.heappush(self._heap, entry)
        if entry not in self._in_shapes:
            self._in_shapes.add(entry)
            heapq.heappush(self._shapes.setdefault(_shape(job), []), entry)

    def ordered(self) -> Iterator[Job]:
        """The queue in the order it will run (for display)."""
        for entry in sorted(self._heap):
            job = self._live(entry)
            if job is not None:
                yield job

    def head_fits(self) -> bool:
        """Whether the first job in queue order fits the free resources now (metrics: a queue that does not
        move while this holds is stuck). O(1) but for the stale entries it drops, as schedule() would."""
        top = self._head()
        return top is not None and self.ledger.fits(top[1].spec.cpus, top[1].spec.memory, top[1].spec.gpus)

    def head(self, n: int) -> list[Job]:
        """The first n jobs in the order the scheduler will consider them, without sorting the whole heap."""
        k = n
        while True:
            entries = heapq.nsmallest(k, self._heap)
            live = [j for j in map(self._live, entries) if j is not None]
            if len(live) >= n or k >= len(self._heap):
                return live[:n]
            k *= 2
