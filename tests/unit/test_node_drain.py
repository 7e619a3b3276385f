"""A drain of one node on the real Engine and Store (fake executor): nothing new starts, what runs
finishes, queued jobs wait with reason `drained`, resume starts them, and the drain survives a restart."""

from __future__ import annotations

from test_engine import Node, make_node, node, wait  # noqa: F401 - fixtures too

from schedd.core.model import JobState, Reason

P, R, C = JobState.PENDING, JobState.RUNNING, JobState.COMPLETED


async def test_a_drained_node_starts_nothing_and_running_jobs_finish(node: Node):
    e = node.engine
    running = await node.submit(CPUs=4)
    await node.running(running)
    queued = await node.submit()
    await e.set_drain("kernel update", "root on n1")
    assert e.drain_state() == "draining"
    await wait(lambda: node.state(queued) == (P, Reason.DRAINED), "the queued job to wait, drained")
    node.ex.exit(running, 0)
    await node.reach(running, C)
    assert e.drain_state() == "drained" and e.ledger.free_cpus == 4
    late = await node.submit()
    await wait(lambda: node.state(late) == (P, Reason.DRAINED), "a job submitted while drained to wait")
    assert node.job(queued).state == P  # room for it, but drained
    await e.clear_drain("root on n1")
    assert e.drain_state() == ""
    await node.running(queued, late)


async def test_a_drain_is_kept_across_a_restart(node: Node):
    await node.engine.set_drain("disk swap", "alice on n1")
    node2 = await node.restart()
    d = node2.engine.drain
    assert d is not None and (d.reason, d.by) == ("disk swap", "alice on n1")
    assert node2.engine.drain_state() == "drained"
    jid = await node2.submit()
    await wait(lambda: node2.state(jid) == (P, Reason.DRAINED), "a job to wait on the drained node")
    await node2.engine.clear_drain("root")
    await node2.running(jid)
    node3 = await node2.restart()
    assert node3.engine.drain is None
