"""The engine's run paths on the fake executor: the real Engine and Store (SQLite in a temp dir), no
processes, no root, no systemd. Each test decides when and how its jobs end; waits are on states
with deadlines, never sleeps."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import pytest
from dbus_fast import Variant

import schedd.core.engine as engine_mod
import schedd.core.model as model
from schedd.config import Config
from schedd.core.engine import Caller, Engine
from schedd.core.engine.events import JOB_FIELDS, MANAGER_FACTS
from schedd.errors import AccessDenied, InvalidArgument, InvalidState, NotFound, SchedError, Unsatisfiable
from schedd.executor.base import ExitInfo
from schedd.executor.fake import FakeExecutor, FakeHost
from schedd.cluster.wire import mirrored_fields
from schedd.core.model import Job, JobState, Reason, now_usec
from schedd.protocol import SPEC_KEYS
from schedd.core.spec import build_spec
from schedd.core.store import Store

ME = os.getuid()
CALLER = Caller(uid=ME, sender=":1.42")  # what the D-Bus adapter hands the engine
MIB = 1 << 20
P, H, R, S = JobState.PENDING, JobState.HELD, JobState.RUNNING, JobState.SUSPENDED
C, F, X = JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED


def spec(command: tuple[str, ...] = ("true",), **keys) -> dict[str, Variant]:
    """A Submit a{sv}, typed as the contract says (keys as in DESIGN.md: CPUs=2, Hold=True, ...)."""
    props = {"Command": Variant("as", list(command)), "Memory": Variant("t", 64 * MIB)}
    props.update({k: Variant(SPEC_KEYS[k], v) for k, v in keys.items()})
    return props


class Events:
    """A listener, as the D-Bus adapter is one: every transition, in order."""

    def __init__(self) -> None:
        self.transitions: list[tuple[int, JobState, JobState, str]] = []
        self.added: list[int] = []
        self.changes: list[tuple[int, JobState, frozenset[str]]] = []  # (job, new state, fields)

    def job_added(self, job: Job) -> None:
        self.added.append(job.id)

    def job_changed(self, job: Job, fields: frozenset[str], old_state: JobState) -> None:
        assert isinstance(fields, frozenset) and fields <= JOB_FIELDS, fields  # the engine's words, never D-Bus's
        self.changes.append((job.id, job.state, fields))
        if old_state != job.state:
            self.transitions.append((job.id, old_state, job.state, job.reason))

    def job_released(self, job: Job) -> None:
        pass

    def job_loaded(self, job: Job) -> None:
        pass

    def job_unloaded(self, job: Job) -> None:
        pass

    def manager_changed(self, facts: frozenset[str]) -> None:
        assert isinstance(facts, frozenset) and facts and facts <= MANAGER_FACTS, facts

    def fields(self, jid: int, state: JobState) -> frozenset[str]:
        """What the transitions of jid into state wrote, together."""
        return frozenset().union(*(f for j, s, f in self.changes if j == jid and s == state))

    def states(self, jid: int) -> list[JobState]:
        return [new for j, _, new, _ in self.transitions if j == jid]


class Node:
    """One daemon: engine + store + fake executor on a host that outlives it."""

    def __init__(self, state_dir: Path, host: FakeHost, registry: list["Node"], **config) -> None:
        self.state_dir, self.host, self.config, self.registry = state_dir, host, config, registry
        registry.append(self)
        cfg = Config(**{"node_name": "n1", "cpu_ids": [0, 1, 2, 3], "memory": 1 << 30, "state_dir": state_dir,
                        **config})
        self.store = Store(state_dir / "schedd.db")
        self.engine = Engine(cfg, self.store)
        self.ex = FakeExecutor(self.engine.on_exit, host)
        self.events = Events()
        self.engine.listeners.append(self.events)
        self.closed = False

    async def open(self) -> "Node":
        await self.ex.open()
        await self.engine.recover(self.ex)
        await self.engine.loaded()  # what recovery leaves to loading.py (its own test looks between)
        return self

    async def close(self) -> None:
        """The daemon stops; what runs goes on running on the host."""
        if self.closed:
            return
        self.closed = True
        self.ex.let_start()
        await wait(lambda: not self.ex.in_start(), "starts to finish")
        await self.engine.shutdown()
        self.store.close()

    async def crash(self) -> None:
        """The daemon dies: what it was starting never starts; what runs goes on running."""
        self.closed = True
        self.ex.crash()
        await self.engine.shutdown()
        self.store.close()

    async def restart(self) -> "Node":
        await self.close()
        return await Node(self.state_dir, self.host, self.registry, **self.config).open()

    def job(self, jid: int) -> Job:
        return self.engine.get(jid)

    def state(self, jid: int) -> tuple[JobState, str]:
        job = self.job(jid)
        return job.state, job.reason

    async def submit(self, command: tuple[str, ...] = ("true",), **keys) -> int:
        return (await self.engine.submit(spec(command, **keys), CALLER)).id

    async def reach(self, jid: int, state: JobState, what: str = "") -> Job:
        await wait(lambda: self.job(jid).state == state, what or f"job {jid} {state.value}")
        return self.job(jid)

    async def running(self, *jids: int) -> None:
        """Every one of jids is RUNNING and its unit runs on the host."""
        await wait(lambda: all(self.job(j).state == R and j in self.host.units for j in jids),
                   f"jobs {jids} running")

    async def durable(self, jid: int) -> Job:
        await self.store.drain()
        return self.store.get(jid)


def requested(node: Node, jid: int, what: str) -> bool:
    """Whether the engine noted a request (cancel, requeue, fence) against a job it is starting.

    Nothing outside the engine shows it (the job stays PENDING until its start returns), so
    this is the one place these tests read the engine's private state."""
    flags = node.engine._flags.get(jid)
    return flags is not None and getattr(flags, what)


