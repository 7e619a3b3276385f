"""Arrays as one record (engine/arrays.py): ranges that never expand, a million tasks in one Submit,
tasks made jobs as they can start, whole-array verbs, restarts, and the per-user caps."""

from __future__ import annotations

import json
import time

import pytest
from dbus_fast import Variant

from schedd.core.engine import Caller
from schedd.core.model import JobState, Reason
from schedd.errors import AccessDenied, InvalidArgument, NotFound
from schedd.protocol import TaskRanges

from test_engine import CALLER, ME, Node, make_node, node, spec, wait  # noqa: F401 - fixtures too

P, H, R = JobState.PENDING, JobState.HELD, JobState.RUNNING
C, X = JobState.COMPLETED, JobState.CANCELLED


# -- ranges ------------------------------------------------------------------------------------


def test_ranges_parse_count_and_index_without_listing_the_tasks():
    t = TaskRanges.parse("1-1000000%8")
    assert (t.count, t.cap, t.task_at(0), t.task_at(999_999), t.index_of(1000), t.index_of(0)) == \
        (1_000_000, 8, 1, 1_000_000, 999, None)
    assert len(t.ranges) == 1  # one tuple, not a million ids
    big = TaskRanges.parse("0-4294967294")  # more ids than memory could list: still instant
    assert big.count == 4_294_967_295 and big.task_at(big.count - 1) == 4_294_967_294
    t = TaskRanges.parse("0,3,5-7")
    assert list(t) == [0, 3, 5, 6, 7] and [t.task_at(i) for i in range(5)] == [0, 3, 5, 6, 7]
    assert [t.index_of(i) for i in (0, 1, 3, 7, 8)] == [0, None, 1, 4, None]
    t = TaskRanges.parse("0-15:4")
    assert list(t) == [0, 4, 8, 12] and t.index_of(8) == 2 and t.index_of(9) is None


def test_interleaved_stepped_ranges_are_one_array():
    t = TaskRanges.parse("0-10:2,1-11:2")  # Slurm takes it: the evens and the odds, no task twice
    assert t.count == 12 and sorted(t) == list(range(12))
    assert all(t.index_of(t.task_at(i)) == i for i in range(t.count)) and t.index_of(12) is None
    assert t.format() == "0-10:2,1-11:2"
    t = TaskRanges.parse("0-99:3,1-99:3,2-99:3")
    assert sorted(t) == list(range(100)) and all(t.index_of(t.task_at(i)) == i for i in range(100))
    woven = ",".join(f"{k}-{k + 500_000}:500" for k in range(500))  # 124,750 pairs to compare
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="more than 100000 pairs of ranges interleave"):
        TaskRanges.parse(woven)
    assert time.perf_counter() - t0 < 2
    assert TaskRanges.parse(woven, max_ranges=0).count == 500 * 1001  # a stored record loads whatever it is


def test_ranges_fold_back_to_slurm_text():
    assert TaskRanges.parse("1-1000000%8").format([(4, 1_000_000)]) == "5-1000000%8"
    assert TaskRanges.parse("0,3,5-7").format() == "0,3,5-7"
    assert TaskRanges.parse("0,3,5-7").format([(1, 3), (4, 5)], cap=False) == "3,5,7"
    assert TaskRanges.parse("0-15:4").format([(1, 4)]) == "4-12:4"
    assert TaskRanges.parse("1,2,3,9").format() == "1-3,9"


@pytest.mark.parametrize("text, words", [
    ("1-", "give task ids like"), ("x", "give task ids like"), ("5-3", "from low to high"),
    ("1-10,5-6", "overlap"), ("1-4%0", "after %"), ("0-1000000", "at most 1000000"), ("", "give task ids"),
    ("1-5%", "after %"), ("1-5%²", r"after % .*digits 0-9"), ("1-²", "digits 0-9"),
    ("0-10:2,4-20:4", r"overlap \(both have task 4\)"), ("0-15:4,2-30:6", "both have task 8"),
])
def test_bad_ranges_say_what_is_wrong(text, words):
    with pytest.raises(ValueError, match=words):
        TaskRanges.parse(text, 1_000_000)


