"""The queue and the placement decision: pure logic, no I/O, so a simulation can drive it.

Order: priority descending, then id ascending (ids are handed out in submit
order, so this is FIFO within a priority, and a requeued job keeps its place).

Policies:
- ``strict`` (default, Slurm's sched/builtin): jobs start in queue order; when
  the head does not fit, nothing behind it starts. A big job is never starved
  by a stream of small ones.
- ``first-fit`` (seed Mini-SLURM): every job that fits starts, in queue order;
  better utilisation, but a big job can wait for ever.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from .ledger import Allocation, Ledger
from .model import Job

POLICIES = ("strict", "first-fit")


class Scheduler:
    def __init__(self, ledger: Ledger, policy: str = "strict") -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        self.ledger = ledger
        self.policy = policy
        self._heap: list[tuple[int, int]] = []
        self._queued: dict[int, Job] = {}
        self._entries: set[tuple[int, int]] = set()  # what is in the heap, live or stale

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._queued

    def dequeue(self, job_id: int) -> Job | None:
        """Forget a queued job (cancel, hold); its heap entry is dropped lazily."""
        return self._queued.pop(job_id, None)

    def _live(self, entry: tuple[int, int]) -> Job | None:
        job = self._queued.get(entry[1])
        return job if job is not None and -job.spec.priority == entry[0] else None

    def schedule(self) -> list[tuple[Job, Allocation]]:
        """Decide which queued jobs start now and take their resources from the ledger."""
        started: list[tuple[Job, Allocation]] = []
        skipped: list[tuple[int, int]] = []
        heap = self._heap
        while heap and self.ledger.free_cpus:
            entry = heap[0]
            job = self._live(entry)
            if job is None:
                self._entries.discard(heapq.heappop(heap))
                continue
            alloc = self.ledger.allocate(job.spec.cpus, job.spec.memory, job.spec.gpus)
            if alloc is not None:
                self._entries.discard(heapq.heappop(heap))
                del self._queued[job.id]
                started.append((job, alloc))
            elif self.policy == "strict":
                break
            else:
                skipped.append(heapq.heappop(heap))
        for entry in skipped:
            heapq.heappush(heap, entry)
        return started

    def enqueue(self, job: Job) -> None:
        self._queued[job.id] = job
        entry = (-job.spec.priority, job.id)
        if entry not in self._entries:  # a held-then-released job may still have its old entry
            self._entries.add(entry)
            heapq.heappush(self._heap, entry)

    def ordered(self) -> Iterator[Job]:
        """The queue in the order it will run (for display)."""
        for entry in sorted(self._heap):
            job = self._live(entry)
            if job is not None:
                yield job