async def wait(pred: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    """Until pred() holds; fails the test (naming `what`) after timeout seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.002)


@pytest.fixture
async def make_node(tmp_path: Path):
    nodes: list[Node] = []

    async def make(**config) -> Node:
        return await Node(tmp_path / f"n{len(nodes)}", FakeHost(), nodes, **config).open()

    yield make
    for node in nodes:
        await node.close()
    assert model.EMPTY == [], "a job's shared empty list was changed in place"


@pytest.fixture
async def node(make_node) -> Node:
    return await make_node()


# -- how jobs end ------------------------------------------------------------------------------


@pytest.mark.parametrize("end, state, reason, code", [
    (lambda ex, j: ex.exit(j, 0), C, Reason.SUCCESS, 0),
    (lambda ex, j: ex.exit(j, 3), F, Reason.EXIT_CODE, 3),
    (lambda ex, j: ex.kill(j, signal.SIGKILL), F, Reason.SIGNAL, 137),
    (lambda ex, j: ex.oom(j), F, Reason.OOM_KILL, 137),
    (lambda ex, j: ex.lose(j), F, Reason.LOST, 0),
    (lambda ex, j: ex.malformed(j), F, Reason.LOST, 0),
    (lambda ex, j: ex.gate_fails(j, 121, "cannot chdir"), F, Reason.LOST, 121),
], ids=["exit-0", "exit-3", "signal", "oom", "lost", "malformed", "setup-error"])
async def test_each_way_a_job_ends_has_its_state_reason_and_exit_code(node, end, state, reason, code):
    jid = await node.submit(CPUs=2)
    await node.running(jid)
    assert node.engine.ledger.free_cpus == 2
    end(node.ex, jid)
    job = node.job(jid)
    assert (job.state, job.reason, job.exit_code) == (state, reason, code)
    assert job.end_time >= job.start_time > 0 and job.handle is None
    assert node.engine.ledger.free_cpus == 4
    stored = await node.durable(jid)
    assert (stored.state, stored.reason, stored.exit_code) == (state, reason, code)
    await wait(lambda: jid in node.ex.called("forget"), "the executor told to forget the recorded exit")


async def test_accounting_of_the_exit_is_kept(node):
    jid = await node.submit()
    await node.running(jid)
    node.ex.exit(jid, 0, cpu_usec=1234, memory_peak=5 * MIB)
    stored = await node.durable(jid)
    assert (stored.cpu_time_usec, stored.memory_peak) == (1234, 5 * MIB)
    assert stored.assigned_cpus == node.job(jid).assigned_cpus and len(stored.assigned_cpus) == 1


async def test_a_job_whose_program_never_started_is_queued_again(node):
    jid = await node.submit()
    await node.running(jid)
    node.ex.abort(jid)  # the gate was never released (the daemon died in between, say)
    await node.running(jid)
    assert node.ex.called("start") == [jid, jid]
    assert node.job(jid).restarts == 0  # not a requeue: it never ran
    node.ex.exit(jid, 0)
    assert node.state(jid) == (C, Reason.SUCCESS)


async def test_a_start_that_fails_fails_the_job_and_frees_its_cpus(node):
    node.ex.fail_start()
    jid = await node.submit(CPUs=4)
    await node.reach(jid, F)
    assert node.state(jid) == (F, Reason.RESOURCES)
    assert node.engine.ledger.free_cpus == 4 and jid not in node.host.ran
    assert (await node.durable(jid)).state == F
    nxt = await node.submit(CPUs=4)
    await node.running(nxt)


async def test_gpus_are_assigned_and_given_back(make_node):
    node = await make_node(gpu_ids=[0, 1])
    a, b = await node.submit(GPUs=1), await node.submit(GPUs=1)
    await node.running(a, b)
    assert sorted(node.job(a).assigned_gpus + node.job(b).assigned_gpus) == [0, 1]
    c = await node.submit(GPUs=2)
    node.ex.exit(a, 0)
    node.ex.exit(b, 0)
    await node.running(c)
    assert node.job(c).assigned_gpus == [0, 1] and node.engine.ledger.free_gpus == 0
    node.ex.exit(c, 0)
    assert node.engine.ledger.free_gpus == 2
    with pytest.raises(Unsatisfiable, match="GPUs: asks for 3 GPUs"):
        await node.submit(GPUs=3)


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_a_pending_or_held_job(node):
    blocker = await node.submit(CPUs=4)
    await node.running(blocker)
    pending = await node.submit()
    held = await node.submit(Hold=True)
    assert node.state(pending) == (P, "") and node.state(held) == (H, Reason.HELD)
    for jid in (pending, held):
        await node.engine.cancel(jid, CALLER)
        assert node.state(jid) == (X, Reason.CANCELLED)
        assert (await node.durable(jid)).state == X  # durable when Cancel answers
    node.ex.exit(blocker, 0)
    assert node.ex.called("start") == [blocker]  # neither ever started
    assert node.engine.counts() == (0, 0)
    with pytest.raises(InvalidState, match="already CANCELLED"):
        await node.engine.cancel(pending, CALLER)
    with pytest.raises(NotFound):
        await node.engine.cancel(999, CALLER)


async def test_cancel_of_another_users_job_is_refused_unless_polkit_allows(node):
    jid = await node.submit(Hold=True)
    other = Caller(uid=ME + 1 if ME else 4242, sender=":1.99")
    with pytest.raises(AccessDenied, match="belongs to"):
        await node.engine.cancel(jid, other)
    asked = []

    async def polkit(caller: Caller, action: str) -> bool:
        asked.append((caller.uid, action))
        return True

    node.engine.authorize_other = polkit
    await node.engine.cancel(jid, other)
    assert node.state(jid) == (X, Reason.CANCELLED)
    assert asked == [(other.uid, engine_mod.MANAGE_ACTION)]


async def test_cancel_a_running_job_stops_it_and_answers_once_it_ended(node):
    jid = await node.submit()
    await node.running(jid)
    await node.engine.cancel(jid, CALLER)
    assert node.state(jid) == (X, Reason.CANCELLED)
    assert node.ex.called("stop") == [jid] and jid not in node.host.units
    assert node.engine.ledger.free_cpus == 4
    assert (await node.durable(jid)).state == X


async def test_cancel_waits_for_a_job_that_ignores_the_stop(node):
    jid = await node.submit()
    await node.running(jid)
    node.ex.stop_ends_job = False
    cancel = asyncio.create_task(node.engine.cancel(jid, CALLER))
    await wait(lambda: jid in node.ex.called("stop"), "stop")
    assert not cancel.done() and node.job(jid).state == R  # still running: Cancel has not answered
    node.ex.kill(jid, signal.SIGKILL)  # what the executor's kill-wait does
    await cancel
    assert node.state(jid) == (X, Reason.CANCELLED)


async def test_cancel_while_starting_ends_cancelled(node):
    node.ex.delay_starts()
    jid = await node.submit(CPUs=2)
    await wait(lambda: node.ex.starting() == [jid], "the start under way")
    cancel = asyncio.create_task(node.engine.cancel(jid, CALLER))
    await wait(lambda: requested(node, jid, "cancel"), "the cancel noted")
    assert not cancel.done() and node.ex.called("stop") == []
    node.ex.let_start()
    await asyncio.wait_for(cancel, 3)
    assert node.state(jid) == (X, Reason.CANCELLED)
    assert node.engine.ledger.free_cpus == 4 and not node.host.units
    assert (await node.durable(jid)).state == X


async def test_cancel_while_starting_never_runs_the_program(node):
    node.ex.delay_starts()
    jid = await node.submit()
    await wait(lambda: node.ex.starting() == [jid], "the start under way")
    cancel = asyncio.create_task(node.engine.cancel(jid, CALLER))
    await wait(lambda: requested(node, jid, "cancel"), "the cancel noted")
    node.ex.let_start()
    await asyncio.wait_for(cancel, 3)
    assert node.state(jid) == (X, Reason.CANCELLED)
    assert jid not in node.host.ran


async def test_cancel_while_starting_then_start_fails_is_cancelled(node):
    node.ex.delay_starts()
    jid = await node.submit()
    await wait(lambda: node.ex.starting() == [jid], "the start under way")
    cancel = asyncio.create_task(node.engine.cancel(jid, CALLER))
    await wait(lambda: requested(node, jid, "cancel"), "the cancel noted")
    node.ex.fail_start(jid)  # the slow start fails in the end
    node.ex.let_start()
    await asyncio.wait_for(cancel, 3)
    assert node.state(jid) == (X, Reason.CANCELLED)


async def test_a_stop_the_executor_refuses_fails_the_cancel_and_the_job_runs_on(node):
    jid = await node.submit()
    await node.running(jid)
    node.ex.fail_stop(jid)
    with pytest.raises(SchedError, match=f"cannot stop job {jid}"):
        await node.engine.cancel(jid, CALLER)
    assert node.state(jid) == (R, "") and node.engine.ledger.free_cpus == 3
    node.ex.clear_failures()
    await node.engine.cancel(jid, CALLER)  # a second try gets through
    assert node.state(jid) == (X, Reason.CANCELLED)


async def test_a_failed_cancel_does_not_mark_the_later_exit_cancelled(node):
    jid = await node.submit()
    await node.running(jid)
    node.ex.fail_stop(jid)
    with pytest.raises(SchedError, match="cannot stop"):
        await node.engine.cancel(jid, CALLER)
    assert node.job(jid).state == R
    node.ex.exit(jid, 0)
    assert node.state(jid) == (C, Reason.SUCCESS)


# -- requeue -----------------------------------------------------------------------------------


async def test_requeue_of_a_running_job_runs_it_again(node):
    jid = await node.submit()
    await node.running(jid)
    first_cpus = node.job(jid).assigned_cpus
    await node.engine.requeue(jid, CALLER)
    await node.running(jid)
    job = node.job(jid)
    assert job.restarts == 1 and node.ex.called("stop") == [jid] and node.ex.called("start") == [jid, jid]
    assert (jid, R, P, Reason.REQUEUED) in node.events.transitions
    assert node.events.states(jid) == [R, P, R]
    assert job.exit_code == 0 and job.end_time == 0 and len(first_cpus) == 1
    node.ex.exit(jid, 0)
    stored = await node.durable(jid)
    assert (stored.state, stored.restarts) == (C, 1)


async def test_requeue_of_a_finished_job_and_of_one_that_never_ran(node):
    jid = await node.submit()
    await node.running(jid)
    node.ex.exit(jid, 3)
    assert node.state(jid) == (F, Reason.EXIT_CODE)
    await node.engine.requeue(jid, CALLER)
    await node.running(jid)
    assert node.job(jid).restarts == 1 and node.job(jid).exit_code == 0
    held = await node.submit(Hold=True)
    with pytest.raises(InvalidState, match="has not run"):
        await node.engine.requeue(held, CALLER)


async def test_requeue_while_starting_is_refused_as_not_run_yet(node):
    node.ex.delay_starts()
    jid = await node.submit()
    await wait(lambda: node.ex.starting() == [jid], "the start under way")
    with pytest.raises(InvalidState, match="is PENDING: it has not run"):
        await node.engine.requeue(jid, CALLER)
    node.ex.let_start()
    await node.running(jid)
    assert node.job(jid).restarts == 0 and node.ex.called("start") == [jid]


# -- hold and release --------------------------------------------------------------------------


async def test_a_held_job_waits_until_released(node):
    held = await node.submit(Hold=True)
    sentinel = await node.submit()
    await node.running(sentinel)  # the pass that started it saw the held job too
    assert node.state(held) == (H, Reason.HELD) and held not in node.ex.called("start")
    assert (await node.durable(held)).state == H
    await node.engine.hold(held, CALLER)  # already held: nothing to do
    await node.engine.release(held, CALLER)
    await node.running(held)
    assert node.job(held).spec.hold is False
    with pytest.raises(InvalidState, match="only pending jobs can be held"):
        await node.engine.hold(held, CALLER)
    with pytest.raises(InvalidState, match="only held jobs can be released"):
        await node.engine.release(held, CALLER)


async def test_hold_a_queued_job_then_release_it(node):
    blocker = await node.submit(CPUs=4)
    await node.running(blocker)
    jid = await node.submit()
    await node.engine.release(jid, CALLER)  # pending: nothing to do
    await node.engine.hold(jid, CALLER)
    assert node.state(jid) == (H, Reason.HELD) and (await node.durable(jid)).state == H
    node.ex.exit(blocker, 0)
    sentinel = await node.submit()
    await node.running(sentinel)
    assert jid not in node.ex.called("start")
    await node.engine.release(jid, CALLER)
    await node.running(jid)
    assert node.events.states(jid) == [H, P, R]


async def test_a_job_being_started_cannot_be_held(node):
    node.ex.delay_starts()
    jid = await node.submit()
    await wait(lambda: node.ex.starting() == [jid], "the start under way")
    with pytest.raises(InvalidState):
        await node.engine.hold(jid, CALLER)
    node.ex.let_start()
    await node.running(jid)


# -- arrays ------------------------------------------------------------------------------------


async def test_an_array_never_runs_more_than_its_cap(node):
    jobs = await node.engine.submit_many([spec(ArrayTaskId=i, ArrayMaxRunning=2) for i in range(6)], CALLER)
    ids = [j.id for j in jobs]
    assert all(j.array_job_id == ids[0] for j in jobs)
    order = []
    for step in range(6):
        expect = ids[len(order):len(order) + 2]
        await node.running(*expect)
        sentinel = await node.submit()  # a pass ran after the last change: nothing else was admitted
        await node.running(sentinel)
        node.ex.exit(sentinel, 0)
        assert [j for j in node.ex.running() if j in ids] == expect, f"step {step}"
        order.append(expect[0])
        node.ex.exit(expect[0], 0)
    assert node.host.max_running <= 3  # two tasks and a sentinel
    assert [node.state(j)[0] for j in ids] == [C] * 6
    assert [j for j in node.ex.called("start") if j in ids] == ids  # in task order


async def test_an_arrays_next_task_is_admitted_when_one_is_cancelled(node):
    jobs = await node.engine.submit_many([spec(ArrayTaskId=i, ArrayMaxRunning=1) for i in range(3)], CALLER)
    a, b, c = (j.id for j in jobs)
    await node.running(a)
    await node.engine.cancel(b, CALLER)  # parked: it leaves the line
    await node.engine.cancel(a, CALLER)  # running: the next one is admitted
    await node.running(c)
    assert b not in node.ex.called("start") and node.state(b) == (X, Reason.CANCELLED)


async def test_an_array_is_all_tasks_with_one_cap(node):
    with pytest.raises(InvalidArgument, match="same cap"):
        await node.engine.submit_many([spec(ArrayTaskId=0, ArrayMaxRunning=1),
                                       spec(ArrayTaskId=1, ArrayMaxRunning=2)], CALLER)
    with pytest.raises(InvalidArgument, match="mix no other jobs"):
        await node.engine.submit_many([spec(ArrayTaskId=0), spec()], CALLER)
    assert node.engine.jobs == {}


# -- dependencies ------------------------------------------------------------------------------


async def test_dependencies_run_in_order_and_a_failure_cascades(node):
    a = await node.submit()
    await node.running(a)
    b = await node.submit(After=[a])
    c = await node.submit(After=[b])
    d = await node.submit(After=[c])
    sentinel = await node.submit()
    await node.running(sentinel)
    assert node.state(b) == (P, Reason.DEPENDENCY) and b not in node.ex.called("start")
    assert (await node.durable(b)).reason == Reason.DEPENDENCY
    node.ex.exit(a, 0)
    await node.running(b)
    assert node.state(b) == (R, "") and node.state(c) == (P, Reason.DEPENDENCY)
    node.ex.exit(b, 1)
    assert node.state(c) == (F, Reason.DEPENDENCY) and node.state(d) == (F, Reason.DEPENDENCY)
    assert (await node.durable(d)).reason == Reason.DEPENDENCY
    assert not {c, d} & set(node.ex.called("start"))
    late = await node.submit(After=[c])  # on a job that already failed
    assert node.state(late) == (F, Reason.DEPENDENCY)
    after_done = await node.submit(After=[a])  # on one that completed
    await node.running(after_done)


async def test_a_cancelled_dependency_fails_its_dependents(node):
    first = await node.submit(Hold=True)
    second = await node.submit(After=[first])
    await node.engine.cancel(first, CALLER)
    assert node.state(second) == (F, Reason.DEPENDENCY)


async def test_a_dependency_on_several_jobs_waits_for_all(node):
    a, b = await node.submit(), await node.submit()
    await node.running(a, b)
    c = await node.submit(After=[a, b])
    node.ex.exit(a, 0)
    sentinel = await node.submit()
    await node.running(sentinel)
    assert node.state(c) == (P, Reason.DEPENDENCY)
    node.ex.exit(b, 0)
    await node.running(c)
    with pytest.raises(InvalidArgument, match="After: job 999 does not exist"):
        await node.submit(After=[999])


async def test_a_blocked_job_says_dependency_across_a_restart_hold_and_release(node):
    a = await node.submit(Hold=True)
    b = await node.submit(After=[a])
    node = await node.restart()
    assert node.state(b) == (P, Reason.DEPENDENCY)
    await node.engine.hold(b, CALLER)
    assert node.state(b) == (H, Reason.HELD)
    await node.engine.release(b, CALLER)
    assert node.state(b) == (P, Reason.DEPENDENCY)
    await node.engine.release(a, CALLER)
    await node.running(a)
    node.ex.exit(a, 0)
    await node.running(b)
    assert node.state(b) == (R, "") and (await node.durable(b)).reason == ""


async def test_a_job_whose_dependencies_hold_but_cpus_do_not_no_longer_says_dependency(make_node):
    node = await make_node(cpu_ids=[0])
    a = await node.submit()
    await node.running(a)
    b = await node.submit(After=[a])
    busy = await node.submit(Priority=10)
    assert node.state(b) == (P, Reason.DEPENDENCY)
    node.ex.exit(a, 0)
    await node.running(busy)  # the one CPU goes to the higher priority: b waits in the queue
    assert node.state(b) == (P, "") and (await node.durable(b)).reason == ""


# -- time limits -------------------------------------------------------------------------------


class Clock:
    """The engine's wall clock, moved by the test (the event loop's timers keep real time)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return now_usec() + self.offset

    def advance(self, usec: int) -> None:
        self.offset += usec


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    for name, mod in list(sys.modules.items()):  # every engine module that reads the clock
        if name.startswith("schedd.core.engine") and hasattr(mod, "now_usec"):
            monkeypatch.setattr(mod, "now_usec", c)
    return c