# -- engine ------------------------------------------------------------------------------------


async def submit_array(node: Node, tasks: str, caller: Caller = CALLER, **keys) -> int:
    return (await node.engine.submit(spec(ArrayTasks=tasks, **keys), caller)).id


def describe(node: Node, aid: int) -> str:
    e = node.engine
    rec = e._arrays.get(aid)
    return (f"record {rec and (rec.left, rec.state, rec.live)} jobs "
            f"{[(j.id, j.state.value, j.id in node.host.units) for j in jobs_of(node, aid) if not j.state.terminal]}"
            f" loading={e.loading_pending} queued={len(e.scheduler)}")


def jobs_of(node: Node, aid: int) -> list:
    return [j for j in node.engine.jobs.values() if j.array_job_id == aid]


async def test_a_million_tasks_are_one_submit_and_cost_a_record(make_node):
    node = await make_node(max_pending_per_user=2_000_000)  # the cap counts every task as a job
    t0 = time.perf_counter()
    aid = await submit_array(node, "1-1000000", Hold=True)
    took = time.perf_counter() - t0
    assert took < 1.0, f"a 1M-task array took {took:.2f}s to submit"
    e = node.engine
    assert e.counts() == (1_000_000, 0) and len(e.jobs) == 0  # counted, nothing in memory
    last = e.get(aid + 999_999)
    assert (last.state, last.array_job_id, last.spec.array_task_id) == (H, aid, 1_000_000)
    assert e.on_disk(aid + 500) is not None  # its D-Bus path answers
    with pytest.raises(NotFound):
        e.get(aid + 1_000_000)
    assert [j.spec.array_task_id for j in e.list(None, None, aid + 10, 3)] == [12, 13, 14]
    (row,) = e.list(None, None, 0, 100, fold=True)
    assert row.id == aid and e.folded(row.id) == "1-1000000"
    assert e.list(None, None, aid, 100, fold=True) == []  # the folded row was the page before
    assert len(e.jobs) == 0  # reading made no jobs
    # The next job's id comes after the reserved block.
    assert (await node.engine.submit(spec(), CALLER)).id == aid + 1_000_000


async def test_tasks_become_jobs_as_they_can_start_and_the_cap_holds(node):
    aid = await submit_array(node, "0-39%2")
    e = node.engine
    done: set[int] = set()
    most = 0

    def running() -> list:
        return [j for j in jobs_of(node, aid) if j.state == R and j.id in node.host.units]

    while len(done) < 40:
        await wait(lambda: running(), f"a task running ({len(done)} of 40 done)")
        await wait(lambda: len(running()) == min(2, 40 - len(done)), "the cap's worth running")
        live = [j for j in jobs_of(node, aid) if not j.state.terminal]
        most = max(most, len(running()))
        assert len(live) <= 4, [(j.id, j.state) for j in live]  # the cap's worth running, and its window
        assert len([j for j in live if j.state == R]) <= 2
        for j in running():
            node.ex.exit(j.id, 0)
            done.add(j.id)
            await node.reach(j.id, C)
    assert most == 2
    await wait(lambda: all(node.job(aid + i).state == C for i in range(40)), "all tasks completed")
    assert sorted(node.job(aid + i).spec.array_task_id for i in range(40)) == list(range(40))
    assert e.counts() == (0, 0)
    await wait(lambda: not e._arrays, "the record to go once every task is a job")
    await node.store.background(lambda: None)  # the record's deletion, queued before, is done
    assert node.store.load_arrays() == []


