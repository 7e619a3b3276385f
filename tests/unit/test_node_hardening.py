"""What a holder of the cluster token can and cannot do to the membership (schedd.cluster.membership):
take over a down member's name, flood the table, announce a URL to a metadata service, resurrect a
removed node through a seed, or put words in an operator's mouth through a drain. Also the operator's
side on D-Bus (who may drain, what a reason may hold) and arrays on a drained node."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_federation_api import AUTH, api  # noqa: F401 - the fixture: node b, with a in its [[peers]]
from test_engine import CALLER, Node, make_node, node, spec, wait  # noqa: F401 - fixtures too
from test_node_membership import LOAD, claim

from schedd.api.dbus.service import DBusService
from schedd.cluster import peers as peers_mod
from schedd.cluster.membership import parse_members
from schedd.core.engine import Caller
from schedd.core.model import JobState, Reason
from schedd.config import ConfigError
from schedd.errors import AccessDenied, InvalidArgument, InvalidState, NotFound


async def join(api, name: str, url: str):
    return await api.post("/api/v1/join", json=claim(name, url), headers=AUTH)


async def test_a_down_members_name_cannot_be_taken_from_another_url(api):
    """c is briefly down: a token holder claiming 'c' at its own URL would get c's forwards, fences and
    output reads, and lock c out when it returns (its own beats would be 'a second node')."""
    fed = api.fed
    assert (await join(api, "c", "http://127.0.0.1:7003")).status == 200
    fed.peers["c"].up = False  # silent for 3 intervals
    for path in ("/api/v1/join", "/api/v1/heartbeat"):
        r = await api.post(path, json=claim("c", "http://127.0.0.1:6666"), headers=AUTH)
        assert r.status == 409, (path, await r.text())
        assert "schedctl node remove c" in (await r.json())["message"]
    assert fed.peers["c"].url == "http://127.0.0.1:7003" and not fed.peers["c"].up
    await fed.engine.store.background(lambda: None)
    assert dict((n, u) for n, u, _, _ in fed.engine.store.load_members())["c"] == "http://127.0.0.1:7003"
    # c itself comes back at its URL; a node that really moved is removed first, then joins again.
    assert (await join(api, "c", "http://127.0.0.1:7003")).status == 200 and fed.peers["c"].up
    fed.peers["c"].up = False
    await fed.remove_node("c")
    assert (await join(api, "c", "http://127.0.0.1:7005")).status == 200
    assert fed.peers["c"].url == "http://127.0.0.1:7005"
    await fed.net.stop()


async def test_a_flood_of_joins_and_gossip_stops_at_the_cap(api, monkeypatch):
    monkeypatch.setattr(peers_mod, "MAX_MEMBERS", 5)
    fed = api.fed
    codes = [(await join(api, f"n{i}", f"http://127.0.0.1:{8000 + i}")).status for i in range(8)]
    assert codes == [200] * 4 + [409] * 4  # a, and 4 joiners
    r = await join(api, "n9", "http://127.0.0.1:8009")
    assert "its most (5)" in (await r.json())["message"]
    assert len(fed.peers) == 5
    fed.net.merge([(f"g{i}", f"http://127.0.0.1:{9000 + i}") for i in range(50)], [])
    assert len(fed.peers) == 5 and not any(n.startswith("g") for n in fed.peers)
    body = await (await api.post("/api/v1/heartbeat", json=claim("a", "http://127.0.0.1:9"), headers=AUTH)).json()
    assert len(body["Members"]) == 6  # b and its 5: the answer is as bounded as the table
    await fed.net.stop()


async def test_tombstones_are_capped_oldest_first(api, monkeypatch):
    monkeypatch.setattr(peers_mod, "MAX_TOMBSTONES", 3)
    fed = api.fed
    for i in range(6):
        fed.net.add(f"t{i}", f"http://127.0.0.1:{8100 + i}", how="joined")
        fed.net.remove(f"t{i}")
    assert sorted(n for n, m in fed.net.members.items() if m.removed) == ["t3", "t4", "t5"]
    await fed.engine.store.background(lambda: None)
    assert sorted(n for n, _, _, removed in fed.engine.store.load_members() if removed) == ["t3", "t4", "t5"]
    await fed.net.stop()


@pytest.mark.parametrize("url, words", [
    ("http://169.254.169.254", "metadata"),  # a cloud's metadata service
    ("https://169.254.169.254:443/latest", "link-local"),
    ("http://[fe80::1]:7001", "link-local"),
    ("http://[::ffff:169.254.169.254]:80", "link-local"),
    ("http://224.0.0.1:7001", "multicast"),
    ("http://0.0.0.0:7001", "unspecified"),
    ("http://127.0.0.1:7001/" + "x" * 600, "at most 512"),
    ("http://127.0.0.1:7001/\x1b[31m", "control"),
    ("http://127.0.0.1:7001/a b", "spaces"),
    ("http://user:pw@127.0.0.1:7001", "without user"),
    ("http://127.0.0.1:7001/?next=http://169.254.169.254", "query"),
])
async def test_announced_urls_name_a_nodes_address_and_nothing_else(api, url, words):
    fed = api.fed
    fed.cfg.http.allow_insecure_peers = True  # so that plain http is not what refuses them
    for path in ("/api/v1/join", "/api/v1/heartbeat"):
        r = await api.post(path, json=claim("c", url), headers=AUTH)
        assert r.status == 400, (path, await r.text())
        assert words in (await r.json())["message"]
    assert parse_members({"Members": [{"Name": "c", "URL": url}]}, True) == ([], [])  # gossip drops them
    assert "c" not in fed.peers
    assert (await join(api, "c", "http://10.1.2.3:7001")).status == 200  # an ordinary address is fine
    await fed.net.stop()


async def test_joining_through_a_seed_keeps_tombstones_and_takes_its_removals(api, monkeypatch):
    """d was removed here; the seed missed that and still lists it: d must not come back. x was removed
    by the seed's members while this node was away: it goes here too."""
    fed = api.fed
    fed.net.add("d", "http://127.0.0.1:7004", how="joined")
    fed.net.remove("d")
    fed.net.add("x", "http://127.0.0.1:7009", how="joined")
    answer = {"Name": "s", "Members": [{"Name": "s", "URL": "http://127.0.0.1:7010"},
                                       {"Name": "d", "URL": "http://127.0.0.1:7004"},
                                       {"Name": "e", "URL": "http://127.0.0.1:7005"}], "Removed": ["x"]}

    async def seed(peer, method, path, **kw):
        assert (method, path, peer.url) == ("POST", "/join", "http://127.0.0.1:7010")
        return answer

    monkeypatch.setattr(fed.net, "request", seed)
    fed.cfg.federation.seeds = ["http://127.0.0.1:7010"]
    assert await fed.join() is True
    assert {"s", "e"} <= set(fed.peers) and "d" not in fed.peers and "x" not in fed.peers
    assert fed.net.members["x"].removed
    await fed.net.stop()


