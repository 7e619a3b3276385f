"""Dynamic membership and drains at the peer API (aiohttp's test client over a real engine and store),
and the pieces they are made of: config, placement, ListNodes rows, schedctl's words."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_federation_api import AUTH, api  # noqa: F401 - the fixture: node b, with a in its [[peers]]

from schedctl import render
from schedctl.cli import parse
from schedd.cluster.membership import digest, parse_members
from schedd.config import ConfigError, _apply
from schedd.config import Config
from schedd.core.model import Reason
from schedd.core.placement import ANY, Need, NodeView, choose
from schedd.protocol import NODE_KEYS, node_row

LOAD = {"TotalCPUs": 2, "AvailableCPUs": 2, "TotalMemory": 1 << 30, "AvailableMemory": 1 << 30, "TotalGPUs": 0,
        "AvailableGPUs": 0, "PendingJobs": 0, "RunningJobs": 0}


def claim(name: str, url: str, **more) -> dict:
    return {"Name": name, "URL": url, **LOAD, **more}


async def test_a_join_is_admitted_kept_in_the_store_and_answered_with_the_members(api):
    r = await api.post("/api/v1/join", json=claim("c", "http://127.0.0.1:7003"), headers=AUTH)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["Name"] == "b"
    assert {m["Name"] for m in body["Members"]} == {"a", "b", "c"}
    fed = api.fed
    assert fed.peers["c"].up and not fed.peers["c"].static
    await fed.engine.store.drain()
    await fed.engine.store.put_member("zz", "http://127.0.0.1:1", 1)  # the background thread is in order
    assert ("c", "http://127.0.0.1:7003") in [(n, u) for n, u, _, _ in fed.engine.store.load_members()]
    rows = {r["Name"]: r for r in fed.node_rows()}
    assert rows["c"]["State"] == "up" and rows["c"]["TotalCPUs"] == 2
    await fed.net.stop()


async def test_claims_on_a_taken_name_or_url_are_refused_with_409(api):
    assert (await api.post("/api/v1/join", json=claim("c", "http://127.0.0.1:7003"), headers=AUTH)).status == 200
    for body, words in ((claim("c", "http://127.0.0.1:7999"), "taken by a live node"),
                        (claim("b", "http://127.0.0.1:7999"), "own"),
                        (claim("a", "http://127.0.0.1:7999"), "[[peers]]")):
        r = await api.post("/api/v1/join", json=body, headers=AUTH)
        assert r.status == 409, await r.text()
        assert words in (await r.json())["message"]
        # A heartbeat makes the same claim.
        r = await api.post("/api/v1/heartbeat", json=body, headers=AUTH)
        assert r.status == 409 or body["Name"] == "a", await r.text()  # a static peer's beat is not a claim
    assert api.fed.peers["c"].url == "http://127.0.0.1:7003"
    await api.fed.net.stop()


@pytest.mark.parametrize("body, status", [
    (claim("", "http://127.0.0.1:1"), 400),
    (claim("any", "http://127.0.0.1:1"), 400),
    (claim("c/../x", "http://127.0.0.1:1"), 400),
    (claim("c", "ftp://127.0.0.1:1"), 400),
    (claim("c", "http://10.1.2.3:1"), 400),  # plain http to another machine, not allowed here
    (claim("c", 7), 400),
    ({"Name": "c", "URL": "http://127.0.0.1:1"}, 400),  # no load
    (claim("c", "http://127.0.0.1:1", Drain="melting"), 400),
])
async def test_garbage_claims_are_4xx_never_a_crash(api, body, status):
    for path in ("/api/v1/join", "/api/v1/heartbeat"):
        if "Drain" in body and path.endswith("join"):
            continue
        r = await api.post(path, json=body, headers=AUTH)
        assert r.status == status, (path, await r.text())
        assert "message" in await r.json()
    assert "c" not in api.fed.peers
    r = await api.post("/api/v1/join", json=claim("c", "http://127.0.0.1:1"))  # no token
    assert r.status == 401 and "c" not in api.fed.peers


async def test_a_heartbeat_answer_lists_the_members_only_when_the_digests_differ(api):
    fed = api.fed
    same = fed.net.digest()
    r = await api.post("/api/v1/heartbeat", json=claim("a", "http://127.0.0.1:9", Digest=same), headers=AUTH)
    assert "Members" not in await r.json()
    r = await api.post("/api/v1/heartbeat", json=claim("a", "http://127.0.0.1:9", Digest="0" * 16), headers=AUTH)
    assert {m["Name"] for m in (await r.json())["Members"]} == {"a", "b"}
    # What a member lists is learned; what it removed is forgotten when down here; tombstones hold.
    fed.net.merge(*parse_members({"Members": [{"Name": "d", "URL": "http://127.0.0.1:7004"},
                                              {"Name": "bad name", "URL": "http://127.0.0.1:1"}]}, False))
    assert "d" in fed.peers and "bad name" not in fed.peers
    fed.net.merge([], ["d"])
    assert "d" not in fed.peers and fed.net.members["d"].removed
    fed.net.merge([("d", "http://127.0.0.1:7004")], [])
    assert "d" not in fed.peers  # only its own claim brings it back
    assert (await api.post("/api/v1/join", json=claim("d", "http://127.0.0.1:7004"), headers=AUTH)).status == 200
    assert "d" in fed.peers
    await fed.net.stop()


async def test_a_drain_through_the_peer_api_holds_forwards_and_shows_in_list_nodes(api):
    fed = api.fed
    r = await api.post("/api/v1/nodes/b/drain", json={"Reason": "maintenance", "By": "root on a", "Node": "a"},
                       headers=AUTH)
    assert r.status == 200, await r.text()
    assert (await r.json())["State"] == "drained"
    row = fed.node_rows()[0]
    assert (row["State"], row["DrainReason"], row["DrainedBy"]) == ("drained", "maintenance", "root on a")
    from test_federation_api import forward

    r = await api.post("/api/v1/jobs", json=forward(31), headers=AUTH)
    assert r.status == 503 and (await r.json())["error"] == "drained"  # the origin waits or goes elsewhere
    r = await api.post("/api/v1/nodes/a/drain", json={}, headers=AUTH)
    assert r.status == 404  # a node drains only itself through this API
    r = await api.post("/api/v1/nodes/b/melt", json={}, headers=AUTH)
    assert r.status == 404
    r = await api.post("/api/v1/nodes/b/drain", json={"Reason": 5, "Node": "a"}, headers=AUTH)
    assert r.status == 400
    r = await api.post("/api/v1/nodes/b/resume", json={"By": "root on a", "Node": "a"}, headers=AUTH)
    assert r.status == 200 and (await r.json())["State"] == "up"
    r = await api.post("/api/v1/jobs", json=forward(31), headers=AUTH)
    assert r.status == 201, await r.text()
    # A peer's drain, as its beats tell: a draining peer shows, and placement passes it by.
    await api.post("/api/v1/heartbeat", json=claim("a", "http://127.0.0.1:9", Drain="draining",
                                                   DrainReason="r", DrainedBy="root on a"), headers=AUTH)
    rows = {r["Name"]: r for r in fed.node_rows()}
    assert rows["a"]["State"] == "draining" and rows["a"]["DrainedBy"] == "root on a"
    assert next(v for v in fed.views() if v.name == "a").drained
    await fed.net.stop()


async def test_a_stopping_peer_is_down_at_once(api):
    fed = api.fed
    await api.post("/api/v1/heartbeat", json=claim("a", "http://127.0.0.1:9"), headers=AUTH)
    assert fed.peers["a"].up
    r = await api.post("/api/v1/leave", json={"Name": "a"}, headers=AUTH)
    assert r.status == 200
    assert not fed.peers["a"].up and fed.node_rows()[1]["State"] == "down"
    r = await api.post("/api/v1/leave", json={"Name": "nobody"}, headers=AUTH)
    assert r.status == 403
    await fed.net.stop()


async def test_a_node_that_is_its_own_seed_joins_nobody(api):
    fed = api.fed
    fed.cfg.federation.seeds = [fed.net._own_url()]  # the same seeds list on every node, this one's included
    assert await fed.join() is True and set(fed.peers) == {"a"}


def test_placement_never_chooses_a_drained_node_for_new_work():
    need = Need(1, 1 << 20)
    here = NodeView("a", True, local=True, total_cpus=1, free_cpus=1, total_memory=1 << 30, free_memory=1 << 30)
    peer = NodeView("b", True, total_cpus=4, free_cpus=4, total_memory=1 << 30, free_memory=1 << 30)
    assert choose(ANY, need, [here, peer]) == "a"
    import dataclasses

    assert choose(ANY, need, [dataclasses.replace(here, drained=True), peer]) == "b"
    assert choose(ANY, need, [dataclasses.replace(here, drained=True), dataclasses.replace(peer, drained=True)]) is None
    assert choose("b", need, [here, dataclasses.replace(peer, drained=True)]) is None  # it waits for b
    assert choose("", need, [dataclasses.replace(here, drained=True), peer]) == "a"  # bound here: waits here


def test_list_nodes_rows_carry_the_drain():
    row = node_row("c", True, "", False, dict.fromkeys(LOAD, 0), 0, ("draining", "kernel", "root on a"))
    assert row.keys() == NODE_KEYS.keys()
    assert (row["State"], row["DrainReason"], row["DrainedBy"]) == ("draining", "kernel", "root on a")
    assert node_row("c", False, "", False, dict.fromkeys(LOAD, 0), 0, ("drained", "k", "r"))["State"] == "down"
    text = render.nodes([row, node_row("a", True, "", True, dict.fromkeys(LOAD, 0), 0)], tty=False, now=0)
    assert "DRAIN" in text and "kernel (by root on a)" in text and "draining" in text
    assert "DRAIN" not in render.nodes([node_row("a", True, "", True, dict.fromkeys(LOAD, 0), 0)], False, 0)
    assert Reason.DRAINED == "drained"


def test_schedctl_node_commands_parse():
    a = parse(["drain", "c", "--reason", "kernel update"])
    assert (a.command_name, a.node, a.reason) == ("drain", "c", "kernel update")
    assert parse(["node", "resume", "c"]).node == "c"
    assert parse(["node", "remove", "c"]).func.__name__ == "cmd_remove"
    assert parse(["undrain", "c"]).func.__name__ == "cmd_resume"


def _cfg(tmp_path: Path, fed: str, http: str = "") -> Config:
    import tomllib

    tok = tmp_path / "t"
    cfg = Config()
    _apply(cfg, tomllib.loads(f"[federation]\n{fed}\n[http]\n{http}"))
    return cfg


def test_seeds_config(tmp_path: Path):
    cfg = _cfg(tmp_path, 'seeds = ["http://127.0.0.1:7001/"]',
               'listen = "127.0.0.1:7002"\ntoken_file = "/etc/schedd/token"')
    assert cfg.federation.seeds == ["http://127.0.0.1:7001"] and cfg.federated
    for fed, http, words in (
            ('seeds = "http://x"', "", "list of peer URLs"),
            ('seeds = ["http://10.0.0.1:7001"]', 'listen = "127.0.0.1:1"\ntoken_file = "/t"', "plain http://"),
            ('seeds = ["ftp://h"]', 'listen = "127.0.0.1:1"\ntoken_file = "/t"', "http:// or https://"),
            ('seeds = ["http://127.0.0.1:1"]', "", "need [http] listen and token_file"),
            ('url = 5', "", "this node's URL")):
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            _cfg(tmp_path, fed, http)
    assert not Config().federated


def test_digest_is_of_the_set():
    assert digest(["a", "b"]) == digest(["b", "a"]) != digest(["a", "b", "c"])


def test_sinfo_shows_a_drain_in_slurms_words():
    from schedd_slurm.sinfo import node_state

    assert node_state({"State": "draining", "RunningJobs": 1}) == "drng"
    assert node_state({"State": "drained"}) == "drain"
    assert node_state({"State": "up", "RunningJobs": 0}) == "idle"


def test_scontrol_update_nodename_drains_and_resumes(monkeypatch):
    """scontrol update NodeName=... State=DRAIN Reason=...: DrainNode per node of the hostlist; RESUME: ResumeNode."""
    import contextlib

    from schedd_slurm import common, scontrol

    calls: list = []

    class FakeClient:
        async def call(self, member, sig, body):
            calls.append((member, body))

    @contextlib.asynccontextmanager
    async def connect():
        yield FakeClient()

    monkeypatch.setattr(common, "connect", connect)
    assert scontrol.main(["update", "NodeName=n[1-2]", "State=DRAIN", "Reason=disk swap"]) == 0
    assert calls == [("DrainNode", ["n1", "disk swap"]), ("DrainNode", ["n2", "disk swap"])]
    calls.clear()
    assert scontrol.main(["update", "nodename=n1", "state=resume"]) == 0
    assert calls == [("ResumeNode", ["n1"])]
    calls.clear()
    assert scontrol.main(["update", "NodeName=n1", "State=DRAIN"]) == 1  # Slurm wants a reason
    assert scontrol.main(["update", "NodeName=n1", "State=FUTURE"]) == 1
    assert scontrol.main(["update", "NodeName=n1", "Weight=5", "State=DRAIN"]) == 1
    assert calls == []
    assert scontrol._node_state({"State": "drained"}) == "IDLE+DRAIN"


async def test_a_slurm_peer_is_no_member_of_the_gossip_and_its_name_cannot_be_claimed(api):
    """A Slurm peer is this node's own config: other schedds must not learn it (they would heartbeat
    slurmrestd), and no schedd may join under its name."""
    fed = api.fed
    fed.peers["a"].bridge = object()  # stands for a SlurmBridge: only its presence matters here
    body = await (await api.post("/api/v1/join", json=claim("c", "http://127.0.0.1:7003"), headers=AUTH)).json()
    assert {m["Name"] for m in body["Members"]} == {"b", "c"}
    assert fed.net.digest() == digest(("b", "c"))
    r = await api.post("/api/v1/join", json=claim("a", "http://127.0.0.1:9"), headers=AUTH)
    assert r.status == 409 and "Slurm cluster" in (await r.json())["message"]
    await fed.net.stop()