async def test_cancel_hold_release_act_on_the_whole_array(node):
    aid = await submit_array(node, "1-100000%2")
    e = node.engine
    await node.running(aid, aid + 1)
    await e.hold_array(aid, CALLER)
    assert e.counts()[0] == 100_000 - 2 and e.get(aid + 50_000).state == H
    assert all(j.state in (H, R) for j in jobs_of(node, aid))
    await e.release_array(aid, CALLER)
    assert e.get(aid + 50_000).state == P
    await e.cancel_array(aid, CALLER)
    await wait(lambda: all(j.state == X for j in jobs_of(node, aid)), "every job of the array cancelled")
    assert e.counts() == (0, 0)
    assert e.get(aid + 99_999).state == X and e.get(aid + 99_999).reason == "cancelled"
    assert e.list(["PENDING", "HELD"], None, 0, 10) == []
    # One signal stood for the tasks that were no job yet; each job had its own.
    assert node.events.added and len(node.events.added) < 10


async def test_a_task_named_by_a_verb_becomes_a_job_first(node):
    aid = await submit_array(node, "0-999", Hold=True)
    e = node.engine
    await e.release(aid + 500, CALLER)
    job = await node.reach(aid + 500, R)
    assert job.spec.array_task_id == 500 and aid + 500 in node.events.added
    assert e.counts() == (999, 1)
    other = Caller(uid=ME + 1, sender=":1.9")
    with pytest.raises(AccessDenied):
        await e.cancel(aid + 7, other)
    with pytest.raises(AccessDenied):
        await e.cancel_array(aid, other)
    assert e.get(aid + 7).state == H and aid + 7 not in e.jobs  # a stranger's verb made no job
    with pytest.raises(InvalidArgument, match="task 3 of array"):
        await e.cancel_array(aid + 3, CALLER)


async def test_restart_mid_array_loses_and_repeats_no_task(node):
    aid = await submit_array(node, "0-29%3")
    started: list[int] = []

    async def step(n: Node, k: int) -> None:
        for _ in range(k):
            await wait(lambda: any(j.state == R and j.id in n.host.units and j.id not in started
                                   for j in jobs_of(n, aid)), f"a task running: {len(started)} {describe(n, aid)}")
            j = next(j for j in jobs_of(n, aid) if j.state == R and j.id in n.host.units and j.id not in started)
            started.append(j.id)
            n.ex.exit(j.id, 0)
            await n.reach(j.id, C)

    await step(node, 7)
    node = await node.restart()
    await step(node, 8)
    # A crash between a task's row and the record: the record still names the task, the row wins.
    rec = node.engine._arrays[aid]
    row = list(node.engine._array_row(rec))
    row[4] = json.dumps([[0, 30]])  # as if no task had become a job
    await node.store.put_array(tuple(row))
    await node.crash()
    node = await Node(node.state_dir, node.host, node.registry, **node.config).open()
    await step(node, 30 - len(started))
    assert sorted(started) == list(range(aid, aid + 30))  # each task ran exactly once
    e = node.engine
    await wait(lambda: e.counts() == (0, 0), f"nothing left queued: {e.counts()} {e._array_left} "
               f"{[(j.id, j.state) for j in e.jobs.values() if not j.state.terminal]}")


async def test_per_user_cap_counts_tasks_that_are_no_job_yet(make_node):
    node = await make_node(max_pending_per_user=1000)
    with pytest.raises(InvalidArgument, match="max_pending_per_user"):
        await submit_array(node, "1-1001", Hold=True)
    aid = await submit_array(node, "1-990", Hold=True)
    assert node.engine.quotas.jobs(ME) == 990
    with pytest.raises(InvalidArgument, match="max_pending_per_user"):
        await node.engine.submit_many([spec(Hold=True) for _ in range(11)], CALLER)
    await node.engine.cancel_array(aid, CALLER)
    assert node.engine.quotas.jobs(ME) == 0


