"""The hand-marshalled job signals (schedd/api/dbus/wire.py) are byte for byte what dbus-fast writes.

A wrong padding or length is not a cosmetic bug: the bus daemon disconnects a sender of a
malformed message, which would take the daemon off the bus. So every byte is compared with
dbus-fast's own marshalling of the same body, for jobs of every shape (hypothesis draws the
strings, arrays and numbers whose lengths move the alignments).
"""

from __future__ import annotations

from dataclasses import replace

from dbus_fast import Message, Variant
from hypothesis import given, settings
from hypothesis import strategies as st

from schedd import JOB_IFACE, MANAGER_IFACE, MANAGER_PATH, job_path
from schedd.api.dbus import wire
from schedd.api.dbus.jobs import job_variants
from schedd.core.model import Job, JobSpec, JobState
from schedd.protocol import JOB_PROPERTIES

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
PATHS = st.text("/abcé_.0", max_size=15)


def dbus_fast_bytes(member: str, iface: str, sig: str, body: list, serial: int) -> bytes:
    m = Message.new_signal(path=MANAGER_PATH, interface=iface, member=member, signature=sig, body=body)
    m.serial = serial
    return bytes(m._marshall(False))


def ours(m: Message, serial: int) -> bytes:
    m.serial = serial
    return bytes(m._marshall(False))


jobs = st.builds(
    lambda id_, name, cmd, state, reason, cpus, gpus, after, any_, not_ok, ints, times, wd, out, container: Job(
        id=id_, state=state, reason=reason, assigned_cpus=cpus, assigned_gpus=gpus, exit_code=ints[0],
        restarts=ints[1], submit_time=times[0], start_time=times[1], end_time=times[2], cpu_time_usec=times[3],
        memory_peak=times[4], node=name[:3],
        spec=JobSpec(command=cmd, name=name, cpus=ints[2] or 1, memory=times[5], priority=ints[3], uid=ints[4],
                     user_name=name[::-1], working_directory=wd, stdout_path=out, stderr_path=out + "e",
                     after=after, after_any=any_, after_not_ok=not_ok, container=container)),
    st.integers(1, 2**63), TEXT, st.lists(TEXT, min_size=1, max_size=5), st.sampled_from(list(JobState)), TEXT,
    st.lists(st.integers(0, 4095), max_size=5), st.lists(st.integers(0, 15), max_size=3),
    st.lists(U64, max_size=4), st.lists(U64, max_size=3), st.lists(U64, max_size=3),
    st.tuples(st.integers(-2**31, 2**31 - 1), st.integers(0, 2**31), st.integers(0, 512),
              st.integers(-10000, 10000), st.integers(0, 2**31)),
    st.tuples(U64, U64, U64, U64, U64, U64), PATHS, PATHS, TEXT)


@settings(max_examples=300, deadline=None)
@given(jobs, st.booleans(), U32.filter(bool))
def test_interfaces_added_is_what_dbus_fast_writes(job: Job, private: bool, serial: int):
    body = [job_path(job.id), {JOB_IFACE: job_variants(job, private=private)}]
    expected = dbus_fast_bytes("InterfacesAdded", "org.freedesktop.DBus.ObjectManager", "oa{sa{sv}}", body, serial)
    assert ours(wire.interfaces_added(job, private), serial) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2**63), st.sampled_from(list(JobState)), TEXT, U32.filter(bool))
def test_job_state_changed_is_what_dbus_fast_writes(id_: int, state: JobState, reason: str, serial: int):
    job = Job(id=id_, spec=JobSpec(command=["true"], name="true", cpus=1, memory=1 << 20), state=state, reason=reason)
    expected = dbus_fast_bytes("JobStateChanged", MANAGER_IFACE, "toss", [id_, job_path(id_), state.value, reason],
                               serial)
    assert ours(wire.job_state_changed(job), serial) == expected


def test_the_signal_reads_back_as_the_body_it_carries():
    """Whoever inspects a sent signal (a test, a log) reads its body as of any Message; hidden keys
    read as empty when the row is not private."""
    spec = JobSpec(command=["curl", "-H", "token: s3cret"], name="fetch", cpus=1, memory=1 << 20, working_directory="/home/a",
                   stdout_path="/home/a/out", stderr_path="/home/a/err", after=[1, 2])
    job = Job(id=42, spec=spec, state=JobState.HELD, reason="held", assigned_cpus=[3])
    path, ifaces = wire.interfaces_added(job, False).body
    row = ifaces[JOB_IFACE]
    assert path == job_path(42) and set(row) == set(JOB_PROPERTIES)
    assert row["Command"].value == [] and row["StdoutPath"].value == "" and row["Name"].value == "fetch"
    assert row["After"].value == [1, 2] and row["AssignedCPUs"].value == [3] and row["State"].value == "HELD"
    full = wire.interfaces_added(job, True).body[1][JOB_IFACE]
    assert full["Command"] == Variant("as", ["curl", "-H", "token: s3cret"])
    assert wire.job_state_changed(replace(job, reason="")).body == [42, job_path(42), "HELD", ""]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(jobs, st.booleans(), st.none() | TEXT), max_size=4), U32.filter(bool), U32.filter(bool),
       st.sampled_from([":1.7", ":1.12345", ""]), st.none() | st.sets(st.sampled_from(list(JOB_PROPERTIES))))
def test_a_listjobs_reply_is_what_dbus_fast_writes(rows, call_serial: int, serial: int, sender: str, names):
    """ListJobs' page (rows of either view, some with a folded ArrayTasks, every property or those
    of a Properties filter), as a method return."""
    call = Message(path=MANAGER_PATH, interface=MANAGER_IFACE, member="ListJobs", signature="a{sv}", body=[{}],
                   serial=call_serial, sender=sender or None)
    row = wire.row_writer(None if names is None else frozenset(names))
    dicts, raw = [], []
    for job, private, folded in rows:
        d, r = job_variants(job, private=private), row(job, private)
        if names is not None:
            d = {k: v for k, v in d.items() if k in names}
        if folded is not None:
            d, r = d | {"ArrayTasks": Variant("s", folded)}, wire.with_string(r, "ArrayTasks", folded)
        dicts.append(d)
        raw.append(r)
    expected = Message.new_method_return(call, "aa{sv}", [dicts])
    expected.serial = serial
    ours_ = wire.PremarshalledReply(call, "aa{sv}", wire.rows_body(raw))
    assert ours(ours_, serial) == bytes(expected._marshall(False))
    assert ours_.body == [dicts] or not dicts and ours_.body == [[]]
