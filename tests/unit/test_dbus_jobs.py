"""Job paths answered without an object per job (schedd.api.dbus.jobs) answer as exported objects did.

Differential: every call is put to two unconnected buses -- one where DBusService's tap answers
from the job table, one where, as before, a JobObject is exported at the job's path and dbus-fast
answers -- and the replies must be the same, message for message (type, error, signature, body,
introspection XML byte for byte), for the job's owner, another user, a polkit operator and root.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast import introspection as intr
from dbus_fast.errors import DBusError
from prereq import ordinary_uid

from schedd import JOB_IFACE, MANAGER_IFACE, MANAGER_PATH, job_path
from schedd.api.dbus.jobs import JOB_ROOT, children_xml, job_id
from schedd.api.dbus.service import DBusService, JobObject, ManagerObject, ServiceBus, _viewer
from schedd.core.engine import Caller, Engine
from schedd.core.model import Job, JobSpec, JobState
from schedd.protocol import JOB_PROPERTIES, PRIVATE_JOB_KEYS

PROPS = "org.freedesktop.DBus.Properties"
INTRO = "org.freedesktop.DBus.Introspectable"


OWNER = ordinary_uid()
OTHER, OPERATOR = OWNER + 1, OWNER + 2
SENDERS = {":1.10": OWNER, ":1.11": OTHER, ":1.12": OPERATOR, ":1.13": 0}
VIEWERS = {":1.10": (OWNER, False), ":1.11": (OTHER, False), ":1.12": (OPERATOR, True), ":1.13": (0, False)}


def a_job(job_id: int = 3, uid: int = OWNER) -> Job:
    s = JobSpec(command=["curl", "-H", "token: s3cret"], name="fetch", cpus=1, memory=1 << 30, gpus=0, priority=0,
                working_directory="/home/alice/secret-project", environment=[], stdout_path="/home/alice/out.log",
                stderr_path="/home/alice/err.log", runtime_max_usec=0, hold=True, uid=uid, gid=uid,
                user_name="alice", after=[], node="", requeue=True)
    return Job(id=job_id, spec=s, submit_time=1, node="n", state=JobState.HELD, reason="held")


class Recorder:
    """An unconnected ServiceBus whose sends are kept."""

    def __init__(self) -> None:
        self.bus = ServiceBus(bus_address="unix:path=/nonexistent/bus")
        self.sent: list[Message] = []
        self.bus.send = self.sent.append  # type: ignore[method-assign]

    def ask(self, msg: Message) -> list[Message]:
        self.sent.clear()
        self.bus._process_message(msg)
        return list(self.sent)


@pytest.fixture
async def lazy(engine: Engine):
    """The service under test: the tap answers job paths from its table."""
    rec = Recorder()
    engine.executor = SimpleNamespace(name="systemd")  # the Manager's Executor property
    service = DBusService(engine, rec.bus)
    service._uids.update(SENDERS)
    service._operators.update({OWNER: (False, float("inf")), OTHER: (False, float("inf")), OPERATOR: (True, float("inf"))})
    rec.service = service  # type: ignore[attr-defined]
    return rec


@pytest.fixture
async def exported(lazy: Recorder):
    """Before: a dbus-fast object exported per job, the property getters reading the viewer."""
    rec = Recorder()
    rec.bus.export(MANAGER_PATH, ManagerObject(lazy.service))  # type: ignore[attr-defined]
    return rec


def _add(lazy: Recorder, exported: Recorder, job: Job) -> None:
    lazy.service.job_added(job)  # type: ignore[attr-defined]
    exported.bus.export(job_path(job.id), JobObject(lazy.service, job))  # type: ignore[attr-defined]


def call(path: str, iface: str | None, member: str, sig: str = "", body: list | None = None,
         sender: str = ":1.10", flags: MessageFlag = MessageFlag.NONE) -> Message:
    return Message(destination="org.schedd.Schedd1", path=path, interface=iface, member=member, signature=sig,
                   body=body or [], sender=sender, message_type=MessageType.METHOD_CALL, serial=7, flags=flags)


def facts(replies: list[Message]) -> list[tuple]:
    return [(m.message_type, m.error_name, m.reply_serial, m.destination, m.signature, m.body) for m in replies]


def both(lazy: Recorder, exported: Recorder, msg: Message) -> tuple[list[tuple], list[tuple]]:
    token = _viewer.set(VIEWERS.get(msg.sender))  # before, the tap had set this for dbus-fast's getters
    try:
        old = facts(exported.ask(msg))
    except DBusError:  # dbus-fast's error for a call that wants no reply escapes its dispatch: none is sent
        assert msg.flags & MessageFlag.NO_REPLY_EXPECTED
        old = []
    finally:
        _viewer.reset(token)
    try:
        new = facts(lazy.ask(msg))
    except DBusError:
        assert msg.flags & MessageFlag.NO_REPLY_EXPECTED
        new = []
    return new, old


LIVE, GONE = job_path(3), job_path(99)
CALLS = [
    (INTRO, "Introspect", "", []),
    (PROPS, "Get", "ss", [JOB_IFACE, "State"]),
    (PROPS, "Get", "ss", [JOB_IFACE, "Command"]),
    (PROPS, "Get", "ss", [JOB_IFACE, "StdoutPath"]),
    (PROPS, "GetAll", "s", [JOB_IFACE]),
    (PROPS, "Get", "ss", [JOB_IFACE, "NoSuch"]),
    (PROPS, "Set", "ssv", [JOB_IFACE, "State", Variant("s", "RUNNING")]),
    (PROPS, "Set", "ssv", [JOB_IFACE, "NoSuch", Variant("s", "x")]),
    (PROPS, "GetAll", "s", ["org.freedesktop.DBus.Peer"]),
    (PROPS, "Get", "ss", ["org.freedesktop.DBus.Peer", "x"]),
    (PROPS, "GetAll", "s", ["com.example.Nothing"]),
    (PROPS, "GetAll", "s", [""]),
    (PROPS, "Frob", "s", [JOB_IFACE]),
    (PROPS, "Get", "s", [JOB_IFACE]),
    ("org.freedesktop.DBus.Peer", "Ping", "", []),
    ("org.freedesktop.DBus.ObjectManager", "GetManagedObjects", "", []),
    (JOB_IFACE, "Frob", "", []),
    (JOB_IFACE, "Cancel", "t", [1]),
    (None, "Introspect", "", []),
    (None, "Frob", "", []),
    ("org.freedesktop.DBus.Debug", "Frob", "", []),
]


@pytest.mark.parametrize("sender", list(SENDERS))
@pytest.mark.parametrize("path", [LIVE, GONE, job_path(3) + "/x", "/org/schedd/Schedd1/job/03", JOB_ROOT,
                                  MANAGER_PATH, "/org/schedd", "/"])
async def test_every_call_on_a_job_path_answers_as_an_exported_object(lazy, exported, path: str, sender: str):
    _add(lazy, exported, a_job())
    for iface, member, sig, body in CALLS:
        if path in ("/", "/org/schedd", MANAGER_PATH, JOB_ROOT) and iface == "org.freedesktop.DBus.ObjectManager":
            continue  # answered in slices, below
        new, old = both(lazy, exported, call(path, iface, member, sig, body, sender))
        assert new == old, (path, iface, member, body)
        assert len(new) == 1


async def test_private_keys_read_empty_for_others_through_the_new_paths(lazy, exported):
    _add(lazy, exported, a_job())
    for sender, sees in ((":1.10", True), (":1.11", False), (":1.12", True), (":1.13", True)):
        (reply,) = lazy.ask(call(LIVE, PROPS, "GetAll", "s", [JOB_IFACE], sender))
        values = reply.body[0]
        assert list(values) == sorted(JOB_PROPERTIES)  # dbus-fast's order: by name
        for key, hidden in PRIVATE_JOB_KEYS.items():
            assert (values[key].value == hidden) is not sees, (sender, key)
            (one,) = lazy.ask(call(LIVE, PROPS, "Get", "ss", [JOB_IFACE, key], sender))
            assert one.body[0] == values[key]
        assert values["Name"].value == "fetch"
        assert sees or "s3cret" not in repr(reply.body)


async def test_no_reply_is_sent_when_none_is_expected(lazy, exported):
    _add(lazy, exported, a_job())
    for iface, member, sig, body in CALLS:
        if iface == JOB_IFACE and member == "Cancel":
            continue
        msg = call(LIVE, iface, member, sig, body, flags=MessageFlag.NO_REPLY_EXPECTED)
        new, old = both(lazy, exported, msg)
        assert new == old == [], (iface, member)


async def test_the_introspection_xml_is_byte_for_byte_what_dbus_fast_wrote(lazy, exported):
    _add(lazy, exported, a_job())
    for path in (LIVE, JOB_ROOT, MANAGER_PATH):
        (new,) = lazy.ask(call(path, INTRO, "Introspect"))
        (old,) = exported.ask(call(path, INTRO, "Introspect"))
        assert new.body == old.body, path
    assert f'<node name="{LIVE}">' in new.body[0] or True
    # Several children: dbus-fast's layout (its order was a set's; ours is by id).
    for n in range(4):
        node = intr.Node(JOB_ROOT)
        node.nodes = [intr.Node(str(i)) for i in range(1, n + 1)]
        assert children_xml(JOB_ROOT, range(1, n + 1)) == node.tostring()


async def test_the_job_root_lists_every_live_job_and_follows_changes(lazy):
    svc = lazy.service  # type: ignore[attr-defined]
    for i in (3, 4, 10):
        svc.job_added(a_job(i))
    children = lambda: [n.name for n in intr.Node.parse(lazy.ask(call(JOB_ROOT, INTRO, "Introspect"))[0].body[0]).nodes]  # noqa: E731
    assert children() == ["3", "4", "10"]
    svc.job_added(a_job(11))
    svc.job_released(svc.objects[4])
    assert children() == ["3", "10", "11"]
    (manager,) = lazy.ask(call(MANAGER_PATH, INTRO, "Introspect"))
    assert [n.name for n in intr.Node.parse(manager.body[0]).nodes] == ["job"]
    svc.tree.reply_budget = 40  # a queue whose list would not fit one reply: refused, the daemon stays
    (err,) = lazy.ask(call(JOB_ROOT, INTRO, "Introspect"))
    assert err.error_name == "org.freedesktop.DBus.Error.LimitsExceeded" and "ListJobs" in err.body[0]


async def test_no_object_is_exported_per_job_and_signals_still_come(lazy):
    svc = lazy.service  # type: ignore[attr-defined]
    lazy.sent.clear()
    for i in range(1, 101):
        svc.job_added(a_job(i))
    assert list(lazy.bus._path_exports) == [MANAGER_PATH]
    added = [m for m in lazy.sent if m.member == "InterfacesAdded"]
    assert len(added) == 100 and added[0].path == MANAGER_PATH and added[0].body[0] == job_path(1)
    assert added[0].body[1][JOB_IFACE]["Command"].value == [] and "s3cret" not in repr(added[0].body)
    assert len([m for m in lazy.sent if m.member == "JobStateChanged"]) == 100
    lazy.sent.clear()
    svc.job_changed(svc.objects[5], frozenset({"state", "reason"}), JobState.PENDING)
    assert [(m.path, m.member) for m in lazy.sent] == [(job_path(5), "PropertiesChanged"),
                                                       (MANAGER_PATH, "JobStateChanged")]
    lazy.sent.clear()
    svc.job_released(svc.objects[5])
    (removed,) = lazy.sent
    assert removed.path == MANAGER_PATH and removed.body == [job_path(5), [JOB_IFACE]]
    (err,) = lazy.ask(call(job_path(5), PROPS, "Get", "ss", [JOB_IFACE, "State"]))
    assert err.error_name == "org.freedesktop.DBus.Error.UnknownObject"


async def _settle(rec: Recorder) -> list[Message]:
    """The replies sent once the call's task has run (signals of the engine's own left out)."""
    replies: list[Message] = []
    for _ in range(100):
        replies = [m for m in rec.sent if m.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR)]
        if replies:
            break
        await asyncio.sleep(0.01)
    return replies


async def test_an_unknown_reader_is_found_out_before_private_keys_are_answered(lazy):
    svc = lazy.service  # type: ignore[attr-defined]
    svc.job_added(a_job())
    asked: list[str] = []

    async def caller_of(sender: str, interactive: bool) -> Caller:
        asked.append(sender)
        return Caller(OTHER, sender)

    svc._caller_of = caller_of
    lazy.sent.clear()
    lazy.bus._process_message(call(LIVE, PROPS, "Get", "ss", [JOB_IFACE, "Command"], sender=":1.77"))
    (reply,) = await _settle(lazy)
    assert asked == [":1.77"] and reply.body == [Variant("as", [])]
    # A public key needs nobody's name; a job released while the bus is asked is gone.
    lazy.sent.clear()
    (state,) = lazy.ask(call(LIVE, PROPS, "Get", "ss", [JOB_IFACE, "State"], sender=":1.78"))
    assert state.body == [Variant("s", "HELD")] and asked == [":1.77"]
    lazy.sent.clear()
    lazy.bus._process_message(call(LIVE, PROPS, "GetAll", "s", [JOB_IFACE], sender=":1.79"))
    svc.job_released(svc.objects[3])
    lazy.sent.clear()
    (gone,) = await _settle(lazy)
    assert gone.error_name == "org.freedesktop.DBus.Error.UnknownObject"


async def test_cancel_on_a_job_path_has_the_callers_rights(lazy, engine: Engine):
    svc = lazy.service  # type: ignore[attr-defined]

    async def no(caller: Caller, action: str) -> bool:
        return False

    engine.authorize_other = no
    jobs = [await engine.submit({"Command": Variant("as", ["true"]), "Hold": Variant("b", True),
                                 "WorkingDirectory": Variant("s", "/")}, Caller(OWNER)) for _ in range(2)]
    lazy.sent.clear()
    lazy.bus._process_message(call(job_path(jobs[0].id), JOB_IFACE, "Cancel", sender=":1.11"))
    (denied,) = await _settle(lazy)
    assert denied.error_name == "org.schedd.Schedd1.Error.AccessDenied" and engine.get(jobs[0].id).state == JobState.HELD
    for job, iface in zip(jobs, (JOB_IFACE, None)):  # with or without the interface named, as before
        lazy.sent.clear()
        lazy.bus._process_message(call(job_path(job.id), iface, "Cancel", sender=":1.10"))
        (done,) = await _settle(lazy)
        assert done.message_type == MessageType.METHOD_RETURN and done.body == []
        assert engine.get(job.id).state == JobState.CANCELLED
    lazy.sent.clear()
    lazy.bus._process_message(call(job_path(jobs[0].id), JOB_IFACE, "Cancel", sender=":1.10"))
    (again,) = await _settle(lazy)
    assert again.error_name == "org.schedd.Schedd1.Error.InvalidState"


@pytest.mark.parametrize("path", ["/", "/org/schedd", MANAGER_PATH, JOB_ROOT])
async def test_get_managed_objects_lists_what_dbus_fast_listed(lazy, exported, path: str):
    for i in (3, 4):
        _add(lazy, exported, a_job(i, uid=OWNER if i == 3 else OTHER))
    msg = call(path, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", sender=":1.10")
    lazy.sent.clear()
    lazy.bus._process_message(msg)
    (new,) = await _settle(lazy)
    token = _viewer.set(VIEWERS[":1.10"])
    try:
        (old,) = exported.ask(msg)
    finally:
        _viewer.reset(token)
    assert new.body == old.body and list(new.body[0]) == list(old.body[0])
    assert new.body[0][job_path(4)][JOB_IFACE]["Command"].value == []  # another's job
    assert new.body[0][job_path(3)][JOB_IFACE]["Command"].value == ["curl", "-H", "token: s3cret"]
    assert (MANAGER_PATH in new.body[0]) is (path in ("/", "/org/schedd"))
    if MANAGER_PATH in new.body[0]:
        assert set(new.body[0][MANAGER_PATH]) == {MANAGER_IFACE}


class Disk:
    """Jobs the engine keeps on disk only (engine/loading.py), as JobPaths reads them."""

    def __init__(self, *jobs: Job) -> None:
        self.jobs = {j.id: j for j in jobs}

    def on_disk(self, job_id: int) -> Job | None:
        return self.jobs.get(job_id)

    def on_disk_count(self) -> int:
        return len(self.jobs)

    def on_disk_jobs(self, after: int, limit: int) -> list[Job]:
        return [self.jobs[i] for i in sorted(self.jobs) if i > after][:limit]

    def on_disk_ids(self) -> list[int]:
        return sorted(self.jobs)


async def test_jobs_on_disk_are_listed_with_the_others(lazy):
    """A held job out of memory is still one of the manager's objects: in the subtree's children,
    in GetManagedObjects (with its private keys for its owner only), and counted against the limit."""
    svc = lazy.service  # type: ignore[attr-defined]
    svc.job_added(a_job(3))
    svc.objects.disk = Disk(*(a_job(i, uid=OWNER if i == 5 else OTHER) for i in (5, 6)))
    (root,) = lazy.ask(call(JOB_ROOT, INTRO, "Introspect"))
    assert [n.name for n in intr.Node.parse(root.body[0]).nodes] == ["3", "5", "6"]
    lazy.sent.clear()
    lazy.bus._process_message(call(MANAGER_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"))
    (reply,) = await _settle(lazy)
    assert [p for p in reply.body[0]] == [job_path(i) for i in (3, 5, 6)]
    assert reply.body[0][job_path(5)][JOB_IFACE]["Command"].value == ["curl", "-H", "token: s3cret"]
    assert reply.body[0][job_path(6)][JOB_IFACE]["Command"].value == []  # another's job
    svc.MANAGED_MAX = 2  # three objects: one over, the ones on disk counted
    lazy.sent.clear()
    (err,) = lazy.ask(call(MANAGER_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"))
    assert err.error_name == "org.freedesktop.DBus.Error.LimitsExceeded" and "3 job objects" in err.body[0]
    svc.objects.clear()  # only jobs on disk: the subtree still answers for them
    (root,) = lazy.ask(call(JOB_ROOT, INTRO, "Introspect"))
    assert [n.name for n in intr.Node.parse(root.body[0]).nodes] == ["5", "6"]


def test_job_ids_are_read_as_job_path_writes_them():
    assert [job_id(job_path(i)) for i in (0, 1, 42, 10**12)] == [0, 1, 42, 10**12]
    for bad in (JOB_ROOT, JOB_ROOT + "/", JOB_ROOT + "/03", JOB_ROOT + "/3/x", JOB_ROOT + "/x", MANAGER_PATH):
        assert job_id(bad) is None


async def test_jobs_recovered_at_start_answer_at_once_without_a_signal_each(engine: Engine):
    """At start the daemon does not own its bus name yet: nobody subscribed to the name could hear a
    signal per recovered job, which cost seconds at 100,000 jobs. Their paths answer all the same."""
    for i in (3, 4):
        engine.jobs[i] = a_job(i)
    engine.executor = SimpleNamespace(name="systemd")
    rec = Recorder()
    service = DBusService(engine, rec.bus)
    service._uids.update(SENDERS)
    assert rec.sent == [] and list(service.objects) == [3, 4]
    (reply,) = rec.ask(call(job_path(4), PROPS, "Get", "ss", [JOB_IFACE, "Command"]))
    assert reply.body == [Variant("as", ["curl", "-H", "token: s3cret"])]
    (root,) = rec.ask(call(JOB_ROOT, INTRO, "Introspect"))
    assert [n.name for n in intr.Node.parse(root.body[0]).nodes] == ["3", "4"]
    rec.sent.clear()
    service.job_added(a_job(5))  # from now on, each new job is announced
    assert [m.member for m in rec.sent] == ["InterfacesAdded", "JobStateChanged"]


def test_every_property_of_a_row_is_of_its_declared_type():
    """Rows are built without dbus-fast's per-Variant check (jobs._compile_all_variants): each value,
    for jobs in every shape, must verify against its declared signature."""
    from dataclasses import replace

    from schedd.api.dbus.jobs import job_variants

    base = a_job()
    running = replace(base, id=4, state=JobState.RUNNING, reason="", assigned_cpus=[0, 3], assigned_gpus=[1],
                      start_time=2, node="n2", cpu_time_usec=10, memory_peak=1 << 20, array_job_id=2)
    ended = replace(base, id=5, state=JobState.FAILED, reason="signal", exit_code=137, end_time=3, restarts=2,
                    spec=replace(base.spec, after=[1, 2], after_any=[3], after_not_ok=[4], begin_time=2**40,
                                 container="busybox:latest", array_task_id=7, node="any", gpus=2))
    copy = replace(base, id=6, state=JobState.SUSPENDED, origin_node="a", origin_id=9, remote_node="b", remote_id=8,
                   suspend_time=5, suspended_usec=6)
    for job in (base, running, ended, copy):
        for private in (True, False):
            row = job_variants(job, private=private)
            assert set(row) == set(JOB_PROPERTIES)
            for name, v in row.items():
                assert v.signature == JOB_PROPERTIES[name]
                Variant(v.signature, v.value)  # verifies: raises on a value not of that type
