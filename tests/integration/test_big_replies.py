"""Replies that would pass the system bus's 32 MiB message limit (issue 11): dbus-daemon drops a connection
that sends one, which would end the daemon for everyone. An ordinary user's own large command lines, listed
back to them, must come in pages that fit."""

from __future__ import annotations

import json

import pytest

from conftest import CONFIG, Node, extra_node

ARGS = ["x" * 95_000] * 2  # 190 kB: each under the kernel's 128 KiB a string, together under max_argv_bytes
JOBS = 180  # 180 x 190 kB = 34 MB: one ListJobs reply of them all would be over the bus's limit


@pytest.fixture(scope="module")
def node(users):
    """Its own node: the big jobs stay exported for 10 minutes after they end, too big for others' listings."""
    with extra_node("big", CONFIG) as n:
        yield n


def managed_objects(node: Node, user: str | None = None):
    return node.busctl("--json=short", "call", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                       "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", user=user, check=False)


def test_a_user_listing_their_own_huge_jobs_gets_pages_and_the_daemon_stays(node: Node, users):
    pid = node.unit_property("schedd.service", "MainPID")
    spec = {"Command": ["as", ["true", *ARGS]], "Hold": ["b", True]}
    ids: list[int] = []
    for _ in range(JOBS // 30):  # 30 specs (5.7 MB) a message: each call fits the bus
        (r,) = node.calls([{"member": "SubmitMany", "signature": "aa{sv}", "body": [[spec] * 30]}], user="schedd-alice")
        assert "ok" in r, r
        ids += r["ok"][0]
    try:
        uid = users["schedd-alice"].pw_uid
        (r,) = node.calls([{"member": "ListJobs", "signature": "a{sv}",
                            "body": [{"User": ["u", uid], "States": ["as", ["HELD"]], "After": ["t", ids[0] - 1]}]}],
                          user="schedd-alice")
        page = r["ok"][0]
        assert 0 < len(page) < JOBS, "one page of every job would have passed the bus's message limit"
        assert [j["Id"] for j in page] == ids[:len(page)] and page[0]["Command"] == ["true", *ARGS]
        # The daemon is still the same process, and schedctl pages through all of them.
        assert node.unit_property("schedd.service", "MainPID") == pid
        out = node.schedctl("--json", "queue", user="schedd-alice", timeout=120).stdout
        assert all(f'"Id": {i}' in out or f'"Id":{i}' in out for i in ids)
        (r,) = node.calls([{"member": "GetJob", "signature": "t", "body": [ids[-1]]}], user="schedd-bob")
        assert r["ok"][0]["Command"] == []  # still alice's to see
        # Every object at once: too big as root (or alice) sees it, small as bob does (alice's keys hidden).
        r = managed_objects(node)
        assert r.returncode != 0 and "GetManagedObjects lists at most" in r.stderr, r
        r = managed_objects(node, "schedd-bob")
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)["data"][0]) >= JOBS
    finally:
        node.calls([{"member": "Cancel", "signature": "t", "body": [i]} for i in ids])
    assert node.unit_property("schedd.service", "MainPID") == pid
    assert node.unit_property("schedd.service", "NRestarts") == "0"
