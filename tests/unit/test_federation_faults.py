"""The federation protocol under faults (issue 18): three real nodes in one process on loopback, jobs on
fake executors, stalls, kills and restarts, and lying links injected at the seams (tests/unit/fedsim.py).
Time is real (100 ms heartbeats): a seed fixes the fault plan and every per-message choice, not the
interleaving, so a replay reproduces the plan and most often the outcome.

Seeded random scenarios (SCHEDD_FEDSIM_SEEDS=N runs N more than the fixed list) and hand-written
cases; each checks, from the program starts the executors saw:
- no acknowledged job is lost: each ends, in the same state at its origin and where its current copy ran;
- a job runs twice only when it was granted on a node its origin judged down, with Requeue=true
  and Restarts >= 1 (so one that was not running on a failed node runs at most once);
- no job starts again after its origin had its completion (nor after any node had it, unless the
  double run was the allowed kind);
- a node just back from its own stall does not judge a healthy peer down.
A failure prints the seed and the fault plan: replay it with SCHEDD_FEDSIM_SEED=<seed>.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest
from dbus_fast import Variant

from fedsim import MIB, Episode, Sim, random_plan, until, user_uid
from schedd.core.engine import Caller
from schedd.core.model import JobState

SEEDS = [1, 2, 3, 4, 5, 6, 7, 8]
if os.environ.get("SCHEDD_FEDSIM_SEED"):
    SEEDS = [int(s) for s in os.environ["SCHEDD_FEDSIM_SEED"].split(",")]
SEEDS += [1000 + i for i in range(int(os.environ.get("SCHEDD_FEDSIM_SEEDS", "0") or 0))]


def props(node: str, requeue: bool = True) -> dict:
    return {"Command": Variant("as", ["true"]), "Memory": Variant("t", 64 * MIB), "Node": Variant("s", node),
            "Requeue": Variant("b", requeue)}


async def finish(sim: Sim, timeout: float = 12.0) -> None:
    """Wait for every job to end and agree, then assert the rules; print one line either way."""
    try:
        await sim.settle(timeout)
        bad = sim.check()
    finally:
        print(sim.describe() if os.environ.get("SCHEDD_FEDSIM_VERBOSE") else sim.summary())
    assert not bad, "\n".join(bad) + "\n" + sim.describe()


async def b_busy(tmp_path: Path) -> Sim:
    """Six 0.6 s jobs of a for b, which has 2 CPUs: it runs two copies and holds four waiting."""
    sim = Sim(tmp_path, 0, cpus=2)
    await sim.start()
    try:
        sim.watch_completions()
        sim.runtimes.update({("a", i): 0.6 for i in range(1, 9)})
        for _ in range(6):
            await sim.submit("a", "b", True, user_uid())
        await until(lambda: len(sim.nodes["b"].host.units) == 2, "b runs two copies", 5.0)
    except BaseException:
        await sim.stop()
        raise
    return sim


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_faults_keep_the_rules(tmp_path: Path, seed: int):
    sim = Sim(tmp_path, seed, cpus=1)  # one CPU a node: copies wait, and a stall finds some waiting
    sim.plan = random_plan(sim.rng, sim.names)
    await sim.start()
    sim.watch_completions()
    try:
        sim.t0 = asyncio.get_running_loop().time()
        await asyncio.gather(sim.run_plan(), sim.submit_random(count=12, within=1.4))
        await finish(sim)
    finally:
        await sim.stop()


async def test_the_origin_stalled_while_its_copies_run_elsewhere_runs_nothing_twice(tmp_path: Path):
    """Issue 18, case 1: a's daemon stops while b and c run and complete its jobs; after the thaw a
    must read their completions, not count its own silence as their death."""
    sim = Sim(tmp_path, 0, cpus=4)
    await sim.start()
    sim.watch_completions()
    try:
        uid = user_uid()
        for i in range(8):
            await sim.submit("a", "b" if i % 2 else "c", True, uid)
        await until(lambda: sum(map(len, sim.starts.values())) >= 4, "four jobs started elsewhere", 5.0)
        sim.plan = [Episode(sim.now(), 1.2, "stall", node="a")]
        await sim.run_plan()
        await finish(sim)
        assert not [d for d in sim.downs if d.judge == "a"], "a judged a peer down for its own stall"
        assert all(len(s) == 1 for s in sim.starts.values())
        assert all(sim.record(k).restarts == 0 for k in sim.jobs)
    finally:
        await sim.stop()


async def test_a_run_node_stalled_with_waiting_copies_never_starts_them_after_the_thaw(tmp_path: Path):
    """Issue 18, case 2: b stops while it runs two copies and holds others waiting; a judges it down and
    places the waiting ones elsewhere. After the thaw b must not start its stale copies."""
    sim = await b_busy(tmp_path)
    try:
        b_copies = {j.id for j in sim.nodes["b"].engine.jobs.values() if j.state == JobState.PENDING}
        assert len(b_copies) == 4
        sim.plan = [Episode(sim.now(), 1.2, "stall", node="b")]
        await sim.run_plan()
        await finish(sim)
        assert [d.peer for d in sim.downs if d.judge == "a"] == ["b"]
        late = [s for k in sim.jobs for s in sim.starts.get(k, []) if s.node == "b" and s.local_id in b_copies]
        assert not late, f"b started stale copies after its thaw: {late}"
        twice = [k for k, s in sim.starts.items() if len(s) > 1]
        assert len(twice) <= 2  # only the two that were running on b
    finally:
        await sim.stop()


async def test_a_forward_whose_answer_is_lost_is_adopted_and_runs_once(tmp_path: Path):
    sim = Sim(tmp_path, 0)
    await sim.start()
    sim.watch_completions()
    try:
        sim.lose_once[("a", "b", "POST /jobs")] = 3  # every try of the forward: the copy is recorded there
        await sim.submit("a", "b", True, user_uid())
        (key,) = sim.jobs
        await finish(sim)
        job = sim.record(key)
        assert sim.fault_counts["answers lost"] == 3
        assert job.state == JobState.COMPLETED and job.remote_node == "b"
        assert [s.node for s in sim.starts[key]] == ["b"]
        assert len([j for j in sim.nodes["b"].engine.jobs.values() if j.origin_node == "a"]) == 1
    finally:
        await sim.stop()


async def test_a_job_without_requeue_on_a_node_judged_down_ends_the_same_at_origin_and_node(tmp_path: Path):
    """Requeue=false, running on b when b stalls: a judges b down and fails the job (node-failure);
    when b is back, the job's one run must be recorded alike on both nodes."""
    sim = Sim(tmp_path, 0)
    await sim.start()
    sim.watch_completions()
    try:
        sim.runtimes[("a", 1)] = 1.0
        await sim.submit("a", "b", False, user_uid())
        (key,) = sim.jobs
        await until(lambda: sim.starts.get(key), "the job started on b", 5.0)
        sim.plan = [Episode(sim.now(), 0.8, "stall", node="b")]
        await sim.run_plan()
        await finish(sim)
        job = sim.record(key)
        assert job.reason == "node-failure" and job.restarts == 0  # the same state on b: finish() checked it
        assert len(sim.starts[key]) == 1
    finally:
        await sim.stop()


async def test_a_run_node_killed_and_brought_back_with_its_state_runs_nothing_else_twice(tmp_path: Path):
    """b is killed (its programs go on) while it runs two copies and holds others; a judges it down and
    places them elsewhere. The daemon comes back on the same machine and state: only the two that ran
    may run again elsewhere, and b's stale copies stop before it starts anything else of a's."""
    sim = await b_busy(tmp_path)
    try:
        sim.plan = [Episode(sim.now(), 0.7, "restart", node="b")]
        await sim.run_plan()
        await finish(sim)
        assert [d.peer for d in sim.downs if d.judge == "a"] == ["b"]
        assert len([k for k, s in sim.starts.items() if len(s) > 1]) <= 2
    finally:
        await sim.stop()