async def test_a_drain_through_the_peer_api_says_which_node_asked(api):
    fed = api.fed

    async def drain(**body):
        return await api.post("/api/v1/nodes/b/drain", json=body, headers=AUTH)

    r = await drain(Reason="kernel", By="root on c", Node="a")  # a claims an operator of c's
    assert r.status == 200, await r.text()
    assert fed.node_rows()[0]["DrainedBy"] == "root on c (via a)"
    await api.post("/api/v1/nodes/b/resume", json={"Node": "a"}, headers=AUTH)
    assert (await drain(Reason="kernel", By="alice on a", Node="a")).status == 200
    assert fed.node_rows()[0]["DrainedBy"] == "alice on a"
    await api.post("/api/v1/nodes/b/resume", json={"Node": "a"}, headers=AUTH)
    for body, status, words in (({"Reason": "x", "By": "root on a"}, 400, "Node is required"),
                                ({"Node": "nobody"}, 403, "not a peer"),
                                ({"Node": "a", "Reason": "ok\n2026-12-03 schedd: forged line"}, 400, "control"),
                                ({"Node": "a", "Reason": "r" * 1025}, 400, "at most 1024"),
                                ({"Node": "a", "By": "\x1b[2Jroot"}, 400, "control")):
        r = await drain(**body)
        assert r.status == status, (body, await r.text())
        assert words in (await r.json())["message"]
    assert fed.engine.drain is None
    await fed.net.stop()


