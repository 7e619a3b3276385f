"""The Slurm peer's bridge without a Slurm: what a poll mirrors (only the job's own user speaks for it),
when the peer is judged down (3 silent intervals) and that down requeues nothing."""

from __future__ import annotations

import asyncio
import pwd
from types import SimpleNamespace

import pytest

from schedd.cluster.slurm import bridge as bridge_mod
from schedd.cluster.slurm.bridge import LOST_AFTER_POLLS, SlurmBridge
from schedd.cluster.slurm.mapping import SlurmJob, Tag
from schedd.cluster.wire import PeerError, PeerRefused
from schedd.config import FederationConfig, SlurmPeerConfig
from schedd.core.model import Job, JobSpec, JobState
from schedd.errors import AccessDenied, NotFound


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


class FakeRestd:
    """slurmrestd as a table: (method, path) -> an answer, or an exception to raise; every call noted."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, str]] = []

    async def call(self, method: str, path: str, user: str, **_kw) -> dict:
        self.calls.append((method, path, user))
        a = self.answers[(method, path)]
        if isinstance(a, Exception):
            raise a
        return a


def make(jobs: list[Job], answers: dict | None = None):
    now = [100.0]
    spawned: list = []
    net = SimpleNamespace(clock=lambda: now[0], interval=1.0, spawn=spawned.append, changed=0)
    net._nodes_changed = lambda: setattr(net, "changed", net.changed + 1)
    cfg = SimpleNamespace(federation=FederationConfig(uid_min=1000, uid_max=60000, deny_groups=()))
    fed = SimpleNamespace(engine=FakeEngine(jobs), origin=FakeOrigin(), net=net, name="a", cfg=cfg)
    peer = SimpleNamespace(name="hpc", url="http://127.0.0.1:1", up=False, view=None, last_seen_usec=0)
    b = SlurmBridge(fed, peer, SlurmPeerConfig("/nonexistent"))
    b.spawned = spawned
    if answers is not None:
        b.restd = FakeRestd(answers)
    return b, fed, peer, now


def run_spawned(b: SlurmBridge) -> None:
    async def go():
        while b.spawned:
            await b.spawned.pop(0)
    asyncio.run(go())


def rec_of(jid: int, user: str, origin_id: int = 42, state: str = "RUNNING") -> dict:
    return {"job_id": jid, "job_state": state, "user_name": user, "comment": f"schedd:a:{origin_id}:1",
            "nodes": "vm", "start_time": 1}


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
    gone = PeerRefused(NotFound("Slurm peer hpc: Unable to find JobId=7: Invalid job id specified"))
    b, fed, _peer, _now = make([job], {("GET", "/job/7"): gone})
    for _ in range(LOST_AFTER_POLLS - 1):
        b._mirror([])
    assert job.state == JobState.RUNNING and b.spawned == []
    b._mirror([])
    run_spawned(b)
    assert b.restd.calls == [("GET", "/job/7", "alice")]  # asked by id, as its user, before giving it up
    assert fed.engine.ended == [(42, JobState.FAILED, "lost")]


def test_a_copy_left_out_of_the_list_but_there_by_id_is_not_lost():
    """query_user may not see every user's jobs (PrivateData=jobs): absent from GET /jobs is not gone."""
    job = ours()
    b, fed, _peer, _now = make([job], {("GET", "/job/7"): {"errors": [], "jobs": [rec_of(7, "alice")]}})
    for _ in range(LOST_AFTER_POLLS):
        b._mirror([])
    run_spawned(b)
    assert job.state == JobState.RUNNING and fed.engine.ended == []
    assert [r["Id"] for r in fed.origin.mirrored[-1]] == [7]  # its state still reaches the origin


@pytest.mark.parametrize("why", [PeerError("slurmrestd unreachable"),
                                 PeerRefused(AccessDenied("Slurm peer hpc refused 'alice''s token (401)"))])
def test_a_copy_is_not_lost_when_slurm_cannot_be_asked(why):
    job = ours()
    b, fed, _peer, _now = make([job], {("GET", "/job/7"): why})
    for _ in range(LOST_AFTER_POLLS):
        b._mirror([])
    run_spawned(b)
    assert job.state == JobState.RUNNING and fed.engine.ended == []


def test_a_record_schedd_cannot_read_is_not_a_lost_copy():
    """Slurm shows the job (an unknown state, a field out of range): it is not lost, nor is any job when
    a record has no readable id at all."""
    job = ours()
    b, fed, _peer, _now = make([job], {})
    for _ in range(LOST_AFTER_POLLS + 1):
        b._mirror([], [7])
    for _ in range(LOST_AFTER_POLLS + 1):
        b._mirror([], [None])
    assert b.spawned == [] and job.state == JobState.RUNNING