async def test_bad_array_submits_are_refused_with_a_reason(make_node):
    node = await make_node(max_array_tasks=100)
    with pytest.raises(InvalidArgument, match="ArrayTasks: .*at most 100"):
        await submit_array(node, "1-101")
    with pytest.raises(InvalidArgument, match="ArrayTasks: .*give task ids"):
        await submit_array(node, "one-two")
    with pytest.raises(InvalidArgument, match="do not give ArrayTaskId"):
        await node.engine.submit(spec(ArrayTasks="1-3", ArrayTaskId=1), CALLER)
    with pytest.raises(InvalidArgument, match="one Submit of its own"):
        await node.engine.submit_many([spec(ArrayTasks="1-3"), spec()], CALLER)
    assert node.engine.counts() == (0, 0)


async def test_the_old_per_spec_array_still_works(node):
    ids = [j.id for j in await node.engine.submit_many([spec(ArrayTaskId=t, ArrayMaxRunning=1) for t in range(3)],
                                                       CALLER)]
    await node.running(ids[0])
    assert node.job(ids[1]).state == P and node.job(ids[2]).array_job_id == ids[0]
    await node.engine.cancel_array(ids[0], CALLER)
    await wait(lambda: all(node.job(i).state == X for i in ids), "the SubmitMany array cancelled")