async def test_a_job_past_its_time_limit_fails_timeout(node):
    jid = await node.submit(RuntimeMaxUSec=20_000)
    await node.reach(jid, F)
    assert node.state(jid) == (F, Reason.TIMEOUT)
    assert node.ex.called("stop") == [jid] and node.job(jid).exit_code == 128 + signal.SIGTERM
    assert (await node.durable(jid)).reason == Reason.TIMEOUT



@pytest.mark.parametrize("code", [0, 143])
async def test_a_job_stopped_at_its_limit_is_timeout_however_it_ends(node, code):
    """A program that traps SIGTERM and exits (0, or 143 as podman passes on its container's end)
    after the stop at its time limit still timed out."""
    node.ex.stop_ends_job = False
    jid = await node.submit(RuntimeMaxUSec=20_000)
    await wait(lambda: node.ex.called("stop") == [jid], "the stop at the limit")
    node.ex.exit(jid, code)
    assert node.state(jid) == (F, Reason.TIMEOUT)

async def test_a_job_that_ends_in_time_is_not_stopped(node):
    jid = await node.submit(RuntimeMaxUSec=3_600_000_000)
    await node.running(jid)
    node.ex.exit(jid, 0)
    assert node.state(jid) == (C, Reason.SUCCESS) and node.ex.called("stop") == []


