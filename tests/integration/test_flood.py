"""One user cannot freeze the daemon for everyone (issue 11, item 5), on its own booted systemd.

A huge SubmitMany from an unprivileged user while another connection probes the daemon; the
per-user count cap answers before any spec is built; the byte cap on what one user holds queued;
finished jobs purged after [jobs] keep_finished, and what GetJob says of them afterwards.
"""

from __future__ import annotations

import json

import pytest

from conftest import CONFIG, Node, client, extra_node

FLOOD = 150_000  # small held specs in one SubmitMany: about 10 MB, within the system bus's 32 MiB a message
CAP = 200_000
BYTE_CAP = 4 << 20
FLOOD_CONFIG = (CONFIG.replace("max_pending_per_user = 1000", f"max_pending_per_user = {CAP}")
                + f'max_queued_bytes_per_user = "{BYTE_CAP}"\nkeep_finished = "2s"\n')
INVALID = "org.schedd.Schedd1.Error.InvalidArgument"
NOT_FOUND = "org.schedd.Schedd1.Error.NotFound"
ALICE, BOB = "schedd-alice", "schedd-bob"


@pytest.fixture(scope="module")
def flood_node(users):
    with extra_node("flood", FLOOD_CONFIG) as n:
        yield n


def held(argv: list[str]) -> dict:
    return {"Command": ["as", argv], "Hold": ["b", True]}


def submit_many(node: Node, specs: list[dict], user: str) -> dict:
    (r,) = node.calls([{"member": "SubmitMany", "signature": "aa{sv}", "body": [specs]}], user=user)
    return r


def managed_objects(node: Node, user: str):
    return node.sb.run(["gdbus", "call", "--system", "--dest", "org.schedd.Schedd1", "--object-path",
                        "/org/schedd/Schedd1", "--method", "org.freedesktop.DBus.ObjectManager.GetManagedObjects"],
                       user=user, check=False, timeout=120)


def test_one_user_may_hold_only_so_many_bytes_queued(flood_node: Node):
    node = flood_node
    big = held(["true", "a" * 70_000, "b" * 70_000])  # 140,008 bytes of argv
    r = submit_many(node, [big] * 30, BOB)  # 4.2 MB: over the 4 MiB cap
    assert r.get("error") == INVALID, r
    assert "max_queued_bytes_per_user" in r["message"] and f"at most {BYTE_CAP} bytes" in r["message"], r
    r = submit_many(node, [big] * 20, BOB)
    assert "ok" in r, r
    ids = r["ok"][0]
    r = managed_objects(node, BOB)
    assert r.returncode == 0 and all(f"'/org/schedd/Schedd1/job/{i}'" in r.stdout for i in ids), r.stderr
    r = submit_many(node, [big] * 10, BOB)  # 20 + 10 jobs: over again
    assert r.get("error") == INVALID and "max_queued_bytes_per_user" in r["message"], r
    out = node.calls([{"member": "Cancel", "signature": "t", "body": [i]} for i in ids[:10]], user=BOB)
    assert all("ok" in o for o in out), out
    r = submit_many(node, [big] * 10, BOB)  # cancelled jobs no longer count
    assert "ok" in r, r
    out = node.calls([{"member": "Cancel", "signature": "t", "body": [i]} for i in ids[10:] + r["ok"][0]], user=BOB)
    assert all("ok" in o for o in out), out


def test_finished_jobs_are_purged_after_keep_finished(flood_node: Node):
    node = flood_node
    jid = node.submit(["true"], user=BOB)
    assert node.wait(jid)["State"] == "COMPLETED"

    def gone():
        r = node.gdbus_manager("GetJob", str(jid), user=BOB)
        return r if r.returncode != 0 else None

    r = node.wait_for(gone, "the finished job to be purged", timeout=30)
    assert NOT_FOUND in r.stderr, r.stderr
    assert f"job {jid} finished more than 2s ago and was purged (keep_finished)" in r.stderr, r.stderr
    r = node.gdbus_manager("Cancel", str(jid), user=BOB)
    assert NOT_FOUND in r.stderr and "was purged" in r.stderr, r.stderr
    r = node.gdbus_manager("GetJob", str(jid + 1_000_000), user=BOB)
    assert NOT_FOUND in r.stderr and f"no job {jid + 1_000_000}" in r.stderr, r.stderr


def test_a_huge_submit_many_does_not_freeze_the_daemon(flood_node: Node):
    node = flood_node
    r = node.sb.run([*client("flood_ping.py"), str(FLOOD)], user=ALICE, timeout=600)
    out = json.loads(r.stdout)
    print(f"flood of {FLOOD}: {out}")
    assert out["submit"].get("count") == FLOOD, out["submit"]
    assert out["errors"] == [], out["errors"]
    assert out["pings"] > 10, out
    # The feature is latency: unsliced, one such batch stalled every other caller for 25-45 s. The engine
    # yields every 10 ms; what remains is dbus-fast decoding the one 10 MB message before schedd sees it
    # (about 0.3 s here). 2 s is generous for a loaded 2-core CI machine, yet far from a frozen loop.
    assert out["max"] < 2.0, out

    # 150,000 job objects in one GetManagedObjects reply would hold the loop for seconds (and pass the bus's
    # 32 MiB a message): refused, with where to look instead.
    r = managed_objects(node, BOB)
    assert r.returncode != 0 and "LimitsExceeded" in r.stderr, r.stderr
    assert "use org.schedd.Schedd1.Manager.ListJobs" in r.stderr, r.stderr

    # Over the per-user cap: refused before any spec is built, so the bad last spec is never looked at.
    specs = [held(["true"])] * (CAP - FLOOD) + [{"Command": ["as", ["true"]], "CPUs": ["s", "x"]}]
    r = submit_many(node, specs, ALICE)
    assert r.get("error") == INVALID, r
    assert f"queues at most {CAP} per user (max_pending_per_user)" in r["message"], r
    assert "spec " not in r["message"], r
