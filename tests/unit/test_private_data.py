"""Issue 11 items 9 and 10: who may raise a job's priority, and who sees a job's command line and paths.

Over a real engine and store (held jobs: nothing runs) and the D-Bus front end on a
recording stand-in for the bus: the rules themselves, without a daemon.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from prereq import ordinary_uid
from dbus_fast import Message, MessageType, Variant

from schedd import JOB_IFACE, MANAGER_PATH, job_path
from schedd.config import Config, ConfigError, load
from schedd.api.dbus.service import DBusService, JobObject, ServiceBus, _viewer, job_variants
from schedd.api.jobview import job_record
from schedd.core.engine import MANAGE_ACTION, PRIORITY_ACTION, Caller, Engine
from schedd.errors import AccessDenied
from schedd.core.model import Job, JobState
from schedd.protocol import JOB_PROPERTIES, PRIVATE_JOB_KEYS, redact_job
from schedd.core.store import Store
from schedctl import render


USER = ordinary_uid()


def spec(**extra: Any) -> dict[str, Variant]:
    out = {"Command": Variant("as", ["sleep", "1"]), "Hold": Variant("b", True), "WorkingDirectory": Variant("s", "/")}
    for k, (sig, v) in extra.items():
        out[k] = Variant(sig, v)
    return out


# -- item 9: priority ------------------------------------------------------------------------


async def test_an_ordinary_user_may_only_lower_priority(engine: Engine):
    with pytest.raises(AccessDenied) as e:
        await engine.submit(spec(Priority=("i", 100)), Caller(USER))
    assert e.value.message == (
        "Priority: 100 is above 0, the most an ordinary user may ask (max_user_priority); only root or a user "
        "polkit allows org.schedd.Schedd1.set-priority may raise it")
    assert engine.jobs == {}  # refused, not clamped
    assert (await engine.submit(spec(Priority=("i", -5)), Caller(USER))).spec.priority == -5
    assert (await engine.submit(spec(Priority=("i", 0)), Caller(USER))).spec.priority == 0
    assert (await engine.submit(spec(), Caller(USER))).spec.priority == 0


async def test_max_user_priority_is_the_bound_and_root_passes_it(engine: Engine):
    engine.config.max_user_priority = 10
    assert (await engine.submit(spec(Priority=("i", 10)), Caller(USER))).spec.priority == 10
    with pytest.raises(AccessDenied, match="Priority: 11 is above 10"):
        await engine.submit(spec(Priority=("i", 11)), Caller(USER))
    job = await engine.submit(spec(Priority=("i", 2**31 - 1)), Caller(0))
    assert job.spec.priority == 2**31 - 1
    job = await engine.submit(spec(Priority=("i", 100), User=("u", USER)), Caller(0))
    assert job.spec.priority == 100 and job.uid == USER


async def test_submit_many_names_the_spec_and_queues_none(engine: Engine):
    with pytest.raises(AccessDenied, match=r"^spec 1: Priority: 7 is above 0"):
        await engine.submit_many([spec(), spec(Priority=("i", 7))], Caller(USER))
    assert engine.jobs == {}


async def test_polkit_may_raise_priority(engine: Engine):
    asked: list[tuple[int, str]] = []

    async def polkit(caller: Caller, action: str) -> bool:
        asked.append((caller.uid, action))
        return caller.uid == USER

    engine.authorize_other = polkit
    assert (await engine.submit(spec(Priority=("i", 50)), Caller(USER))).spec.priority == 50
    assert asked == [(USER, PRIORITY_ACTION)]
    await engine.submit(spec(Priority=("i", -1)), Caller(USER))
    assert len(asked) == 1  # no question when nothing is raised


async def test_a_peer_cannot_raise_priority_above_this_nodes_cap(engine: Engine):
    """The origin checked its own rules; here the job is clamped to this node's max_user_priority."""
    engine.config.max_user_priority = 5
    (job,) = await engine.submit_many([spec(Priority=("i", 2**31 - 1), User=("u", USER))], Caller(0),
                                      origin=("a", 7, 1))
    assert job.spec.priority == 5 and job.origin_node == "a"
    (low,) = await engine.submit_many([spec(Priority=("i", -3), User=("u", USER))], Caller(0), origin=("a", 8, 1))
    assert low.spec.priority == -3