async def test_a_beats_drain_words_are_made_printable_not_refused(api):
    """A peer's beat is never refused for its drain's words (that would make it look down): they are shown
    without control characters."""
    fed = api.fed
    r = await api.post("/api/v1/heartbeat", json=claim("a", "http://127.0.0.1:9", Drain="draining",
                                                       DrainReason="disk\nfake log line", DrainedBy="\x1b[31mroot"),
                       headers=AUTH)
    assert r.status == 200
    row = {r["Name"]: r for r in fed.node_rows()}["a"]
    assert (row["State"], row["DrainReason"], row["DrainedBy"]) == ("draining", "disk fake log line", " [31mroot")
    await fed.net.stop()


async def test_drain_node_on_dbus_wants_an_operator_and_a_printable_reason(node: Node):
    e = node.engine
    svc = SimpleNamespace(engine=e)
    with pytest.raises(AccessDenied, match="manage-nodes"):
        await DBusService.node_operator(svc, Caller(uid=1000, sender=None), "drain")
    assert await DBusService.node_operator(svc, Caller(uid=0), "drain") == f"root on {e.config.node_name}"
    for reason in ("two\nlines", "\x1b]0;title\x07", "r" * 1025):
        with pytest.raises(InvalidArgument):
            await DBusService.node_verb(svc, e.config.node_name, reason, "root on n1", resume=False)
    assert e.drain is None
    await DBusService.node_verb(svc, e.config.node_name, "kernel 6.1 → 6.6", "root on n1", resume=False)
    assert e.drain is not None and e.drain.reason == "kernel 6.1 → 6.6"


async def test_an_arrays_tasks_wait_drained_and_start_on_resume(node: Node):
    e = node.engine
    await e.set_drain("rack move", "root on n1")
    aid = (await e.submit(spec(ArrayTasks="0-99999"), CALLER)).id
    await wait(lambda: e.get(aid).reason == Reason.DRAINED, "the array's first task to wait, drained")
    assert all(e.get(aid + i).state == JobState.PENDING for i in (0, 1, 5, 50_000, 99_999))
    # The tasks made jobs and those that are only the array's record (schedctl show 50000) say the same.
    assert all(e.get(aid + i).reason == Reason.DRAINED for i in (0, 1, 5, 50_000, 99_999))
    assert not any(j.state == JobState.RUNNING for j in e.jobs.values()) and not node.host.units
    assert e.drain_state() == "drained"
    await e.clear_drain("root on n1")
    await wait(lambda: any(j.state == JobState.RUNNING for j in e.jobs.values()), "a task to start on resume")
    assert e.get(aid + 50_000).reason == ""


async def test_node_remove_of_self_unknown_configured_or_up_nodes_says_why(api):
    fed = api.fed
    assert (await join(api, "c", "http://127.0.0.1:7003")).status == 200
    for name, error, words in (("b", InvalidArgument, "is this node"), ("zz", NotFound, "no node named 'zz'"),
                               ("a", InvalidArgument, r"\[\[peers\]\]"), ("c", InvalidState, "is up")):
        with pytest.raises(error, match=words):
            await fed.remove_node(name)
    assert "c" in fed.peers and "a" in fed.peers
    await fed.net.stop()