def test_a_tag_forged_by_another_user_is_not_known_nor_listed():
    b, fed, _peer, _now = make([ours()])
    b._mirror([slurm_job("mallory", jid=8, state="COMPLETED")])
    assert b.known == {}
    listed = asyncio.run(b.request("GET", "/jobs", params={"origin": "a"}))
    assert listed == {"Jobs": []}


def login_user() -> pwd.struct_passwd | None:
    return next((p for p in pwd.getpwall() if 1000 <= p.pw_uid <= 60000), None)


def forward(b: SlurmBridge, job: Job, attempt: int = 1):
    body = {"Spec": {"Command": ["true"], "UserName": job.spec.user_name}, "OriginId": job.id, "Attempt": attempt}
    return asyncio.run(b.request("POST", "/jobs", json=body))


@pytest.mark.parametrize("name", ["root", "daemon", "nobody"])
def test_no_token_is_signed_for_root_or_a_system_account(name):
    """A job of `slurm` (Slurm's own admin account) or any system account would act as it in Slurm."""
    pw = pwd.getpwnam(name)
    spec = JobSpec(command=["true"], name="t", cpus=1, memory=1 << 20, uid=pw.pw_uid, user_name=name)
    job = Job(id=42, spec=spec, state=JobState.PENDING, remote_node="", attempt=1)
    b, _fed, _peer, _now = make([job], {})
    with pytest.raises(PeerRefused) as err:
        forward(b, job)
    assert isinstance(err.value.error, AccessDenied)
    assert b.restd.calls == []


def test_the_token_is_for_the_uids_own_name_not_the_requests():
    pw = pwd.getpwnam("daemon")
    # Submitted as uid 1 but claiming another name: refused, whatever the wire's UserName says.
    spec = JobSpec(command=["true"], name="t", cpus=1, memory=1 << 20, uid=pw.pw_uid, user_name="alice")
    job = Job(id=42, spec=spec, state=JobState.PENDING, remote_node="", attempt=1)
    b, _fed, _peer, _now = make([job], {})
    with pytest.raises(PeerRefused):
        forward(b, job)
    assert b.restd.calls == []


def test_the_first_forward_after_a_restart_looks_for_its_tag_first(monkeypatch):
    """Sent just before a restart, its answer never recorded: the copy Slurm has is taken, not sent twice."""
    monkeypatch.setattr(SlurmBridge, "_login_user", lambda self, job: job.spec.user_name)
    job = ours()
    job.remote_node, job.remote_id = "", 0
    there = {"errors": [], "jobs": [rec_of(7, "mallory"), rec_of(8, "alice", state="PENDING")]}
    b, _fed, _peer, _now = make([job], {("GET", "/jobs"): there,
                                        ("POST", "/job/submit"): {"errors": [], "job_id": 99}})
    rec = forward(b, job)
    assert rec["Id"] == 8 and ("POST", "/job/submit", "alice") not in b.restd.calls
    # Slurm's list read once: a first forward of an attempt it did not show is sent, without asking again.
    assert forward(b, job, attempt=2)["Id"] == 99
    assert [c[:2] for c in b.restd.calls] == [("GET", "/jobs"), ("POST", "/job/submit")]


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


def test_a_cancel_is_done_and_read_back_as_the_jobs_own_user():
    """Not as query_user: under PrivateData=jobs only the job's user (or an operator) sees it."""
    job = ours()
    after = {"errors": [], "jobs": [rec_of(7, "alice", state="CANCELLED")]}
    b, _fed, _peer, _now = make([job], {("DELETE", "/job/7"): {"errors": []}, ("GET", "/job/7"): after})
    rec = asyncio.run(b.request("POST", "/jobs/7/cancel", json={"Origin": "a"}))
    assert rec["State"] == "CANCELLED"
    assert b.restd.calls == [("DELETE", "/job/7", "alice"), ("GET", "/job/7", "alice")]


def test_an_array_of_a_system_account_is_refused_before_any_task_is_recorded():
    from dataclasses import replace

    from schedd.cluster.slurm.bridge import submit_array

    pw = pwd.getpwnam("daemon")
    b, fed, _peer, _now = make([], {})
    fed.peers = {"hpc": SimpleNamespace(bridge=b)}
    fed.engine = None  # reaching it would be an AttributeError, not AccessDenied
    spec = JobSpec(command=["true"], name="t", cpus=1, memory=1 << 20, uid=pw.pw_uid, user_name="daemon", node="hpc")
    with pytest.raises(AccessDenied, match="system account"):
        asyncio.run(submit_array(fed, [replace(spec, array_task_id=t) for t in range(3)]))
    assert b.restd.calls == []