async def test_a_per_user_daemon_has_no_priority_cap(tmp_path: Path):
    cfg = Config(node_name="n", cpu_ids=[0], memory=4 << 30, state_dir=tmp_path)
    store = Store(tmp_path / "u.db")
    e = Engine(cfg, store, user_mode=True)
    e.jobs_dir.mkdir()
    try:
        assert (await e.submit(spec(Priority=("i", 100)), Caller(os.getuid()))).spec.priority == 100
    finally:
        await store.drain()
        store.close()


def _conf(tmp_path: Path, text: str) -> Config:
    p = tmp_path / "schedd.toml"
    p.write_text(text)
    return load(p, user_mode=False)


def test_config_keys(tmp_path: Path):
    c = _conf(tmp_path, "[jobs]\nmax_user_priority = -10\nprivate_data = false\n")
    assert c.max_user_priority == -10 and c.private_data is False
    c = _conf(tmp_path, "[node]\nname = 'x'\n")
    assert c.max_user_priority == 0 and c.private_data is True
    for bad, words in (("max_user_priority = 2147483648", "max_user_priority"), ("max_user_priority = '5'", "integer"),
                       ("max_user_priority = true", "integer"), ("private_data = 'yes'", "true or false")):
        with pytest.raises(ConfigError, match=words):
            _conf(tmp_path, f"[jobs]\n{bad}\n")


def test_the_policy_file_declares_the_priority_action():
    text = (Path(__file__).resolve().parents[2] / "packaging/org.schedd.Schedd1.policy").read_text()
    assert f'<action id="{PRIORITY_ACTION}">' in text
    assert f'<annotate key="org.freedesktop.policykit.imply">{PRIORITY_ACTION}</annotate>' in text
    assert f'<action id="{MANAGE_ACTION}">' in text


# -- item 10: private data ---------------------------------------------------------------------