class ArraySignals:
    """A listener that hears the record's one signal per whole-array change (as the D-Bus adapter does)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, JobState, int]] = []

    def array_changed(self, job, tasks: int) -> None:
        self.calls.append((job.id, job.state, tasks))

    def __getattr__(self, name):  # every other event: nothing to do here
        return lambda *a, **k: None


async def test_cancelling_a_million_tasks_is_one_signal_and_fast(make_node):
    node = await make_node(max_pending_per_user=2_000_000)
    heard = ArraySignals()
    node.engine.listeners.append(heard)
    aid = await submit_array(node, "1-1000000%1")
    await node.running(aid)
    t0 = time.perf_counter()
    await node.engine.cancel_array(aid, CALLER)
    took = time.perf_counter() - t0
    assert took < 1.0, f"CancelArray of 1M tasks took {took:.2f}s"
    first_left = min(i for i in range(aid, aid + 10) if i not in node.engine.jobs)
    assert heard.calls == [(first_left, X, 1_000_000 - (first_left - aid))]
    await wait(lambda: node.job(aid).state == X, "the running task cancelled")
    assert node.events.transitions.count((aid, R, X, "cancelled")) == 1  # a job's own signal, as ever
    assert node.engine.counts() == (0, 0)


async def test_array_tasks_wait_for_their_dependencies(node):
    dep = await node.submit()
    await node.running(dep)
    aid = await submit_array(node, "0-9%2", After=[dep])
    await wait(lambda: jobs_of(node, aid), "tasks made jobs")
    assert all(j.state == P for j in jobs_of(node, aid)) and not node.ex.called("start")[1:]
    made = {j.id for j in jobs_of(node, aid)}
    assert aid + 9 not in made  # a task that is no job yet says why it waits as its made siblings do
    assert {node.engine.get(aid + i).reason for i in range(10)} == {Reason.DEPENDENCY}
    node.ex.exit(dep, 0)
    await wait(lambda: all(j.state == R for j in jobs_of(node, aid) if j.id in (aid, aid + 1)), "tasks running")
    assert node.engine.get(aid + 9).reason == ""


async def test_a_long_chain_of_arrays_each_after_the_last_answers_without_recursing(make_node):
    node = await make_node(max_pending_per_user=10_000)
    first = await node.submit(Hold=True)
    aids = [first]
    for _ in range(1_500):  # deeper than Python's recursion limit, were a task's dependencies asked in turn
        aids.append(await submit_array(node, "0-1%1", After=[aids[-1] + 1 if len(aids) > 1 else first]))
    e = node.engine
    assert not any(a + 1 in e.jobs for a in aids[1:])  # %1: each array's second task is no job yet
    assert e.get(aids[-1] + 1).reason == Reason.DEPENDENCY and e.get(aids[-1]).state == P


# -- through the D-Bus adapter (unconnected bus, as test_dbus_jobs) ------------------------------


async def test_the_bus_answers_for_tasks_folds_them_and_acts_on_the_array(engine):
    from dbus_fast import MessageType

    from schedd import MANAGER_IFACE, MANAGER_PATH, job_path
    from types import SimpleNamespace

    from schedd.api.dbus.service import DBusService
    from test_dbus_jobs import OWNER, PROPS, SENDERS, Recorder, _settle, call

    rec = Recorder()
    engine.executor = SimpleNamespace(name="systemd")
    svc = DBusService(engine, rec.bus)
    svc._uids.update(SENDERS)
    svc._operators.update({u: (False, float("inf")) for u in SENDERS.values() if u})
    engine.authorize_other = None
    aid = (await engine.submit(spec(ArrayTasks="0-99999%4", Hold=True, WorkingDirectory="/"), Caller(OWNER))).id

    async def ask(msg):
        rec.sent.clear()
        rec.bus._process_message(msg)
        (reply,) = await _settle(rec)
        return reply

    reply = await ask(call(job_path(aid + 99_999), PROPS, "GetAll", "s", ["org.schedd.Schedd1.Job"]))
    props = {k: v.value for k, v in reply.body[0].items()}
    assert (props["Id"], props["State"], props["ArrayTaskId"], props["ArrayJobId"]) == (aid + 99_999, "HELD", 99_999, aid)
    (intro,) = rec.ask(call(job_path(aid + 5), "org.freedesktop.DBus.Introspectable", "Introspect"))
    assert 'interface name="org.schedd.Schedd1.Job"' in intro.body[0]
    assert engine.on_disk_by_owner()[JobState.HELD, props["UserName"]] == 100_000  # schedd_jobs counts them
    reply = await ask(call(MANAGER_PATH, MANAGER_IFACE, "ListJobs", "a{sv}", [{"FoldArrays": Variant("b", True)}]))
    assert [(r["Id"].value, r["ArrayTasks"].value) for r in reply.body[0]] == [(aid, "0-99999%4")]
    reply = await ask(call(MANAGER_PATH, MANAGER_IFACE, "ListJobs", "a{sv}", [{"Limit": Variant("u", 5)}]))
    assert [r["ArrayTaskId"].value for r in reply.body[0]] == [0, 1, 2, 3, 4] and "ArrayTasks" not in reply.body[0][0]
    denied = await ask(call(MANAGER_PATH, MANAGER_IFACE, "CancelArray", "t", [aid], sender=":1.11"))
    assert denied.error_name == "org.schedd.Schedd1.Error.AccessDenied"
    done = await ask(call(MANAGER_PATH, MANAGER_IFACE, "CancelArray", "t", [aid]))
    assert done.message_type == MessageType.METHOD_RETURN
    signals = [m.body for m in rec.sent if m.member == "JobStateChanged"]
    assert signals == [[aid, job_path(aid), "CANCELLED", "cancelled"]]  # one for the 100,000 tasks
    assert engine.counts() == (0, 0)


async def test_release_array_reaches_held_tasks_kept_on_disk(node):
    jobs = await node.engine.submit_many([spec(ArrayTaskId=t, Hold=True) for t in range(3)], CALLER)
    ids = [j.id for j in jobs]
    assert not any(i in node.engine.jobs for i in ids)  # plain held jobs leave memory (loading.py)
    await node.engine.release_array(ids[0], CALLER)
    await node.running(*ids)
    with pytest.raises(NotFound, match="no array"):
        await node.engine.cancel_array(ids[-1] + 100, CALLER)


async def test_records_survive_a_restart_held_and_cancelled(make_node):
    node = await make_node(max_pending_per_user=2_000_000)
    held = await submit_array(node, "1-1000000", Hold=True)
    gone = await submit_array(node, "0-9", Hold=True)
    await node.engine.cancel_array(gone, CALLER)
    node = await node.restart()
    e = node.engine
    assert e.counts() == (1_000_000, 0) and e.quotas.jobs(ME) == 1_000_000
    assert e.get(held + 999_999).state == H and e.get(gone + 9).state == X
    assert (await node.engine.submit(spec(), CALLER)).id == gone + 10  # no id of a block given out again
    await e.release_array(held, CALLER)
    await wait(lambda: any(j.state == C or j.id in node.host.units for j in jobs_of(node, held)), "a task running")
    assert e.counts()[0] >= 999_990


async def test_a_crash_mid_batch_loses_and_repeats_no_task(make_node, tmp_path):
    """The record written while a batch of tasks is still being committed lists that batch: a crash
    then (the database copied as it is) recovers every task once."""
    import sqlite3
    import threading

    from schedd.executor.fake import FakeHost

    node = await make_node()
    e, store = node.engine, node.store
    aid = await submit_array(node, "0-99")
    await wait(lambda: sum(1 for j in jobs_of(node, aid) if j.state == R and j.id in node.host.units) >= 4,
               f"tasks running: {describe(node, aid)}")
    gate, commit = threading.Event(), store._commit

    def blocked(rows, groups):
        gate.wait(10)
        return commit(rows, groups)

    store._commit = blocked
    rec = e._arrays[aid]
    try:
        for j in [j for j in jobs_of(node, aid) if j.state == R]:
            node.ex.exit(j.id, 0)
        await wait(lambda: rec.busy, "a batch of tasks being committed")
        await e._persist(rec)  # what the delayed record write does meanwhile
        snap = tmp_path / "crash"
        snap.mkdir()
        src, dst = sqlite3.connect(store.path), sqlite3.connect(snap / "schedd.db")
        src.backup(dst)
        dst.close()
        src.close()
    finally:
        gate.set()
    crashed = await Node(snap, FakeHost(), [], **node.config).open()
    try:
        c = crashed.engine
        tasks = [c.get(i) for i in range(aid, aid + 100)]  # NotFound for a lost task
        assert [t.id for t in tasks] == list(range(aid, aid + 100))
        made = {j.id for j in c.jobs.values() if j.array_job_id == aid}
        again = [i for i in made if c._arrays[aid].has(i - aid)]
        assert not again, f"tasks both jobs and still in the record (would run twice): {again}"
    finally:
        await crashed.engine.shutdown()
        crashed.store.close()


async def test_a_purged_cancelled_array_never_gives_its_ids_out_again(make_node):
    node = await make_node(keep_finished_usec=1)  # a restart takes longer: it purges the record
    aid = await submit_array(node, "1-10", Hold=True)
    await node.engine.cancel_array(aid, CALLER)
    node = await node.restart()
    await node.store.background(lambda: None)
    assert node.store.load_arrays() == []
    node = await node.restart()
    assert (await node.engine.submit(spec(), CALLER)).id > aid + 9


# -- many ranges: bounded, and each costs once ---------------------------------------------------


def test_an_array_has_at_most_max_ranges_ranges_and_errors_stay_short():
    from schedd.protocol import MAX_RANGES

    ok = ",".join(str(2 * i) for i in range(MAX_RANGES))
    assert TaskRanges.parse(ok).count == MAX_RANGES
    with pytest.raises(ValueError, match=f"{MAX_RANGES + 1} comma-separated ranges; one array has at most "
                                         f"{MAX_RANGES}") as e:
        TaskRanges.parse(ok + ",99999")
    assert len(str(e.value)) < 300  # the input is not echoed whole
    with pytest.raises(ValueError, match="is not a task id") as e:
        TaskRanges.parse("x" * 100_000)
    assert len(str(e.value)) < 300
    with pytest.raises(ValueError, match=f"at most {40 * MAX_RANGES} characters") as e:
        TaskRanges.parse("0" * 1_000_000 + "1")  # one task, padded to a megabyte
    assert len(str(e.value)) < 300


async def test_ten_thousand_ranges_submit_record_and_fold_quickly(engine):
    """Bounds generous enough for a loaded machine, tight enough to catch a cost per range squared."""
    from types import SimpleNamespace

    from schedd import MANAGER_IFACE, MANAGER_PATH
    from schedd.api.dbus.service import DBusService
    from test_dbus_jobs import OWNER, SENDERS, Recorder, _settle, call

    text = ",".join(str(2 * i) for i in range(10_000))
    t0 = time.perf_counter()
    aid = (await engine.submit(spec(ArrayTasks=text + "%4", Hold=True, WorkingDirectory="/"), Caller(OWNER))).id
    submit = time.perf_counter() - t0
    rec = engine._arrays[aid]
    t0 = time.perf_counter()
    await engine._persist(rec)
    write = time.perf_counter() - t0
    rec2 = Recorder()
    engine.executor = SimpleNamespace(name="systemd")
    svc = DBusService(engine, rec2.bus)
    svc._uids.update(SENDERS)
    t0 = time.perf_counter()
    rec2.bus._process_message(call(MANAGER_PATH, MANAGER_IFACE, "ListJobs", "a{sv}", [{"FoldArrays": Variant("b", True)}]))
    (reply,) = await _settle(rec2)
    fold = time.perf_counter() - t0
    assert [(r["Id"].value, r["ArrayTasks"].value) for r in reply.body[0]] == [(aid, text + "%4")]
    for pos in range(1, 10_000, 2):  # every other task taken out (as made jobs): 5,000 left ranges to fold
        rec.take(pos)
    t0 = time.perf_counter()
    folded = engine.folded(aid)
    fragmented = time.perf_counter() - t0
    assert folded == ",".join(str(4 * i) for i in range(5_000)) + "%4"
    assert max(submit, write, fold) < 1, (submit, write, fold)
    assert fragmented < 0.3, fragmented  # ~0.01 s; from the first range on for each left range: ~0.6 s
    with pytest.raises(InvalidArgument, match="at most 10000"):
        await engine.submit(spec(ArrayTasks=text + ",99999", WorkingDirectory="/"), Caller(OWNER))


async def test_requeue_of_a_cancelled_task_that_never_ran_is_one_job(node):
    aid = await submit_array(node, "0-9", Hold=True)
    await node.engine.cancel_array(aid, CALLER)
    await node.engine.requeue(aid + 5, CALLER)

    def rows(n: Node) -> list[tuple[int, str]]:
        return [(j.id, j.state.value) for j in n.engine.list(None, None, 0, 100)]

    def check(n: Node) -> None:
        got = rows(n)
        assert [i for i, _ in got] == list(range(aid, aid + 10)), got  # each task once
        assert [s for i, s in got if i != aid + 5] == ["CANCELLED"] * 9, got
        assert dict(got)[aid + 5] in ("PENDING", "RUNNING") and n.engine.get(aid + 5).state in (P, R), got
        assert sum(n.engine.counts()) == 1

    check(node)
    node = await node.restart()
    check(node)


async def test_after_may_name_a_task_that_is_no_job_yet(node):
    e = node.engine
    aid = await submit_array(node, "0-9%1")
    await node.running(aid)
    waits = (await e.submit(spec(After=[aid + 5]), CALLER)).id  # task 5: in the record, no job yet
    doomed = (await e.submit(spec(After=[aid + 7]), CALLER)).id
    held = await submit_array(node, "0-3", Hold=True)
    also = (await e.submit(spec(After=[held + 2]), CALLER)).id
    assert (e.get(waits).state, e.get(doomed).state, e.get(also).state) == (P, P, P)
    node = await node.restart()  # the dependency on a record's task survives a restart
    e = node.engine
    assert (e.get(waits).state, e.get(doomed).state, e.get(also).state) == (P, P, P)
    await e.cancel_array(held, CALLER)  # its tasks end without becoming jobs: their dependents fail
    await wait(lambda: e.get(also).state == JobState.FAILED, f"dependent of a cancelled task failed: {e.get(also)}")
    assert e.get(also).reason == "dependency"
    await e.cancel(aid + 7, CALLER)
    await wait(lambda: e.get(doomed).state == JobState.FAILED, "dependent of a cancelled task failed")
    assert e.get(waits).state == P


@pytest.mark.parametrize("how", ["write fails", "store closing"])
async def test_an_array_verb_whose_record_cannot_be_written_fails_and_changes_nothing(make_node, how):
    import asyncio

    from schedd.errors import SchedError

    node = await make_node()
    e = node.engine
    aid = await submit_array(node, "0-9", Hold=True)
    before = (e.counts(), e.quotas.jobs(ME), e.quotas.bytes(ME), e.get(aid + 9).state)
    put = node.store.put_array

    def broken(row):
        if how == "store closing":
            raise RuntimeError("cannot schedule new futures after shutdown")
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(OSError("I/O error"))
        return fut

    node.store.put_array = broken
    for verb in (e.cancel_array, e.release_array):
        with pytest.raises(SchedError, match=f"cannot record.*array {aid}"):
            await verb(aid, CALLER)
        assert (e.counts(), e.quotas.jobs(ME), e.quotas.bytes(ME), e.get(aid + 9).state) == before
    node.store.put_array = put
    await e.cancel_array(aid, CALLER)  # and once it can be written, it is
    assert e.get(aid + 9).state == X and e.counts() == (0, 0) and e.quotas.bytes(ME) == 0
    node = await node.restart()
    assert node.engine.get(aid + 9).state == X


def test_list_jobs_budget_counts_the_folded_array_text():
    from schedd.api.dbus.service import row_bytes, within_budget
    from schedd.core.model import Job

    jobs = [Job(id=i, spec=spec_obj) for i, spec_obj in enumerate([_plain_spec()] * 3, 1)]
    each = row_bytes(jobs[0])
    assert within_budget(jobs, budget=3 * each) == jobs
    # each row also carries a 100 kB ArrayTasks: two fit in 250 kB, not three
    assert within_budget(jobs, budget=250_000, extra=lambda j: 100_000) == jobs[:2]


def _plain_spec():
    from schedd.core.model import JobSpec

    return JobSpec(command=["true"], name="true", cpus=1, memory=1 << 20)


async def test_a_failed_batch_leaves_every_task_in_the_durable_record(make_node):
    import threading

    node = await make_node()
    e, store = node.engine, node.store
    aid = await submit_array(node, "0-49")
    await wait(lambda: sum(1 for j in jobs_of(node, aid) if j.state == R) >= 4, f"running: {describe(node, aid)}")
    gate, commit = threading.Event(), store._commit

    def failing(rows, groups):  # the batch's commit fails, once the record has been written meanwhile
        gate.wait(10)
        return dict.fromkeys(rows, OSError("I/O error"))

    store._commit = failing
    rec = e._arrays[aid]
    for j in [j for j in jobs_of(node, aid) if j.state == R]:
        node.ex.exit(j.id, 0)
    await wait(lambda: rec.busy, "a batch of tasks being committed")
    await e._persist(rec)
    batch = sorted(rec.busy)
    gate.set()
    await wait(lambda: not rec.busy, "the batch failed")
    assert all(rec.has(i - aid) for i in batch)  # back in the record, in memory ...
    store._commit = commit
    await node.crash()
    node = await Node(node.state_dir, node.host, node.registry, **node.config).open()
    e = node.engine
    assert [e.get(i).id for i in range(aid, aid + 50)] == list(range(aid, aid + 50))  # ... and on disk
