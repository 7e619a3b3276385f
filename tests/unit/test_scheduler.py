"""The scheduler: priority desc then id asc (FIFO within a priority), strict and first-fit."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from schedd.core.ledger import Allocation, Ledger
from schedd.core.model import Job, JobSpec
from schedd.core.scheduler import Scheduler

GiB = 1 << 30


def make_job(job_id: int, priority: int = 0, cpus: int = 1, memory: int = GiB, gpus: int = 0,
             name: str | None = None) -> Job:
    spec = JobSpec(command=["/bin/true"], name=name or f"job{job_id}", cpus=cpus, memory=memory,
                   gpus=gpus, priority=priority)
    return Job(id=job_id, spec=spec)


def names(started: list[tuple[Job, Allocation]]) -> list[str]:
    return [job.spec.name for job, _ in started]


def run_to_completion(sched: Scheduler) -> list[str]:
    """Schedule, finish everything that started, repeat: the order jobs ran in."""
    order: list[str] = []
    while len(sched):
        started = sched.schedule()
        assert started, "queue not empty but nothing could start on an idle node"
        order += names(started)
        for _, alloc in started:
            sched.ledger.release(alloc)
    return order


@pytest.mark.parametrize("policy", ["strict", "first-fit"])
def test_mini_slurm_priority_example(policy: str) -> None:
    # Seed 001, example 3: A (priority 0), B (10), C (5) submitted in that order.
    sched = Scheduler(Ledger([0], 4 * GiB), policy)
    sched.enqueue(make_job(1, priority=0, name="A"))
    sched.enqueue(make_job(2, priority=10, name="B"))
    sched.enqueue(make_job(3, priority=5, name="C"))
    assert [j.spec.name for j in sched.ordered()] == ["B", "C", "A"]
    # One CPU: one job at a time.
    first = sched.schedule()
    assert names(first) == ["B"]
    assert first[0][1].cpus == (0,)
    assert sched.schedule() == []  # nothing else fits while B runs
    sched.ledger.release(first[0][1])
    assert run_to_completion(sched) == ["C", "A"]


def test_fifo_within_a_priority() -> None:
    sched = Scheduler(Ledger([0], 4 * GiB))
    for i in (5, 1, 4, 2, 3):  # enqueue order differs from id order: ids decide
        sched.enqueue(make_job(i, priority=7, name=str(i)))
    assert run_to_completion(sched) == ["1", "2", "3", "4", "5"]


def test_priority_then_fifo_mixed() -> None:
    sched = Scheduler(Ledger([0], 4 * GiB))
    prios = {1: 0, 2: 5, 3: 0, 4: 5, 5: -3, 6: 10}
    for i, p in prios.items():
        sched.enqueue(make_job(i, priority=p, name=str(i)))
    assert run_to_completion(sched) == ["6", "2", "4", "1", "3", "5"]


def test_all_fitting_jobs_start_at_once() -> None:
    sched = Scheduler(Ledger([0, 1, 2, 3], 8 * GiB))
    for i in range(1, 4):
        sched.enqueue(make_job(i, name=str(i)))
    started = sched.schedule()
    assert names(started) == ["1", "2", "3"]
    assert [a.cpus for _, a in started] == [(0,), (1,), (2,)]
    assert len(sched) == 0
    assert sched.ledger.free_cpus == 1


def _big_head_queue(policy: str) -> tuple[Scheduler, Allocation]:
    sched = Scheduler(Ledger([0, 1, 2, 3], 16 * GiB), policy)
    running = sched.ledger.allocate(2, GiB)  # something already holds 2 of 4 CPUs
    assert running is not None
    sched.enqueue(make_job(1, priority=10, cpus=4, name="big"))
    sched.enqueue(make_job(2, priority=0, cpus=1, name="small1"))
    sched.enqueue(make_job(3, priority=0, cpus=1, name="small2"))
    return sched, running


def test_strict_big_head_blocks_smaller_jobs_behind_it() -> None:
    sched, running = _big_head_queue("strict")
    assert sched.schedule() == []
    assert len(sched) == 3
    assert sched.ledger.free_cpus == 2
    # Once the running work ends, the big job goes first.
    sched.ledger.release(running)
    started = sched.schedule()
    assert names(started) == ["big"]
    assert started[0][1].cpus == (0, 1, 2, 3)


def test_first_fit_lets_smaller_jobs_pass() -> None:
    sched, running = _big_head_queue("first-fit")
    started = sched.schedule()
    assert names(started) == ["small1", "small2"]
    assert [a.cpus for _, a in started] == [(2,), (3,)]
    assert [j.spec.name for j in sched.ordered()] == ["big"]
    assert 1 in sched and 2 not in sched and 3 not in sched
    # The big job keeps its place and starts when everything is free.
    sched.ledger.release(running)
    for _, a in started:
        sched.ledger.release(a)
    assert names(sched.schedule()) == ["big"]


def test_first_fit_skipped_job_stays_queued_in_order() -> None:
    sched = Scheduler(Ledger([0, 1], 4 * GiB), "first-fit")
    sched.enqueue(make_job(1, cpus=1, memory=3 * GiB, name="a"))
    sched.enqueue(make_job(2, cpus=1, memory=3 * GiB, name="b"))  # no memory left after a
    sched.enqueue(make_job(3, cpus=1, memory=GiB, name="c"))
    started = sched.schedule()
    assert names(started) == ["a", "c"]
    assert [j.spec.name for j in sched.ordered()] == ["b"]


def test_unknown_policy_rejected() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        Scheduler(Ledger([0], GiB), "round-robin")


def test_dequeue_removes_a_job() -> None:
    sched = Scheduler(Ledger([0], 4 * GiB))
    a, b = make_job(1, name="a"), make_job(2, name="b")
    sched.enqueue(a)
    sched.enqueue(b)
    assert sched.dequeue(1) is a
    assert 1 not in sched and len(sched) == 1
    assert [j.id for j in sched.ordered()] == [2]
    started = sched.schedule()
    assert names(started) == ["b"]
    sched.ledger.release(started[0][1])
    assert sched.schedule() == []  # the cancelled job never runs


def test_dequeue_unknown_returns_none() -> None:
    sched = Scheduler(Ledger([0], GiB))
    assert sched.dequeue(42) is None
    sched.enqueue(make_job(1))
    assert sched.dequeue(1) is not None
    assert sched.dequeue(1) is None  # twice is harmless


def test_reenqueue_after_dequeue_keeps_fifo_place() -> None:
    # Hold then release: the job goes back by id, ahead of later submissions.
    sched = Scheduler(Ledger([0], 4 * GiB))
    for i in (1, 2, 3):
        sched.enqueue(make_job(i, name=str(i)))
    held = sched.dequeue(1)
    assert held is not None
    sched.enqueue(held)
    assert len(sched) == 3
    assert run_to_completion(sched) == ["1", "2", "3"]


def test_reenqueue_with_new_priority() -> None:
    sched = Scheduler(Ledger([0], 4 * GiB))
    for i in (1, 2, 3):
        sched.enqueue(make_job(i, name=str(i)))
    job = sched.dequeue(3)
    job.spec.priority = 100
    sched.enqueue(job)
    assert run_to_completion(sched) == ["3", "1", "2"]


def test_a_job_never_starts_twice_after_reenqueue() -> None:
    sched = Scheduler(Ledger([0, 1, 2, 3], 8 * GiB), "first-fit")
    job = make_job(1)
    sched.enqueue(job)
    sched.enqueue(sched.dequeue(1))
    sched.enqueue(sched.dequeue(1))  # several stale heap entries for the same id
    started = sched.schedule()
    assert [j.id for j, _ in started] == [1]
    assert sched.ledger.free_cpus == 3
    assert sched.schedule() == []
    assert len(sched) == 0


def test_ordered_lists_a_released_job_once() -> None:
    sched = Scheduler(Ledger([0], 4 * GiB))
    sched.enqueue(make_job(1, name="a"))
    sched.enqueue(make_job(2, name="b"))
    sched.enqueue(sched.dequeue(1))  # hold, then release
    assert len(sched) == 2
    assert [j.id for j in sched.ordered()] == [1, 2]


def test_schedule_on_full_node_starts_nothing() -> None:
    sched = Scheduler(Ledger([0, 1], 4 * GiB), "first-fit")
    sched.ledger.allocate(2, GiB)
    sched.enqueue(make_job(1))
    assert sched.schedule() == []
    assert 1 in sched


def test_gpu_job_waits_for_a_gpu() -> None:
    sched = Scheduler(Ledger([0, 1, 2, 3], 8 * GiB, [0]), "first-fit")
    sched.enqueue(make_job(1, gpus=1, name="g1"))
    sched.enqueue(make_job(2, gpus=1, name="g2"))
    sched.enqueue(make_job(3, gpus=0, name="cpu"))
    started = sched.schedule()
    assert names(started) == ["g1", "cpu"]
    assert started[0][1].gpus == (0,)
    sched.ledger.release(started[0][1])
    again = sched.schedule()
    assert names(again) == ["g2"] and again[0][1].gpus == (0,)


# -- property: random operations never break the ledger ------------------------------

class SchedulerMachine(RuleBasedStateMachine):
    CPU_IDS = [0, 1, 2, 3]
    MEMORY = 8 * GiB
    GPU_IDS = [0, 1]

    def __init__(self) -> None:
        super().__init__()
        self.sched: Scheduler | None = None
        self.next_id = 1
        self.running: dict[int, Allocation] = {}
        self.ever_started: set[int] = set()
        self.dequeued: dict[int, Job] = {}

    @rule(policy=st.sampled_from(["strict", "first-fit"]))
    @precondition(lambda self: self.sched is None)
    def init(self, policy: str) -> None:
        self.sched = Scheduler(Ledger(self.CPU_IDS, self.MEMORY, self.GPU_IDS), policy)

    @rule(priority=st.integers(-3, 3), cpus=st.integers(1, 5), mem_quarters=st.integers(1, 36),
          gpus=st.integers(0, 2))
    @precondition(lambda self: self.sched is not None)
    def enqueue(self, priority: int, cpus: int, mem_quarters: int, gpus: int) -> None:
        job = make_job(self.next_id, priority=priority, cpus=cpus, memory=mem_quarters * GiB // 4, gpus=gpus)
        self.next_id += 1
        self.sched.enqueue(job)

    @rule(data=st.data())
    @precondition(lambda self: self.sched is not None and len(self.sched) > 0)
    def dequeue(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.sched._queued)))
        job = self.sched.dequeue(job_id)
        assert job is not None and job.id == job_id
        assert job_id not in self.sched
        self.dequeued[job_id] = job

    @rule(data=st.data())
    @precondition(lambda self: self.sched is not None and self.dequeued)
    def reenqueue(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.dequeued)))
        self.sched.enqueue(self.dequeued.pop(job_id))

    @rule()
    @precondition(lambda self: self.sched is not None)
    def schedule(self) -> None:
        queued_before = [j.id for j in self.sched.ordered()]
        started = self.sched.schedule()
        ids = [j.id for j, _ in started]
        # Only queued jobs start, each once, in queue order.
        assert len(ids) == len(set(ids))
        assert set(ids) <= set(queued_before)
        assert ids == [i for i in dict.fromkeys(queued_before) if i in set(ids)]
        for job, alloc in started:
            assert job.id not in self.ever_started, f"job {job.id} started twice"
            assert job.id not in self.dequeued, f"dequeued job {job.id} started"
            assert job.id not in self.sched
            assert len(alloc.cpus) == job.spec.cpus
            assert len(alloc.gpus) == job.spec.gpus
            assert alloc.memory == job.spec.memory
            self.ever_started.add(job.id)
            self.running[job.id] = alloc
        led = self.sched.ledger
        remaining = list(self.sched.ordered())
        if self.sched.policy == "strict":
            # Started jobs are a prefix of the queue, and the new head does not fit.
            assert ids == list(dict.fromkeys(queued_before))[: len(ids)]
            if remaining:
                head = remaining[0].spec
                assert not led.fits(head.cpus, head.memory, head.gpus)
        else:
            # First-fit: nothing left in the queue fits.
            for job in remaining:
                assert not led.fits(job.spec.cpus, job.spec.memory, job.spec.gpus)

    @rule(data=st.data())
    @precondition(lambda self: self.sched is not None and self.running)
    def release(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.running)))
        self.sched.ledger.release(self.running.pop(job_id))

    @invariant()
    def ledger_consistent(self) -> None:
        if self.sched is None:
            return
        led = self.sched.ledger
        held_cpus = [c for a in self.running.values() for c in a.cpus]
        held_gpus = [g for a in self.running.values() for g in a.gpus]
        assert len(held_cpus) == len(set(held_cpus)), "a CPU id is given to two running jobs"
        assert len(held_gpus) == len(set(held_gpus)), "a GPU index is given to two running jobs"
        assert set(held_cpus) <= set(self.CPU_IDS)
        assert led.free_cpus + len(held_cpus) == led.total_cpus
        assert led.free_gpus + len(held_gpus) == led.total_gpus
        assert led.free_memory + sum(a.memory for a in self.running.values()) == led.total_memory
        assert led.free_memory >= 0
        # The free ids are exactly the ones no running job holds.
        assert led._free_cpus == set(self.CPU_IDS) - set(held_cpus)
        assert led._free_gpus == set(self.GPU_IDS) - set(held_gpus)
        assert len(self.sched) == len({j.id for j in self.sched.ordered()})


SchedulerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_scheduler_random_operations = SchedulerMachine.TestCase
