"""Accounting from the job's own cgroup (v2 files, or v1 memory/cpuacct on hybrid hosts), and schedctl stats."""

from __future__ import annotations

import asyncio
import json
import pwd
import time
from pathlib import Path

import pytest
from conftest import CONFIG, Node, WebNode, extra_node

ALICE, BOB = "schedd-alice", "schedd-bob"
MiB = 1 << 20
BURN = "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done"


def stats(node: WebNode, *args: str) -> dict:
    return json.loads(node.schedctl("stats", "--json", *args).stdout)


def test_cpu_time_and_memory_peak_come_from_the_jobs_cgroup(web_node: WebNode):
    burn = web_node.submit(["sh", "-c", BURN], user=ALICE)
    alloc = web_node.submit(["python3", "-c", "import time; b = b'x' * (120 << 20); time.sleep(0.3)"], user=ALICE,
                            Memory=("t", 512 * MiB))
    b, a = web_node.wait(burn, timeout=120), web_node.wait(alloc, timeout=60)
    assert b["State"] == a["State"] == "COMPLETED", (b, a)
    print(f"cpu burner: CPUTimeUSec={b['CPUTimeUSec']} RunUSec={b['RunUSec']}; "
          f"allocator: MemoryPeak={a['MemoryPeak'] / MiB:.1f} MiB")
    assert b["CPUTimeUSec"] > 100_000  # a shell loop of 400k iterations takes well over 0.1 s of CPU
    assert b["CPUTimeUSec"] <= b["RunUSec"] * 1.1 + 50_000  # one process on one CPU: not more than the wall time
    assert a["MemoryPeak"] >= 120 * MiB
    assert a["MemoryPeak"] < 512 * MiB
    for j in (a, b):
        assert j["WaitUSec"] == j["StartTime"] - j["SubmitTime"]
        assert j["RunUSec"] == j["EndTime"] - j["StartTime"]
    show = web_node.schedctl("show", str(burn)).stdout
    for key in ("CPUTimeUSec", "MemoryPeak", "WaitUSec", "RunUSec"):
        assert f"{key}=" in show, show


def test_stats_totals_and_per_user(web_node: WebNode):
    before = stats(web_node)
    jobs = [web_node.submit(["sh", "-c", BURN], user=ALICE), web_node.submit(["true"], user=ALICE),
            web_node.submit(["false"], user=ALICE), web_node.submit(["true"], user=BOB)]
    for jid in jobs:
        web_node.wait(jid, timeout=120)
    after = stats(web_node)

    def delta(who: str | None, key: str) -> float:
        pick = (lambda s: s["Total"]) if who is None else (lambda s: s["Users"].get(who, {}))
        return pick(after).get(key, 0) - pick(before).get(key, 0)

    assert delta(ALICE, "Jobs") == 3 and delta(ALICE, "Completed") == 2 and delta(ALICE, "Failed") == 1
    assert delta(BOB, "Jobs") == 1 and delta(BOB, "Completed") == 1
    assert delta(None, "Jobs") == 4
    assert delta(ALICE, "CPUTimeUSec") > 100_000 and delta(ALICE, "CPUHours") > 0
    a = after["Users"][ALICE]
    assert 0 < a["SuccessRate"] < 1
    assert a["MeanWaitSec"] >= 0 and a["P95WaitSec"] >= 0 and a["MeanRunSec"] > 0
    bob_only = stats(web_node, "--for", BOB)
    assert list(bob_only["Users"]) == [BOB]
    recent = stats(web_node, "--since", "1h")
    assert recent["Total"]["Jobs"] >= 4
    text = web_node.schedctl("stats").stdout
    header, *rows = text.splitlines()
    assert header.split()[:2] == ["USER", "JOBS"] and "CPU-HOURS" in header
    names = [r.split()[0] for r in rows]
    assert ALICE in names and BOB in names and names[-1] == "total"
    bad = web_node.manager_call("GetStats", "a{sv}", "1", "Bogus", "u", "1", check=False)
    assert bad.returncode != 0 and "unknown filter key" in bad.stderr


DAY = 86_400_000_000
SEED_NOW = int(time.time() * 1e6)
# Archived jobs of alice, in the store before schedd first starts: (age, state). Finished long
# before the daemon's in-memory window, so only the store's SQL can count them.
SEEDED = [(7 * DAY, "COMPLETED")] * 3 + [(DAY // 24, "FAILED")]


def _seed(state_dir: Path) -> None:
    from schedd.core.model import Job, JobSpec, JobState
    from schedd.core.store import Store, default_path

    alice = pwd.getpwnam(ALICE)
    store = Store(default_path(state_dir))
    jobs = []
    for i, (age, state) in enumerate(SEEDED, start=1):
        spec = JobSpec(command=["true"], name=f"old{i}", cpus=1, memory=256 * MiB, uid=alice.pw_uid,
                       gid=alice.pw_gid, user_name=ALICE, working_directory="/")
        t = SEED_NOW - age
        jobs.append(Job(id=i, spec=spec, state=JobState(state), reason="seeded", submit_time=t, start_time=t + 1,
                        end_time=t + 2, exit_code=0 if state == "COMPLETED" else 1))

    async def save() -> None:
        await store.save(*jobs)

    try:
        asyncio.run(save())
    finally:
        store.close()


@pytest.fixture(scope="module")
def seeded_node(users):
    with extra_node("stats-seeded", CONFIG, seed=_seed) as n:
        yield n


def get_stats(node: Node, **filters: tuple[str, int]) -> dict:
    """GetStats over the bus as busctl shows it: {"Total": {...}, "Users": {user: {...}}}, plain values."""
    args = [str(len(filters))]
    for key, (sig, value) in filters.items():
        args += [key, sig, str(value)]
    data = json.loads(node.manager_call("GetStats", "a{sv}", *args).stdout)["data"][0]

    def plain(v):
        return {k: plain(x) for k, x in v.items()} if isinstance(v, dict) and "type" not in v else (
            plain(v["data"]) if isinstance(v, dict) else v)

    return plain(data)


def test_get_stats_since_counts_only_jobs_submitted_since_then(seeded_node: Node):
    node = seeded_node
    uid = pwd.getpwnam(ALICE).pw_uid
    live = node.wait(node.submit(["true"], user=ALICE))  # one more, in memory
    assert live["State"] == "COMPLETED" and live["Id"] == len(SEEDED) + 1  # the store's ids were adopted
    everything = get_stats(node, User=("u", uid))
    assert everything["Total"]["Jobs"] == len(SEEDED) + 1
    assert everything["Users"][ALICE]["Completed"] == 4
    day_ago = SEED_NOW - DAY
    recent = get_stats(node, User=("u", uid), Since=("t", day_ago))
    assert recent["Total"]["Jobs"] == 2  # the seeded job of an hour ago and the live one; not the week-old ones
    assert (recent["Total"]["Completed"], recent["Total"]["Failed"]) == (1, 1)
    assert get_stats(node, Since=("t", SEED_NOW - 8 * DAY))["Total"]["Jobs"] == len(SEEDED) + 1
    assert get_stats(node, Since=("t", SEED_NOW + DAY))["Total"]["Jobs"] == 0
    # And as people ask for it: schedctl stats --since.
    assert stats(node, "--since", "1d", "--for", ALICE)["Total"]["Jobs"] == 2
    assert stats(node, "--since", "30d", "--for", ALICE)["Total"]["Jobs"] == len(SEEDED) + 1