@pytest.mark.parametrize("path, body", [
    ("/api/v1/heartbeat", claim("a", "http://127.0.0.1:9", Drain=["draining"])),
    ("/api/v1/heartbeat", claim("a", "http://127.0.0.1:9", Drain={"x": 1})),
    ("/api/v1/heartbeat", claim("a", "http://127.0.0.1:9", Drain="draining", DrainReason=None)),
    ("/api/v1/heartbeat", claim("a", "http://127.0.0.1:9", Drain="drained", DrainedBy=["root"])),
    ("/api/v1/heartbeat", claim("c", "http://127.0.0.1:7003", TotalCPUs=-1)),
    ("/api/v1/heartbeat", {**claim("c", "http://127.0.0.1:7003"), "Name": {"a": 1}}),
    ("/api/v1/join", claim("c", ["http://127.0.0.1:7003"])),
    ("/api/v1/join", claim("c\n", "http://127.0.0.1:7003")),
    ("/api/v1/join", claim("c", "http://127.0.0.1:7003", Features=[5])),  # checked before c is admitted
    ("/api/v1/heartbeat", claim("c", "http://127.0.0.1:7003", Features="gpu")),
    ("/api/v1/leave", {"Name": 5}),
    ("/api/v1/leave", {}),
])
async def test_garbage_membership_fields_are_400_json(api, path, body):
    r = await api.post(path, json=body, headers=AUTH)
    assert r.status == 400, await r.text()
    assert "message" in await r.json()
    assert set(api.fed.peers) == {"a"} and api.fed.node_rows()[1]["State"] == "down"


async def test_a_garbage_digest_gets_the_member_list(api):
    for digest in ([1, 2], {"x": "y"}, "z" * 10_000, None):
        r = await api.post("/api/v1/heartbeat", json=claim("a", "http://127.0.0.1:9", Digest=digest), headers=AUTH)
        assert r.status == 200 and {m["Name"] for m in (await r.json())["Members"]} == {"a", "b"}
    await api.fed.net.stop()


def test_seeds_with_a_listen_on_every_address_need_a_url(tmp_path):
    from test_node_membership import _cfg

    http = 'listen = "0.0.0.0:7002"\ntoken_file = "/etc/schedd/token"\nallow_insecure_peers = true'
    with pytest.raises(ConfigError, match=r"set \[federation\] url"):
        _cfg(tmp_path, 'seeds = ["http://10.0.0.1:7001"]', http)
    cfg = _cfg(tmp_path, 'seeds = ["http://10.0.0.1:7001"]\nurl = "http://10.0.0.3:7002"', http)
    assert cfg.federation.url == "http://10.0.0.3:7002"


class Clock:
    """The federation's time, stepped by the test (a quarter interval a tick, as _watch does)."""

    def __init__(self, net) -> None:
        self.t, self.net = 1000.0, net
        net.clock = lambda: self.t
        net.liveness = net._new_liveness()

    def run(self, intervals: float) -> list[str]:
        down: list[str] = []
        for _ in range(int(intervals * 4)):
            self.t += self.net.interval / 4
            down += self.net.liveness.tick(self.t)[1]
        return down


async def test_learned_members_are_judged_down_after_a_restart(api):
    """The members a node learned are in its store; after its restart they must be judged like
    [[peers]]: one that died while this node was down is down 3 intervals later, its jobs follow."""
    from schedd.cluster.peers import Peers

    fed = api.fed
    assert (await join(api, "c", "http://127.0.0.1:7003")).status == 200
    await fed.engine.store.background(lambda: None)
    again = Peers(fed.engine, fed.cfg, fed.web)  # what the restarted daemon builds from its store
    assert "c" in again.peers
    clock = Clock(again)
    assert set(clock.run(4)) == {"a", "c"}
    await fed.net.stop()


async def test_a_flood_of_joins_that_fall_silent_leaves_the_majority_alone(api):
    """Fifty joins under made-up names, silent ever after: a, a real peer that beats, must still be judged
    down when it falls silent (the made-up names never answered a beat, so they are no voters), and the
    made-up ones are judged down too, so `node remove` takes them."""
    fed = api.fed
    clock = Clock(fed.net)
    for i in range(50):
        assert (await join(api, f"x{i}", f"http://127.0.0.1:{8200 + i}")).status == 200
    fed.net.heard("a", LOAD)
    fed.net._answered(fed.peers["a"], True, {})
    down = clock.run(4)
    assert fed.net.liveness.quorate and "a" in down and {f"x{i}" for i in range(50)} <= set(down)
    await fed.net.stop()


