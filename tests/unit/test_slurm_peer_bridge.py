"""The Slurm peer's bridge without a Slurm: what a poll mirrors (only the job's own user speaks for it),
when the peer is judged down (3 silent intervals) and that down requeues nothing."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from schedd.cluster.slurm.bridge import LOST_AFTER_POLLS, SlurmBridge
from schedd.cluster.slurm.mapping import SlurmJob, Tag
from schedd.config import SlurmPeerConfig
from schedd.core.model import Job, JobSpec, JobState


class FakeOrigin:
    def __init__(self) -> None:
        self.mirrored: list[list[dict]] = []
        self.waiting: dict = {}

    def receive_mirror(self, node: str, recs: list[dict]) -> dict[int, bool]:
        self.mirrored.append(recs)
        return {}


class FakeEngine:
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = {j.id: j for j in jobs}
        self.store = SimpleNamespace(get=lambda _id: None)
        self.ended: list[tuple[int, JobState, str]] = []

    def mirror(self, job: Job, state: JobState, reason: str, fields: dict) -> None:
        job.state, job.reason = state, reason
        self.ended.append((job.id, state, reason))


def make(jobs: list[Job]):
    now = [100.0]
    net = SimpleNamespace(clock=lambda: now[0], interval=1.0, spawn=lambda c: c.close(), changed=0)
    net._nodes_changed = lambda: setattr(net, "changed", net.changed + 1)
    fed = SimpleNamespace(engine=FakeEngine(jobs), origin=FakeOrigin(), net=net, name="a")
    peer = SimpleNamespace(name="hpc", url="http://127.0.0.1:1", up=False, view=None, last_seen_usec=0)
    b = SlurmBridge(fed, peer, SlurmPeerConfig("/nonexistent"))
    return b, fed, peer, now


def ours(jid: int = 42, remote_id: int = 7) -> Job:
    spec = JobSpec(command=["true"], name="t", cpus=1, memory=1 << 20, uid=1000, user_name="alice")
    return Job(id=jid, spec=spec, state=JobState.RUNNING, remote_node="hpc", remote_id=remote_id, attempt=1)


def slurm_job(user: str, jid: int = 7, origin_id: int = 42, state: str = "RUNNING") -> SlurmJob:
    return SlurmJob(jid, state, "None", 0, 1, 0, "vm", user, 1000, "/o", "", Tag("a", origin_id, 1))


def test_only_the_jobs_own_user_speaks_for_it():
    b, fed, _peer, _now = make([ours()])
    b._mirror([slurm_job("mallory", jid=8, state="COMPLETED"), slurm_job("alice")])
    (recs,) = fed.origin.mirrored
    assert [(r["Id"], r["State"]) for r in recs] == [(7, "RUNNING")]


def test_another_origins_and_untagged_jobs_are_not_ours():
    b, fed, _peer, _now = make([ours()])
    other = SlurmJob(9, "COMPLETED", "None", 0, 1, 2, "vm", "alice", 1000, "/o", "", Tag("b", 42, 1))
    untagged = SlurmJob(10, "COMPLETED", "None", 0, 1, 2, "vm", "alice", 1000, "/o", "", None)
    b._mirror([other, untagged])
    assert fed.origin.mirrored == [[]]


def test_a_copy_slurm_forgot_ends_lost_after_some_polls():
    job = ours()
    b, fed, _peer, _now = make([job])
    for _ in range(LOST_AFTER_POLLS - 1):
        b._mirror([])
    assert job.state == JobState.RUNNING
    b._mirror([])
    assert fed.engine.ended == [(42, JobState.FAILED, "lost")]


def test_down_after_three_silent_intervals_and_nothing_requeued():
    job = ours()
    b, fed, peer, now = make([job])
    b._heard({"TotalCPUs": 4, "AvailableCPUs": 4, "TotalMemory": 1, "AvailableMemory": 1, "TotalGPUs": 0,
              "AvailableGPUs": 0, "PendingJobs": 0, "RunningJobs": 0})
    assert peer.up and peer.view.total_cpus == 4
    now[0] += 2.5
    b._silent("refused")
    assert peer.up  # two and a half intervals: not yet
    now[0] += 1
    b._silent("refused")
    assert not peer.up
    assert job.state == JobState.RUNNING and job.remote_node == "hpc" and fed.engine.ended == []


def test_a_poll_without_a_key_is_a_down_peer_not_a_crash():
    b, _fed, peer, now = make([])
    b.open()  # /nonexistent: logged, the peer stays down
    now[0] += 10
    asyncio.run(b.poll())
    assert not peer.up and "jwt_key_file" in b.key_error