async def test_suspended_time_does_not_count_toward_the_limit(node, clock):
    limit = 500_000
    jid = await node.submit(RuntimeMaxUSec=limit)
    await node.running(jid)
    await node.engine.suspend(jid, CALLER)
    clock.advance(3_600_000_000)  # an hour suspended: seven thousand times its limit
    await node.engine.resume(jid, CALLER)
    job = node.job(jid)
    assert job.state == R and job.suspended_usec >= 3_600_000_000
    assert job.deadline() > clock(), "the hour suspended was counted"
    await node.reach(jid, F)  # ... and the rest of its limit still runs out
    assert node.state(jid) == (F, Reason.TIMEOUT)
    assert [c.name for c in node.ex.calls if c.job_id == jid][-2:] == ["signal", "stop"]


async def test_a_job_killed_while_the_daemon_was_down_and_past_its_limit_timed_out(node, clock):
    jid = await node.submit(RuntimeMaxUSec=3_600_000_000)
    await node.running(jid)
    await node.close()
    node.host.end(jid, ExitInfo(exit_code=128 + signal.SIGTERM, signal=signal.SIGTERM))
    clock.advance(2 * 3_600_000_000)
    node2 = await node.restart()
    assert node2.state(jid) == (F, Reason.TIMEOUT)