async def test_a_member_silent_past_the_threshold_can_be_removed_without_a_majority(api):
    """Without a majority nobody is judged down (its own link is the likelier fault), but an operator may
    still remove a member that has been silent that long: otherwise a node that answered once, then
    vanished with others, could never be removed."""
    fed = api.fed
    clock = Clock(fed.net)
    load = LOAD
    for name in ("c", "d", "e"):
        fed.net.add(name, f"http://127.0.0.1:{7000 + ord(name)}", how="joined")
        fed.net.heard(name, load)
        fed.net._answered(fed.peers[name], True, {})  # they were real nodes: voters
    clock.run(4)
    assert not fed.net.liveness.quorate and fed.peers["c"].up  # nobody judged: it may be our link
    await fed.remove_node("c")
    assert "c" not in fed.peers
    fed.net.heard("d", load)
    with pytest.raises(InvalidState, match="is up"):
        await fed.remove_node("d")  # heard just now
    await fed.net.stop()


def test_a_loopback_url_is_a_claim_only_this_machine_can_make():
    """From another machine, http://127.0.0.1:PORT would have this node (and, by gossip, every node) call
    its own local services with the cluster token."""
    from schedd.cluster.membership import check_claim_url

    for remote in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert check_claim_url("http://127.0.0.1:7003", remote) == "http://127.0.0.1:7003"
    for remote in ("10.0.0.5", "::ffff:10.0.0.5", None):
        with pytest.raises(InvalidArgument, match="loopback"):
            check_claim_url("http://localhost:7003", remote)
    assert check_claim_url("https://10.0.0.9:7003", "10.0.0.5") == "https://10.0.0.9:7003"
    body = {"Members": [{"Name": "c", "URL": "http://127.0.0.1:7003"}, {"Name": "d", "URL": "https://10.0.0.4:1"}]}
    assert parse_members(body, False, "https://10.0.0.1:7001")[0] == [("d", "https://10.0.0.4:1")]
    assert len(parse_members(body, False, "http://127.0.0.1:7001")[0]) == 2  # a member on this machine


async def test_a_suspended_job_keeps_the_node_draining_until_it_ends(node: Node):
    """A suspended job holds its allocation (as Slurm's suspend): the node is not drained while it waits."""
    e = node.engine
    jid = await node.submit()
    await node.running(jid)
    await e.suspend(jid, CALLER)
    assert node.job(jid).state == JobState.SUSPENDED
    await e.set_drain("swap", "root on n1")
    assert e.drain_state() == "draining"
    await e.resume(jid, CALLER)
    node.ex.exit(jid, 0)
    await node.reach(jid, JobState.COMPLETED)
    await wait(lambda: e.drain_state() == "drained", "the node to be drained once its last job ended")


async def test_array_tasks_waiting_on_a_dependency_lose_drained_on_resume(node: Node):
    """A task made a job while drained (a verb named it) that waits on a dependency is in no queue: the
    resume must still clear its `drained`."""
    e = node.engine
    await e.set_drain("rack move", "root on n1")
    first = await node.submit(Hold=True)
    aid = (await e.submit(spec(ArrayTasks="0-3", After=[first]), CALLER)).id
    await wait(lambda: e.get(aid).reason == Reason.DRAINED, "the array's tasks to wait, drained")
    with pytest.raises(InvalidState):
        await e.suspend(aid + 1, CALLER)  # not running; but the verb made task 1 a job
    assert aid + 1 in e.jobs and e.get(aid + 1).reason == Reason.DRAINED
    await e.clear_drain("root on n1")
    assert [e.get(aid + i).reason for i in range(4)] == [Reason.DEPENDENCY] * 4  # for `first` now, not the drain
    await e.release(first, CALLER)
    await node.running(first)
    node.ex.exit(first, 0)
    await wait(lambda: all(e.get(aid + i).state == JobState.RUNNING for i in range(4)), "the tasks to start")