class FakeBus:
    """What DBusService uses of a bus: export, handlers, send (recorded)."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.handlers: list = []

    def add_message_handler(self, h) -> None:
        self.handlers.append(h)

    def export(self, path: str, iface) -> None:
        pass

    def unexport(self, path: str) -> None:
        pass

    def send(self, msg: Message) -> None:
        self.sent.append(msg)


def a_job(uid: int = USER, job_id: int = 3) -> Job:
    from schedd.core.model import JobSpec

    s = JobSpec(command=["curl", "-H", "token: s3cret"], name="fetch", cpus=1, memory=1 << 30, gpus=0, priority=0,
                working_directory="/home/alice/secret-project", environment=["API_TOKEN=s3cret"],
                stdout_path="/home/alice/out.log", stderr_path="/home/alice/err.log", runtime_max_usec=0,
                hold=True, uid=uid, gid=uid, user_name="alice", after=[], node="", requeue=True)
    return Job(id=job_id, spec=s, submit_time=1, node="n", state=JobState.HELD, reason="held")


@pytest.fixture
def service(engine: Engine) -> DBusService:
    return DBusService(engine, FakeBus())


def test_redaction_keeps_every_key_and_type():
    rec = job_record(a_job())
    red = redact_job(rec)
    assert set(red) == set(rec)
    assert red["Command"] == [] and red["WorkingDirectory"] == red["StdoutPath"] == red["StderrPath"] == ""
    assert {k: v for k, v in red.items() if k not in PRIVATE_JOB_KEYS} == \
           {k: v for k, v in rec.items() if k not in PRIVATE_JOB_KEYS}
    hidden = job_variants(a_job(), private=False)
    assert {k: v.signature for k, v in hidden.items()} == JOB_PROPERTIES
    assert hidden["Command"].value == [] and hidden["Name"].value == "fetch" and hidden["UserName"].value == "alice"


def test_the_environment_is_no_job_property():
    assert "Environment" not in JOB_PROPERTIES
    assert all("s3cret" not in repr(v.value) or k == "Command" for k, v in job_variants(a_job()).items())


@pytest.mark.parametrize("viewer, sees", [
    (None, False), ((USER, False), True), ((0, False), True), ((USER + 1, False), False), ((USER + 1, True), True),
])
def test_who_sees_private_keys(service: DBusService, viewer, sees: bool):
    job = a_job()
    assert service.viewer_sees(job, viewer) is sees
    service.engine.config.private_data = False
    assert service.viewer_sees(job, viewer) is True


def test_property_getters_redact_for_the_reader(service: DBusService):
    obj = JobObject(service, a_job())
    token = _viewer.set((USER + 1, False))
    try:
        assert obj.Command == [] and obj.StdoutPath == "" and obj.WorkingDirectory == "" and obj.Name == "fetch"
        _viewer.set((USER, False))
        assert obj.Command == ["curl", "-H", "token: s3cret"] and obj.StdoutPath == "/home/alice/out.log"
        _viewer.set(None)  # nobody known: hidden
        assert obj.Command == []
    finally:
        _viewer.reset(token)


def test_signals_carry_no_private_values(service: DBusService):
    job = a_job()
    service.objects[job.id] = JobObject(service, job)
    bus: FakeBus = service.bus  # type: ignore[assignment]
    service.job_changed(job, frozenset({"spec.stdout_path", "state", "spec.command"}), JobState.HELD)
    (sig,) = bus.sent
    iface, changed, invalidated = sig.body
    assert iface == JOB_IFACE and set(changed) == {"State"} and invalidated == ["Command", "StdoutPath"]
    # Only private keys changed: nothing leaks through an empty list of names either.
    bus.sent.clear()
    service.job_changed(job, frozenset({"spec.stderr_path"}), JobState.HELD)
    assert bus.sent[0].body[1] == {} and bus.sent[0].body[2] == ["StderrPath"]
    service.engine.config.private_data = False
    bus.sent.clear()
    service.job_changed(job, frozenset({"spec.stdout_path"}), JobState.HELD)
    assert bus.sent[0].body[1]["StdoutPath"].value == "/home/alice/out.log" and bus.sent[0].body[2] == []


def test_interfaces_added_is_redacted(service: DBusService):
    sent: list[Message] = []
    sbus = ServiceBus.__new__(ServiceBus)
    sbus._disconnected = False
    sbus.send = sent.append  # type: ignore[method-assign]
    sbus._emit_interface_added(job_path(3), JobObject(service, a_job()))
    (sig,) = sent
    assert sig.path == MANAGER_PATH and sig.member == "InterfacesAdded"
    props = sig.body[1][JOB_IFACE]
    assert set(props) == set(JOB_PROPERTIES)
    assert props["Command"].value == [] and props["StdoutPath"].value == "" and props["Name"].value == "fetch"
    assert "s3cret" not in repr(sig.body)


def _call(path: str, iface: str, member: str, sig: str, body: list) -> Message:
    return Message(destination="org.schedd.Schedd1", path=path, interface=iface, member=member, signature=sig,
                   body=body, sender=":1.42", message_type=MessageType.METHOD_CALL, serial=5)


def test_the_tap_knows_which_calls_read_job_properties(service: DBusService):
    job = a_job()
    service.objects[job.id] = JobObject(service, job)
    props = "org.freedesktop.DBus.Properties"
    assert service._jobs_read(_call(job_path(3), props, "Get", "ss", [JOB_IFACE, "Command"])) == [job]
    assert service._jobs_read(_call(job_path(3), props, "GetAll", "s", [JOB_IFACE])) == [job]
    assert service._jobs_read(_call("/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", "", [])) == [job]
    assert service._jobs_read(_call(job_path(9), props, "GetAll", "s", [JOB_IFACE])) is None  # not exported
    assert service._jobs_read(_call(MANAGER_PATH, props, "GetAll", "s", ["org.schedd.Schedd1.Manager"])) is None
    # Unknown sender: the tap holds the call to ask the bus; known and the owner: through, no polkit.
    assert service._known_viewer(":1.42", [job]) is None
    service._uids[":1.42"] = USER
    assert service._known_viewer(":1.42", [job]) == (USER, False)
    service._uids[":1.43"] = USER + 1
    assert service._known_viewer(":1.43", [job]) is None  # polkit must be asked first
    service._operators[USER + 1] = (False, float("inf"))
    assert service._known_viewer(":1.43", [job]) == (USER + 1, False)


def test_show_says_a_key_is_hidden():
    rec = redact_job(job_record(a_job()))
    plain = render.show(rec, human=False).splitlines()
    assert "Command=" in plain and "StdoutPath=" in plain and "Name=fetch" in plain
    human = render.show(rec, human=True)
    assert "Command=  # hidden: shown only to the job's owner and root" in human
    assert "# hidden" not in render.show(job_record(a_job()), human=True)


@pytest.mark.parametrize("viewer, name, sees", [
    (None, "alice", False), ((5, False), "alice", True), ((6, False), "bob", False), ((0, False), "bob", True),
    ((6, True), "bob", True),
])
def test_peer_rows_are_judged_by_user_name(service: DBusService, viewer, name: str, sees: bool):
    """ListJobs AllNodes: a peer's job is known by its user's name (uids differ between nodes)."""
    assert service.viewer_sees_name("alice", name, viewer) is sees
    assert service.viewer_sees_name("alice", None, (5, False)) is False  # a uid without a name here sees no one's


async def test_polkit_is_asked_once_per_uid_and_never_interactively(service: DBusService):
    asked: list[Caller] = []

    async def polkit(caller: Caller, action: str) -> bool:
        assert action == MANAGE_ACTION
        asked.append(caller)
        return False

    service.engine.authorize_other = polkit
    job = a_job()
    for sender in (":1.50", ":1.51", ":1.52"):
        assert await service.viewer(Caller(USER + 1, sender, interactive=True), [job]) == (USER + 1, False)
    assert len(asked) == 1 and asked[0].interactive is False
    assert await service.viewer(Caller(USER, ":1.53"), [job]) == (USER, False)  # the owner: no question
    assert len(asked) == 1


async def test_list_jobs_of_the_whole_cluster_redacts_per_row(service: DBusService):
    """ListJobs with AllNodes: local rows by uid, peers' rows by user name; every key stays (or those
    of Properties)."""
    from schedd.api.dbus.service import ManagerObject, _sender

    me = pwd.getpwuid(USER).pw_name
    local_other = a_job(uid=USER + 1, job_id=4)
    local_mine = a_job(uid=USER, job_id=5)
    for j in (local_other, local_mine):
        service.engine._insert(j)

    def peer_rec(user: str, jid: int) -> dict:
        return job_record(a_job(job_id=jid)) | {"UserName": user}

    class Fed:
        async def list_cluster(self, states, user_name, after, limit):
            return [("p", peer_rec(me, 1)), ("p", peer_rec("not-" + me, 2))]

    async def no(caller: Caller, action: str) -> bool:
        return False

    service.engine.federation = Fed()
    service.engine.authorize_other = no
    service._uids[":1.9"] = USER
    token = _sender.set((":1.9", False))
    try:
        list_jobs = ManagerObject.ListJobs.__wrapped__  # the handler under dbus-fast's decorator
        rows = await list_jobs(service.manager, {"AllNodes": Variant("b", True)})
        some = await list_jobs(service.manager, {"AllNodes": Variant("b", True),
                                                 "Properties": Variant("as", ["Command", "State"])})
    finally:
        _sender.reset(token)
    # Properties: those keys, Id and Origin, in local and peers' rows alike, redacted the same way
    assert all(set(r) == {"Id", "Command", "State", "Origin"} for r in some) and len(some) == len(rows) == 4
    assert {(r["Origin"].value, r["Id"].value): r["Command"].value for r in some} == {
        ("n", 5): local_mine.spec.command, ("n", 4): [], ("p", 1): local_mine.spec.command, ("p", 2): []}
    got = {(r["Origin"].value, r["Id"].value): r for r in rows}
    assert got[("n", 5)]["Command"].value == local_mine.spec.command
    assert got[("n", 4)]["Command"].value == [] and got[("n", 4)]["StdoutPath"].value == ""
    assert got[("p", 1)]["Command"].value == local_mine.spec.command
    assert got[("p", 2)]["Command"].value == [] and got[("p", 2)]["WorkingDirectory"].value == ""
    assert all(set(r) == set(JOB_PROPERTIES) | {"Origin"} for r in rows)


async def test_list_jobs_properties_on_this_node(service: DBusService):
    """ListJobs' Properties on the local path: those keys and Id in each row, others' private keys
    redacted; unknown names and oversized lists refused with what is valid."""
    from schedd.api.dbus.service import ManagerObject, _sender
    from schedd.api.dbus.wire import PremarshalledReply
    from dbus_fast.errors import DBusError

    from schedd.errors import InvalidArgument

    for j in (a_job(uid=USER + 1, job_id=4), a_job(uid=USER, job_id=5)):
        service.engine._insert(j)

    async def no(caller: Caller, action: str) -> bool:
        return False

    service.engine.authorize_other = no
    service._uids[":1.9"] = USER
    call = Message(path=MANAGER_PATH, interface="org.schedd.Schedd1.Manager", member="ListJobs", signature="a{sv}",
                   body=[{}], serial=3, sender=":1.9")
    list_jobs = ManagerObject.ListJobs.__wrapped__
    token = _sender.set((":1.9", False))
    try:
        async def rows(flt: dict) -> list[dict]:
            body = await list_jobs(service.manager, flt)
            return [{k: v.value for k, v in r.items()} for r in PremarshalledReply(call, "aa{sv}", body).body[0]]

        some = await rows({"Properties": Variant("as", ["StdoutPath", "Name"])})
        assert some == [{"Id": 4, "Name": "fetch", "StdoutPath": ""},
                        {"Id": 5, "Name": "fetch", "StdoutPath": "/home/alice/out.log"}]
        assert [set(r) for r in await rows({})] == [set(JOB_PROPERTIES)] * 2
        for names, words in ((["Name", "ArrayTasks"], r"no job property 'ArrayTasks'; valid: Id, Name, .*comes with FoldArrays"),
                             (["Name"] * 1000, "Properties: 1,000 names; at most 256")):
            with pytest.raises(DBusError, match=words) as e:
                await rows({"Properties": Variant("as", names)})
            assert e.value.type == InvalidArgument.dbus_name
    finally:
        _sender.reset(token)


def test_a_listing_reply_stays_within_the_bus_message_limit():
    """40 jobs of 1 MiB command lines would make a 40 MiB reply: the bus would drop the daemon's connection."""
    from schedd.api.dbus.service import REPLY_BUDGET, row_bytes, within_budget
    from schedd.core.model import Job, JobSpec

    big = [Job(id=i, spec=JobSpec(command=["true", "x" * 1_000_000], name="big", cpus=1, memory=1 << 20, uid=1000,
                                  gid=1000, user_name="u", working_directory="/"))
           for i in range(1, 41)]
    page = within_budget(big)
    assert 0 < len(page) < 40 and sum(row_bytes(j) for j in page) <= REPLY_BUDGET
    assert [j.id for j in page] == list(range(1, len(page) + 1))  # the head, in order: After pages on
    assert within_budget(big[:1], budget=10) == big[:1]  # one row always goes, whatever its size
    # Properties: only what the rows carry counts (the same estimate as a whole row's when all are asked)
    from schedd.api.dbus.service import _LONG_KEYS, ROW_OVERHEAD, selected_row_bytes

    assert [selected_row_bytes(frozenset(JOB_PROPERTIES))(j) for j in big[:3]] == [row_bytes(j) for j in big[:3]]
    assert [ROW_OVERHEAD + sum(size(j) for size in _LONG_KEYS.values()) for j in big[:3]] == \
           [row_bytes(j) for j in big[:3]]  # the estimate by key is row_bytes' own
    assert within_budget(big, size=selected_row_bytes(frozenset({"Id", "State", "Name"}))) == big
    assert len(within_budget(big, size=selected_row_bytes(frozenset({"Id", "Command"})))) == len(page)