async def test_a_readopted_job_keeps_its_time_limit(node, clock):
    hour = 3_600_000_000
    soon, overdue = await node.submit(RuntimeMaxUSec=hour), await node.submit(RuntimeMaxUSec=hour // 2)
    await node.running(soon, overdue)
    await node.close()
    clock.advance(hour - 50_000)  # down for nearly an hour: 50 ms left of one, the other is past its limit
    node = await node.restart()
    assert node.ex.called("recover") == [soon, overdue]
    await node.reach(overdue, F)
    await node.reach(soon, F)
    assert node.state(soon) == (F, Reason.TIMEOUT) and node.state(overdue) == (F, Reason.TIMEOUT)
    assert node.ex.called("stop") == [overdue, soon]


# -- suspend and resume ------------------------------------------------------------------------


async def test_suspend_and_resume(node, clock):
    jid = await node.submit(CPUs=2)
    await node.running(jid)
    await node.engine.suspend(jid, CALLER)
    assert node.state(jid) == (S, "") and node.host.units[jid].suspended
    assert node.engine.ledger.free_cpus == 2  # it keeps its allocation
    assert node.engine.counts() == (0, 1)
    await node.engine.suspend(jid, CALLER)  # already: nothing to do
    clock.advance(5_000_000)
    await node.engine.resume(jid, CALLER)
    assert node.state(jid) == (R, "") and not node.host.units[jid].suspended
    assert node.host.units[jid].signals == [signal.SIGSTOP, signal.SIGCONT]
    assert 5_000_000 <= node.job(jid).suspended_usec < 6_000_000
    assert (await node.durable(jid)).suspended_usec == node.job(jid).suspended_usec
    await node.engine.resume(jid, CALLER)  # running: nothing to do
    held = await node.submit(Hold=True)
    with pytest.raises(InvalidState, match="only running jobs can be suspended"):
        await node.engine.suspend(held, CALLER)
    with pytest.raises(InvalidState, match="only suspended jobs can be resumed"):
        await node.engine.resume(held, CALLER)


async def test_cancel_a_suspended_job_resumes_it_to_stop_it(node):
    jid = await node.submit()
    await node.running(jid)
    await node.engine.suspend(jid, CALLER)
    await node.engine.cancel(jid, CALLER)
    assert node.state(jid) == (X, Reason.CANCELLED)
    assert [c.name for c in node.ex.calls if c.job_id == jid and c.name != "forget"][-3:] == ["signal", "signal", "stop"]
    assert node.engine.ledger.free_cpus == 4


async def test_a_suspend_the_executor_refuses_leaves_the_job_running(node):
    jid = await node.submit()
    await node.running(jid)
    node.ex.fail_signal(jid)
    with pytest.raises(SchedError, match="cannot signal"):
        await node.engine.suspend(jid, CALLER)
    assert node.state(jid) == (R, "")


async def test_a_suspended_job_that_is_killed_ends(node):
    jid = await node.submit()
    await node.running(jid)
    await node.engine.suspend(jid, CALLER)
    node.ex.kill(jid, signal.SIGKILL)
    assert node.state(jid) == (F, Reason.SIGNAL) and node.engine.ledger.free_cpus == 4
    assert node.job(jid).suspend_time == 0


# -- quotas ------------------------------------------------------------------------------------


async def test_max_pending_per_user_counts_queued_jobs_only(make_node):
    node = await make_node(max_pending_per_user=2)
    a, b = await node.submit(Hold=True), await node.submit(Hold=True)
    with pytest.raises(InvalidArgument, match="max_pending_per_user"):
        await node.submit()
    await node.engine.release(a, CALLER)
    await node.running(a)  # running jobs do not count
    c = await node.submit(Hold=True)
    with pytest.raises(InvalidArgument, match="2 queued jobs"):
        await node.engine.submit_many([spec(), spec()], CALLER)
    await node.engine.cancel(b, CALLER)
    before = node.engine.list(None, None, 0, 100)
    with pytest.raises(InvalidArgument, match="max_pending_per_user"):
        await node.engine.submit_many([spec(), spec()], CALLER)  # one would fit, two do not: none is queued
    assert node.engine.list(None, None, 0, 100) == before
    await node.submit(Hold=True)
    assert node.engine.counts() == (2, 1) and node.state(c) == (H, Reason.HELD)


# -- priority ----------------------------------------------------------------------------------


async def test_jobs_start_by_priority_then_submit_order(make_node):
    node = await make_node(cpu_ids=[0])
    blocker = await node.submit()
    await node.running(blocker)
    lo, hi, mid, hi2, neg = [await node.submit(Priority=p) for p in (0, 10, 5, 10, -5)]
    node.ex.exit(blocker, 0)
    for _ in range(5):
        await wait(lambda: len(node.ex.running()) == 1, "the next job running")
        (jid,) = node.ex.running()
        await node.running(jid)
        node.ex.exit(jid, 0)
    assert node.ex.called("start")[1:] == [hi, hi2, mid, lo, neg]


# -- recovery ----------------------------------------------------------------------------------


async def test_recovery_readopts_running_jobs_reports_ended_ones_and_queues_the_rest(node):
    a, b, c = await node.submit(), await node.submit(), await node.submit()
    await node.running(a, b, c)
    d = await node.submit(CPUs=2)  # one CPU free: pending
    e = await node.submit(Hold=True)
    a_cpus = node.job(a).assigned_cpus
    await node.close()

    # While the daemon is down: b exits 3, c is killed, a stranger's unit appears.
    node.host.end(b, ExitInfo(exit_code=3))
    node.host.end(c, ExitInfo(exit_code=137, signal=signal.SIGKILL))
    node.host.add_unit(999)
    node = await node.restart()

    assert node.state(a) == (R, "") and node.job(a).assigned_cpus == a_cpus
    assert sorted(node.ex.called("recover")) == [a, b, c] and a not in node.ex.called("start")
    assert node.state(b) == (F, Reason.EXIT_CODE) and node.job(b).exit_code == 3
    assert node.state(c) == (F, Reason.SIGNAL)
    assert node.ex.called("reap_orphan") == [999] and 999 not in node.host.units
    await node.running(d)  # b's and c's CPUs are free again: the pending job starts
    assert set(node.job(d).assigned_cpus).isdisjoint(a_cpus)
    assert node.state(e) == (H, Reason.HELD) and node.engine.ledger.free_cpus == 1
    node.ex.exit(a, 0)  # the re-adopted job's end is reported by the new executor
    assert node.state(a) == (C, Reason.SUCCESS)
    await node.engine.release(e, CALLER)
    await node.running(e)
    assert await node.submit(Hold=True) > e  # ids go on where they were


async def test_recovery_of_jobs_caught_between_start_and_their_record(node):
    blocker = await node.submit(CPUs=4)
    await node.running(blocker)
    p, q, r = await node.submit(), await node.submit(), await node.submit()
    await node.close()

    # The daemon died while starting p (its unit runs, its record says PENDING) and after q ran
    # (its exit was recorded, its record still says PENDING); the blocker finished meanwhile.
    node.host.end(blocker, ExitInfo(exit_code=0))
    node.host.add_unit(p, [1])
    node.host.recorded[q] = (0, ExitInfo(exit_code=5))
    node = await node.restart()

    assert node.state(blocker) == (C, Reason.SUCCESS)
    assert node.state(p) == (R, "") and node.job(p).assigned_cpus == [1]
    assert node.state(q) == (F, Reason.EXIT_CODE) and node.job(q).exit_code == 5
    await node.running(r)
    assert not {p, q} & set(node.ex.called("start"))
    assert (await node.durable(p)).state == R
    node.ex.exit(p, 0)
    assert node.state(p) == (C, Reason.SUCCESS)


async def test_a_long_queue_loads_after_start_and_answers_meanwhile(node):
    """Restart reads running jobs first; queued ones come after, and until then the store answers
    for them exactly: they are counted, listed, readable and can be acted on."""
    blocker = await node.submit(CPUs=4)
    await node.running(blocker)
    held = [await node.submit(Hold=True) for _ in range(5)]
    pending = [await node.submit() for _ in range(3)]
    await node.close()
    node.host.end(blocker, ExitInfo(exit_code=0))  # its CPUs are free when the daemon comes back
    node = Node(node.state_dir, node.host, node.registry, **node.config)
    e, gate, load_state = node.engine, asyncio.Event(), node.engine._load_state
    e.LOAD_ROWS = 2

    async def gated(state):  # the test says when loading may go on
        await gate.wait()
        await load_state(state)

    e._load_state = gated
    await node.ex.open()
    await e.recover(node.ex)
    assert not set(held + pending) & set(e.jobs) and e.loading_pending
    assert e.counts() == (8, 0) and e.quotas.jobs(ME) == 8
    # What lists every live job (GetManagedObjects, the subtree's Introspect, metrics, dashboard) sees them.
    assert e.on_disk_count() == 8 and e.on_disk_ids() == sorted(held + pending)
    assert [j.id for j in e.on_disk_jobs(held[0], 3)] == sorted(held + pending)[1:4]
    owner = node.engine.store.get(held[0]).spec.owner
    assert e.on_disk_by_owner() == {(H, owner): len(held), (P, owner): len(pending)}
    listed = e.list(["HELD", "PENDING"], ME, 0, 100)
    assert [j.id for j in listed] == sorted(held + pending)
    assert [j.id for j in e.list(["HELD"], None, held[1], 2)] == held[2:4]
    await e.cancel(held[0], CALLER)  # acting on one loads it first: nothing acts on a stale copy
    assert held[0] in e.jobs and node.state(held[0]) == (JobState.CANCELLED, Reason.CANCELLED)
    assert e.counts() == (7, 0) and e.quotas.jobs(ME) == 7
    for _ in range(20):  # turns of the loop in which a wrongly scheduled start would be made
        await asyncio.sleep(0)
    assert not node.ex.called("start")  # nothing starts until every pending job is loaded
    gate.set()
    await e.loaded()
    assert set(pending) <= set(e.jobs) and not set(held[1:]) & set(e.jobs)  # held jobs stay on disk
    assert e.counts()[0] + e.counts()[1] == 7 and e.quotas.jobs(ME) == 4 and e.quotas.on_disk[ME].jobs == 4
    await node.running(*pending[:1])
    assert [j.id for j in e.list(["HELD"], None, 0, 100)] == held[1:]
    assert node.state(held[1]) == (H, Reason.HELD) and held[1] not in e.jobs  # read from the store
    await e.release(held[1], CALLER)  # loaded, then released: now the scheduler's
    assert held[1] in e.jobs and e.quotas.on_disk[ME].jobs == 3 and node.state(held[1])[0] in (P, R)
    assert e.on_disk_ids() == held[2:] and e.on_disk_by_owner() == {(H, owner): 3}


async def test_recovery_fails_a_job_whose_unit_cannot_be_looked_at(node):
    a, b = await node.submit(), await node.submit()
    await node.running(a, b)
    await node.close()
    node2 = Node(node.state_dir, node.host, node.registry)
    node2.ex.fail_recover(a)
    await node2.open()
    assert node2.state(a) == (F, Reason.LOST) and node2.state(b) == (R, "")
    assert node2.engine.ledger.free_cpus == 3
    assert node2.ex.called("reap_orphan") == [a]  # its unit, if any, is stopped: the job is over


async def test_a_job_the_daemon_never_started_runs_once_after_a_restart(node):
    node.ex.delay_starts()
    jid = await node.submit()
    await wait(lambda: node.ex.starting() == [jid], "the start under way")
    await node.crash()  # in the middle of the start: no unit, no record of it running
    node2 = await Node(node.state_dir, node.host, node.registry).open()
    await node2.running(jid)
    assert node2.ex.called("start") == [jid] and node.host.ran == [jid]


# -- federation hooks --------------------------------------------------------------------------
# How schedd.cluster.federation drives the engine: jobs of ours placed on a peer are records here
# (add_record, placed_remote, mirror, requeue_away, hold_record, end_record, place_here); copies
# run here for a peer are local jobs with an origin (submit_many(origin=...), fence).

from schedd.core.model import AWAITING_NODE as WAITING  # noqa: E402


async def record(node: Node, **keys) -> Job:
    """A job of ours waiting for a node, as Federation.submit makes it."""
    s = build_spec(spec(**keys), caller_uid=ME, limits=node.engine.limits())
    job = Job(id=node.engine.allocate_id(), spec=s, submit_time=now_usec(),
              state=H if s.hold else P, reason=Reason.HELD if s.hold else "", remote_node=WAITING)
    await node.engine.add_record(job)
    return job


def peer_rec(**fields) -> dict:
    """The mirrored fields of a peer's job record (federation_wire.mirrored_fields)."""
    rec = {"ExitCode": 0, "StartTime": 0, "EndTime": 0, "CPUTimeUSec": 0, "MemoryPeak": 0, "AssignedCPUs": [],
           "AssignedGPUs": [], "StdoutPath": "/remote/out", "StderrPath": "/remote/out"}
    rec.update(fields)
    return mirrored_fields(rec)


async def test_a_forwarded_job_is_a_record_kept_in_step_by_mirror(node):
    job = await record(node)
    assert job.id in node.events.added and node.engine.counts() == (1, 0)
    assert (await node.durable(job.id)).remote_node == WAITING  # durable before any node runs it
    dep = await node.submit(After=[job.id])  # a local job may wait for it
    node.engine.placed_remote(job, "n2", 7, peer_rec())
    assert (job.remote_node, job.remote_id, job.node) == ("n2", 7, "n2")
    t = now_usec()
    node.engine.mirror(job, R, "", peer_rec(StartTime=t, AssignedCPUs=[3]))
    assert node.state(job.id) == (R, "") and job.assigned_cpus == [3] and job.start_time == t
    assert node.engine.ledger.free_cpus == 4  # it runs there, not here
    assert node.engine.counts() == (1, 1)  # the dependent is pending; the record counts as running
    node.engine.mirror(job, C, Reason.SUCCESS, peer_rec(StartTime=t, EndTime=t + 1, CPUTimeUSec=9))
    assert node.state(job.id) == (C, Reason.SUCCESS) and job.cpu_time_usec == 9
    await node.running(dep)  # its dependency completed there
    assert job.id not in node.ex.called("start")
    stored = await node.durable(job.id)
    assert (stored.state, stored.remote_node, stored.remote_id, stored.cpu_time_usec) == (C, "n2", 7, 9)


async def test_a_forwarded_job_that_fails_there_fails_its_dependents_here(node):
    job = await record(node)
    dep = await node.submit(After=[job.id])
    node.engine.placed_remote(job, "n2", 7, peer_rec())
    node.engine.mirror(job, F, Reason.EXIT_CODE, peer_rec(ExitCode=2))
    assert job.exit_code == 2 and node.state(dep) == (F, Reason.DEPENDENCY)


async def test_requeue_away_when_the_running_node_goes_down(node):
    job = await record(node)
    node.engine.placed_remote(job, "n2", 7, peer_rec())
    node.engine.mirror(job, R, "", peer_rec(StartTime=now_usec(), AssignedCPUs=[0]))
    node.engine.requeue_away(job, "n2", requeue=True, ran=True)
    assert node.state(job.id) == (P, Reason.REQUEUED)
    assert (job.restarts, job.node_failures, job.remote_node, job.remote_id, job.node) == (1, 1, WAITING, 0, "")
    assert job.assigned_cpus == [] and job.start_time == 0
    stored = await node.durable(job.id)
    assert (stored.state, stored.restarts, stored.remote_node) == (P, 1, WAITING)

    other = await record(node)
    dep = await node.submit(After=[other.id])
    node.engine.placed_remote(other, "n2", 8, peer_rec())
    node.engine.requeue_away(other, "n2", requeue=False, ran=True)
    assert node.state(other.id) == (F, Reason.NODE_FAILURE) and other.end_time > 0
    assert node.state(dep) == (F, Reason.DEPENDENCY)


async def test_requeue_away_keeps_a_held_job_held(node):
    job = await record(node, Hold=True)
    node.engine.placed_remote(job, "n2", 7, peer_rec())
    node.engine.requeue_away(job, "n2", requeue=True, ran=True)
    assert node.state(job.id) == (H, Reason.HELD) and job.restarts == 1


async def test_a_waiting_record_is_held_released_ended_or_placed_here(node):
    job = await record(node)
    await node.engine.hold_record(job, True)
    assert node.state(job.id) == (H, Reason.HELD) and (await node.durable(job.id)).state == H
    await node.engine.hold_record(job, False)
    assert node.state(job.id) == (P, "")
    node.engine.place_here(job)  # no peer takes it: it runs on this node after all
    await node.running(job.id)
    assert (job.remote_node, job.node) == ("", "n1")
    node.ex.exit(job.id, 0)
    assert node.state(job.id) == (C, Reason.SUCCESS)

    gone = await record(node)
    dep = await node.submit(After=[gone.id])
    node.engine.end_record(gone, X, Reason.CANCELLED)
    assert node.state(gone.id) == (X, Reason.CANCELLED) and node.state(dep) == (F, Reason.DEPENDENCY)
    assert (await node.durable(gone.id)).state == X


async def test_actions_on_a_forwarded_job_go_to_the_federation(node):
    job = await record(node)
    node.engine.placed_remote(job, "n2", 7, peer_rec())
    asked = []

    class Cluster:
        views = staticmethod(lambda: [])

        async def action(self, j: Job, name: str) -> None:
            asked.append((j.id, name))

    node.engine.federation = Cluster()
    for verb in ("cancel", "hold", "release", "suspend", "resume", "requeue"):
        await getattr(node.engine, verb)(job.id, CALLER)
    assert asked == [(job.id, v) for v in ("cancel", "hold", "release", "suspend", "resume", "requeue")]
    assert node.ex.calls == [c for c in node.ex.calls if c.job_id != job.id]  # nothing reached the executor


async def test_a_record_that_cannot_be_made_durable_is_not_kept(node):
    node.store.close()  # every commit fails from now on
    s = build_spec(spec(), caller_uid=ME, limits=node.engine.limits())
    job = Job(id=node.engine.allocate_id(), spec=s, submit_time=now_usec(), remote_node=WAITING)
    with pytest.raises(SchedError, match="cannot record the job"):
        await node.engine.add_record(job)
    assert job.id not in node.engine.jobs and node.engine.counts() == (0, 0)
    node.store = node.engine.store = Store(node.state_dir / "schedd.db")  # for the teardown


class OriginStub:
    """The cluster as a copy's start sees it: whether its origin may be asked, and what it answers."""

    def __init__(self) -> None:
        self.ready = False
        self.verdicts: list[str] = []  # answered in order; then "go"
        self.asked: list[int] = []

    def origin_ready(self, origin: str) -> bool:
        return self.ready

    async def may_start(self, job: Job) -> str:
        self.asked.append(job.id)
        return self.verdicts.pop(0) if self.verdicts else "go"

    def views(self):
        return []


def granting(node: Node) -> OriginStub:
    """Copies run here for "n2", which grants every start."""
    origin = node.engine.federation = OriginStub()
    origin.ready = True
    return origin


async def test_a_copy_run_for_a_peer_carries_its_origin(node):
    granting(node)
    (copy,) = await node.engine.submit_many([spec()], CALLER, origin=("n2", 5, 1))
    await node.running(copy.id)
    assert (copy.origin_node, copy.origin_id) == ("n2", 5)
    await node.store.drain()
    assert node.store.find_origin("n2", 5, 1).id == copy.id


async def test_fence_stops_a_copy_in_every_state(node):
    granting(node)
    running, = await node.engine.submit_many([spec(CPUs=4)], CALLER, origin=("n2", 1, 1))
    await node.running(running.id)
    pending, = await node.engine.submit_many([spec()], CALLER, origin=("n2", 2, 1))
    held, = await node.engine.submit_many([spec(Hold=True)], CALLER, origin=("n2", 3, 1))

    assert (await node.engine.fence(running.id)).state == X
    assert node.state(running.id) == (X, Reason.NODE_FAILURE) and node.ex.called("stop") == [running.id]
    await node.reach(pending.id, R)  # the CPUs are free: the next copy started
    for job in (pending, held):
        await node.engine.fence(job.id)
        assert node.state(job.id) == (X, Reason.NODE_FAILURE)
    assert held.id not in node.ex.called("start")
    again = await node.engine.fence(running.id)  # already over: nothing happens
    assert (again.state, again.reason) == (X, Reason.NODE_FAILURE) and node.ex.called("stop").count(running.id) == 1
    assert (await node.durable(held.id)).reason == Reason.NODE_FAILURE


async def test_fence_of_a_copy_being_started(node):
    granting(node)
    node.ex.delay_starts()
    copy, = await node.engine.submit_many([spec()], CALLER, origin=("n2", 9, 1))
    await wait(lambda: node.ex.starting() == [copy.id], "the start under way")
    fence = asyncio.create_task(node.engine.fence(copy.id))
    await wait(lambda: requested(node, copy.id, "fence"), "the fence noted")
    node.ex.let_start()
    await asyncio.wait_for(fence, 3)
    assert node.state(copy.id) == (X, Reason.NODE_FAILURE) and not node.host.units


async def test_a_copy_starts_only_with_its_origins_grant(node):
    origin = node.engine.federation = OriginStub()
    copy, = await node.engine.submit_many([spec()], CALLER, origin=("n2", 1, 1))
    await node.durable(copy.id)
    # Its origin cannot be asked: the copy waits, nothing spawned for it.
    assert node.state(copy.id) == (P, "") and copy.id not in node.ex.called("start") and origin.asked == []
    # Ready, but it cannot answer for this one yet ("later"): the program never ran, the copy waits again.
    origin.ready, origin.verdicts = True, ["later"]
    node.engine.origin_back("n2")
    await wait(lambda: origin.asked == [copy.id] and copy.id not in node.engine._starting, "the first ask")
    assert node.state(copy.id) == (P, "") and copy.id not in node.host.ran and copy.assigned_cpus == []
    assert node.engine.ledger.free_cpus == 4  # its CPUs are back
    # Asked again: granted, it runs.
    node.engine.origin_back("n2")
    await node.running(copy.id)
    assert origin.asked == [copy.id, copy.id]



async def test_an_origin_back_while_a_later_answer_is_on_its_way_is_not_missed(node):
    """The origin says to ask again (origin_back: it became ready, or its record caught up) after it
    answered "later" but before the copy was parked: the copy must be asked again, not wait forever."""
    origin = node.engine.federation = OriginStub()
    origin.ready = True
    answered = origin.may_start

    async def later_then_back(job: Job) -> str:
        origin.may_start = answered
        node.engine.origin_back("n2")  # nothing parked yet: the copy is still being started
        return "later"

    origin.may_start = later_then_back
    copy, = await node.engine.submit_many([spec()], CALLER, origin=("n2", 6, 1))
    await node.running(copy.id)
    assert origin.asked == [copy.id] and node.host.ran.count(copy.id) == 1

async def test_a_recovered_copy_waits_for_its_origin_not_for_the_federation_to_come_up(node):
    """A daemon recovers its store before its federation starts: a pending copy must not start in
    between (its origin may have placed the job elsewhere while we were down)."""
    node.engine.federation = OriginStub()
    copy, = await node.engine.submit_many([spec()], CALLER, origin=("n2", 4, 1))
    await node.durable(copy.id)
    node = await node.restart()
    await node.engine.store.drain()
    assert node.state(copy.id) == (P, "") and copy.id not in node.ex.called("start")
    granting(node)
    node.engine.origin_back("n2")
    await node.running(copy.id)


async def test_a_copy_its_origin_calls_stale_is_fenced_before_its_program_runs(node):
    origin = node.engine.federation = OriginStub()
    origin.ready, origin.verdicts = True, ["fenced"]
    copy, = await node.engine.submit_many([spec()], CALLER, origin=("n2", 2, 1))
    await wait(lambda: node.state(copy.id)[0] == X, "the copy fenced")
    assert node.state(copy.id) == (X, Reason.NODE_FAILURE) and copy.id not in node.host.ran  # it never ran


async def test_copies_of_an_origin_that_lapses_leave_the_queue_and_come_back(node):
    origin = node.engine.federation = OriginStub()
    origin.ready = True
    blocker = await node.submit(CPUs=4)
    await node.running(blocker)
    copy, = await node.engine.submit_many([spec()], CALLER, origin=("n2", 3, 1))
    node.engine.origin_lost("n2")
    origin.ready = False
    node.ex.exit(blocker)
    await node.reach(blocker, C)
    assert node.state(copy.id) == (P, "") and origin.asked == []  # CPUs free, but it waits for its origin
    origin.ready = True
    node.engine.origin_back("n2")
    await node.running(copy.id)


# -- what listeners hear -------------------------------------------------------------------------


async def test_listeners_hear_the_fields_each_transition_wrote(node):
    """The engine names Job fields; the D-Bus adapter's mapping turns them into the properties
    PropertiesChanged has always carried for a start, an end, a suspension and a requeue."""
    from schedd.api.dbus.changes import job_properties

    jid = await node.submit()
    await node.running(jid)
    assert job_properties(node.events.fields(jid, R)) >= {
        "State", "Reason", "StartTime", "WaitUSec", "AssignedCPUs", "AssignedGPUs", "Node"}
    await node.engine.suspend(jid, CALLER)
    assert job_properties(node.events.fields(jid, S)) == {"State", "Reason", "SuspendedUSec"}
    await node.engine.resume(jid, CALLER)
    node.ex.exit(jid, 0)
    assert job_properties(node.events.fields(jid, C)) == {
        "State", "Reason", "ExitCode", "EndTime", "RunUSec", "CPUTimeUSec", "MemoryPeak"}
    node.events.changes.clear()
    await node.engine.requeue(jid, CALLER)
    requeued = job_properties(node.events.fields(jid, P))
    assert requeued >= {"State", "Reason", "Restarts", "StartTime", "WaitUSec", "EndTime", "RunUSec", "ExitCode",
                        "CPUTimeUSec", "MemoryPeak", "AssignedCPUs", "AssignedGPUs", "SuspendedUSec"}


async def test_the_end_of_a_suspended_job_names_its_suspended_time(node):
    jid = await node.submit()
    await node.running(jid)
    await node.engine.suspend(jid, CALLER)
    await node.engine.cancel(jid, CALLER)
    assert {"suspended_usec", "suspend_time", "end_time", "state"} <= node.events.fields(jid, X)


# -- BeginTime, AfterAny, AfterNotOk ------------------------------------------------------------

HOUR = 3_600_000_000


async def test_a_job_before_its_begin_time_waits_holding_nothing_then_starts(node, clock):
    later = await node.submit(CPUs=4, BeginTime=clock() + HOUR)
    assert node.state(later) == (P, Reason.BEGIN_TIME) and node.job(later).spec.begin_time > clock()
    other = await node.submit(CPUs=4)  # every CPU: it runs, the waiting job holds none
    await node.running(other)
    assert node.state(later) == (P, Reason.BEGIN_TIME) and later not in node.ex.called("start")
    node.ex.exit(other, 0)
    clock.advance(HOUR - 10_000_000)
    node.engine.clock_stepped()
    assert node.state(later) == (P, Reason.BEGIN_TIME)  # ten seconds early still waits
    clock.advance(20_000_000)
    node.engine.clock_stepped()
    await node.running(later)


async def test_the_begin_timer_fires_on_its_own_and_the_earliest_first(node):
    t = now_usec()
    c = await node.submit(CPUs=1, BeginTime=t + 300_000)
    a = await node.submit(CPUs=1, BeginTime=t + 100_000)
    b = await node.submit(CPUs=1, BeginTime=t + 200_000)
    assert [node.state(j)[1] for j in (a, b, c)] == [Reason.BEGIN_TIME] * 3
    await node.running(a, b, c)
    starts = node.ex.called("start")
    assert starts.index(a) < starts.index(b) < starts.index(c)
    assert node.engine.begin_waiting() == 0


async def test_a_timer_woken_early_by_a_clock_step_back_waits_the_rest(node, clock):
    jid = await node.submit(BeginTime=now_usec() + 50_000)
    clock.advance(-HOUR)  # the wall clock stepped back an hour
    sentinel = await node.submit(Hold=True)
    await wait(lambda: node.engine._begin_timer is not None and node.engine._begin_timer_at == node.job(jid).spec.begin_time
               and now_usec() > node.job(jid).spec.begin_time + 100_000, "the first timer to have passed")
    assert node.state(jid) == (P, Reason.BEGIN_TIME), "woken early, it started"
    clock.advance(HOUR)
    node.engine.clock_stepped()
    await node.running(jid)
    assert node.state(sentinel)[0] == H


async def test_begin_time_survives_a_restart_hold_release_and_cancel(node, clock):
    a = await node.submit(BeginTime=clock() + HOUR)
    b = await node.submit(BeginTime=clock() + HOUR)
    node = await node.restart()
    assert node.state(a) == (P, Reason.BEGIN_TIME) and node.state(b) == (P, Reason.BEGIN_TIME)
    assert (await node.durable(a)).spec.begin_time == node.job(a).spec.begin_time
    await node.engine.hold(a, CALLER)
    assert node.state(a) == (H, Reason.HELD)
    await node.engine.cancel(b, CALLER)
    assert node.state(b) == (X, Reason.CANCELLED)
    await node.engine.release(a, CALLER)
    assert node.state(a) == (P, Reason.BEGIN_TIME)
    clock.advance(HOUR + 1_000_000)
    node.engine.clock_stepped()
    await node.running(a)
    assert b not in node.ex.called("start")


async def test_a_begin_time_past_means_now_and_an_absurd_one_is_refused(node):
    jid = await node.submit(BeginTime=1)
    await node.running(jid)
    with pytest.raises(InvalidArgument, match="BeginTime: .*10 years"):
        await node.submit(BeginTime=2**63)


async def test_afterany_runs_after_a_failure_and_afternotok_only_after_one(node):
    a = await node.submit()
    await node.running(a)
    any_ = await node.submit(AfterAny=[a])
    notok = await node.submit(AfterNotOk=[a])
    assert node.state(any_) == (P, Reason.DEPENDENCY) and node.state(notok) == (P, Reason.DEPENDENCY)
    node.ex.exit(a, 3)
    await node.running(any_, notok)
    b = await node.submit()
    await node.running(b)
    never = await node.submit(AfterNotOk=[b])
    node.ex.exit(b, 0)
    assert node.state(never) == (F, Reason.DEPENDENCY) and never not in node.ex.called("start")
    assert node.job(any_).spec.after_any == [a]
    with pytest.raises(InvalidArgument, match="AfterAny: job 999 does not exist"):
        await node.submit(AfterAny=[999])
