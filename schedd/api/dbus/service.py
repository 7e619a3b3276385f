"""The D-Bus front end: the Manager object and a path per job, exactly as DESIGN.md fixes them.

It holds no job state: every method is one engine call, every signal comes
from an engine event. The caller's uid comes from the bus
(GetConnectionUnixUser on the message's sender, cached per unique name,
which the bus never reuses), never from anything the caller says.
Job paths are not exported objects: the tap hands the job subtree to jobs.JobTree,
which answers from the engine's jobs as an exported object did.

With [jobs] private_data (the default) a job's Command and paths are its owner's,
root's and polkit manage-jobs holders': everyone else reads them as empty, in method
answers, in property reads (Properties.Get/GetAll, GetManagedObjects: who reads is
found out before the answer is built) and in signals, which every subscriber receives.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import pwd
import time
import weakref
from collections import OrderedDict
from typing import Any, Callable

from dbus_fast import Message, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.constants import PropertyAccess
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface, dbus_property, method
from dbus_fast.service import signal as dbus_signal

from schedd import BUS_NAME, JOB_IFACE, JOB_PATH_PREFIX, MANAGER_IFACE, MANAGER_PATH, __version__, job_path
from schedd import bus as dbus
from schedd.api.dbus.changes import job_properties, manager_properties
from schedd.api.dbus.jobs import JobPaths, JobTree, interfaces_removed, job_id, job_variants
from schedd.api.dbus.wire import (PremarshalledReply, interfaces_added, job_state_changed, row_writer, rows_body,
                                  with_string)
from schedd.cluster.membership import check_text
from schedd.core import stats
from schedd.api.jobview import JOB_GETTERS
from schedd.core.engine import MANAGE_ACTION, Caller, Engine
from schedd.errors import ERROR_PREFIX, AccessDenied, InvalidArgument, NotFound, SchedError
from schedd.core.model import Job, JobState, now_usec
from schedd.core.placement import ledger_load
from schedd.protocol import (ARRAY_TASKS_KEY, JOB_PROPERTIES, LIST_FILTER_KEYS, LIST_LIMIT,
                             LOAD_KEYS, MANAGER_PROPERTIES, NODE_KEYS, ORIGIN_KEY, ORIGIN_SIGNATURE, PRIVATE_JOB_KEYS,
                             STATS_FILTER_KEYS, node_row, redact_job)

log = logging.getLogger(__name__)
NODES_ACTION = "org.schedd.Schedd1.manage-nodes"  # polkit action: drain, resume and remove nodes

_sender: contextvars.ContextVar[tuple[str, bool] | None] = contextvars.ContextVar("sender", default=None)
# Who reads job properties through org.freedesktop.DBus.Properties / ObjectManager (whose handlers in
# dbus-fast are synchronous): (uid, may see others' private keys), set by the tap before dispatch.
_viewer: contextvars.ContextVar[tuple[int, bool] | None] = contextvars.ContextVar("viewer", default=None)
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
OPERATOR_TTL_S = 5.0  # how long polkit's answer about reading others' jobs is reused for a uid
ALLOW_INTERACTIVE_AUTHORIZATION = 0x4  # message header flags
NO_REPLY_EXPECTED = 0x1


def _dbus_errors(fn):
    """SchedError -> its D-Bus error; anything else is a bug: logged, answered, never fatal."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return await fn(self, *args)
        except SchedError as e:
            raise DBusError(e.dbus_name, e.message) from None
        except DBusError:
            raise
        except Exception as e:  # noqa: BLE001 - the daemon must survive its own bugs
            log.exception("%s failed", fn.__name__)
            raise DBusError(ERROR_PREFIX + "Failed", f"internal error in {fn.__name__}: {type(e).__name__}") from None

    return wrapper


def raw_reply(fn):
    """Marks a method that may return its reply's body as bytes (wire.py), sent as they are, or
    answer before it returns (reply_now)."""
    fn.raw_reply = True
    return fn


_REPLY_NOW: contextvars.ContextVar[Callable[[Any], None] | None] = contextvars.ContextVar("reply_now", default=None)


def reply_now(result: Any) -> None:
    """Send the running method's reply now, with this result; what it returns later is not sent
    (a method of raw_reply; elsewhere, as in unit tests calling the method directly, nothing)."""
    answer = _REPLY_NOW.get()
    if answer is not None:
        _REPLY_NOW.set(None)  # tasks started from here on do not keep the call (and its body) alive
        answer(result)


class ServiceBus(MessageBus):
    """InterfacesAdded/Removed from the ObjectManager's path (the manager), where GLib clients look;
    none for the manager itself. Jobs are not exported (jobs.py): DBusService sends theirs."""

    def _make_method_handler(self, interface: ServiceInterface, method: Any) -> Callable:
        """dbus-fast's handler holds its interface, and the interface keeps its handlers after
        unexport: a reference cycle per object, left to the cyclic collector (whose full passes over
        a big heap stall the loop; the daemon freezes its heap instead, see engine._Slicer). A
        JobObject, should one be exported, is held weakly, so reference counting frees it."""
        if isinstance(interface, JobObject) and inspect.iscoroutinefunction(method.fn):
            interface = weakref.proxy(interface)
        if getattr(method.fn, "raw_reply", False):
            return self._raw_reply_handler(interface, method)
        return super()._make_method_handler(interface, method)

    def _raw_reply_handler(self, interface: ServiceInterface, method: Any) -> Callable:
        """dbus-fast's coroutine handler, but a body of bytes is the reply's as it is; any other
        result is marshalled as dbus-fast would, errors answered by its SendReply."""

        def handler(msg: Message, send_reply: Any) -> None:
            sent = [bool(msg.flags.value & NO_REPLY_EXPECTED)]

            def reply(result: Any) -> Message:
                return (PremarshalledReply(msg, method.out_signature, result) if isinstance(result, bytes)
                        else Message.new_method_return(msg, method.out_signature, [result]))

            def answer(result: Any) -> None:
                if not sent[0]:
                    sent[0] = True
                    with send_reply:
                        send_reply(reply(result))

            def done(fut: asyncio.Future) -> None:
                if sent[0]:
                    self._answered_late(fut, msg)
                    return
                sent[0] = True
                with send_reply:
                    send_reply(reply(fut.result()))

            token = _REPLY_NOW.set(answer)  # the task copies the context: reply_now inside it answers msg
            try:
                fut = asyncio.ensure_future(method.fn(interface, *msg.body))
            finally:
                _REPLY_NOW.reset(token)
            self._pending_futures.add(fut)
            fut.add_done_callback(self._future_exception_no_reply if msg.flags.value & NO_REPLY_EXPECTED else done)
            fut.add_done_callback(self._pending_futures.discard)

        return handler

    @staticmethod
    def _answered_late(fut: asyncio.Future, msg: Message) -> None:
        """A method that replied early (reply_now) and failed after: its caller has its answer; logged."""
        if not fut.cancelled() and (e := fut.exception()) is not None:
            log.error("%s failed after its reply was sent: %s", msg.member, e)

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if self._disconnected or not isinstance(interface, JobObject):
            return
        self.send(interfaces_added(interface.job, interface.service.public_private_data))

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if self._disconnected or not path.startswith(JOB_PATH_PREFIX):
            return
        self.send(interfaces_removed(path, removed_interfaces))


class JobObject(ServiceInterface):
    """org.schedd.Schedd1.Job as dbus-fast declares it: Cancel() and the read-only properties of
    protocol.JOB_PROPERTIES (set on the class below, one per row of schedd.api.jobview). Not exported
    per job: jobs.JobTree answers every job's path, with this class's introspection and rules."""

    def __init__(self, service: "DBusService", job: Job) -> None:
        super().__init__(JOB_IFACE)
        self.service = service
        self.job = job

    @method()
    @_dbus_errors
    async def Cancel(self) -> "":  # noqa: F722
        await self.service.engine.cancel(self.job.id, await self.service.caller())


def _read_only(name: str, sig: str, read: Callable[[Any], Any]):
    """A read-only D-Bus property of the given name and signature: read(interface) is its value."""

    def prop(self) -> sig:
        return read(self)

    prop.__name__ = name
    prop.__annotations__ = {"return": sig}
    return dbus_property(access=PropertyAccess.READ, name=name)(prop)


def _job_reader(name: str) -> Callable[[JobObject], Any]:
    getter = JOB_GETTERS[name]
    if name not in PRIVATE_JOB_KEYS:
        return lambda obj: getter(obj.job)
    hidden = PRIVATE_JOB_KEYS[name]
    return lambda obj: getter(obj.job) if obj.service.viewer_sees(obj.job, _viewer.get()) else hidden


for _name, _sig in JOB_PROPERTIES.items():
    setattr(JobObject, _name, _read_only(_name, _sig, _job_reader(_name)))


def _parse_filter(flt: dict[str, Variant], keys: dict[str, str] = LIST_FILTER_KEYS) -> dict[str, Any]:
    out = {}
    for key, v in flt.items():
        if key not in keys:
            raise InvalidArgument(f"unknown filter key {key!r}; valid keys: {', '.join(keys)}")
        if v.signature != keys[key]:
            raise InvalidArgument(f"filter key {key!r} must have D-Bus type '{keys[key]}', got '{v.signature}'")
        out[key] = v.value
    return out


def _selected(names: list[str] | None) -> frozenset[str] | None:
    """ListJobs' Properties: the job properties each row carries (Id always); None: every one."""
    if names is None:
        return None
    if len(names) > PROPERTIES_MAX:
        raise InvalidArgument(f"Properties: {len(names):,} names; at most {PROPERTIES_MAX} (a job has "
                              f"{len(JOB_PROPERTIES)} properties)")
    unknown = [n for n in names if n not in JOB_PROPERTIES]
    if unknown:
        shown = ", ".join(repr(n[:64]) for n in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise InvalidArgument(f"Properties: no job property {shown}; valid: {', '.join(JOB_PROPERTIES)} "
                              f"({ARRAY_TASKS_KEY} comes with FoldArrays, {ORIGIN_KEY} with AllNodes)")
    return frozenset(names) | {"Id"}


PROPERTIES_MAX = 256  # names in one Properties filter (repeats included)


# Bytes one reply may carry: the system bus drops a connection that sends a message over 32 MiB
# (dbus-daemon's max_message_size), which would end the daemon; a job's Command alone may be 1 MiB.
REPLY_BUDGET = 16 << 20
ROW_OVERHEAD = 1024  # a job row's fixed keys, names and signatures, marshalled


def row_bytes(job: Job) -> int:
    """About what a job's properties take in a reply: its strings plus the fixed part."""
    s = job.spec
    return (ROW_OVERHEAD + sum(len(a) for a in s.command) + len(s.working_directory) + len(s.stdout_path)
            + len(s.stderr_path) + len(s.name) + 8 * (len(s.after) + len(job.assigned_cpus)))


# The properties that can make a row long, and what each adds to ROW_OVERHEAD: row_bytes by key
# (row_bytes itself stays one expression: it runs for every row of every default page).
_LONG_KEYS: dict[str, Callable[[Job], int]] = {
    "Command": lambda j: sum(len(a) for a in j.spec.command),
    "WorkingDirectory": lambda j: len(j.spec.working_directory),
    "StdoutPath": lambda j: len(j.spec.stdout_path),
    "StderrPath": lambda j: len(j.spec.stderr_path),
    "Name": lambda j: len(j.spec.name),
    "After": lambda j: 8 * len(j.spec.after),
    "AssignedCPUs": lambda j: 8 * len(j.assigned_cpus),
}


def selected_row_bytes(names: frozenset[str] | None) -> Callable[[Job], int]:
    """row_bytes for rows of only these properties (ListJobs' Properties): a page of short columns
    is not cut for the long ones it leaves out."""
    if names is None or names >= _LONG_KEYS.keys():
        return row_bytes
    long = [size for key, size in _LONG_KEYS.items() if key in names]
    return lambda j: ROW_OVERHEAD + sum(size(j) for size in long)


def within_budget(jobs: list[Job], budget: int = REPLY_BUDGET,
                  extra: Callable[[Job], int] | None = None, size: Callable[[Job], int] = row_bytes) -> list[Job]:
    """The longest head of jobs whose rows fit the reply budget (at least one job); extra(job): what
    else its row carries (a folded ArrayTasks text), counted too; size(job): its row's bytes."""
    total = 0
    for n, job in enumerate(jobs):
        total += size(job) + (extra(job) if extra is not None else 0)
        if total > budget and n:
            return jobs[:n]
    return jobs


class ManagerObject(ServiceInterface):
    """/org/schedd/Schedd1: the manager. Its properties, protocol.MANAGER_PROPERTIES, are set on the
    class below, read through MANAGER_GETTERS."""

    def __init__(self, service: "DBusService") -> None:
        super().__init__(MANAGER_IFACE)
        self.service = service
        self.engine = service.engine

    async def _caller(self) -> Caller:
        return await self.service.caller()

    # Submit and SubmitMany answer once the jobs are durable, ahead of their signals (reply_now).

    @method()
    @_dbus_errors
    @raw_reply
    async def Submit(self, spec: "a{sv}") -> "(to)":  # noqa: F821
        job = await self.engine.submit(spec, await self._caller(),
                                       answered=lambda jobs: reply_now([jobs[0].id, job_path(jobs[0].id)]))
        return [job.id, job_path(job.id)]

    @method()
    @_dbus_errors
    @raw_reply
    async def SubmitMany(self, specs: "aa{sv}") -> "at":  # noqa: F821
        if not specs:
            raise InvalidArgument("SubmitMany needs at least one spec")
        jobs = await self.engine.submit_many(specs, await self._caller(), answered=lambda jobs: reply_now([j.id for j in jobs]))
        return [j.id for j in jobs]

    @method()
    @_dbus_errors
    async def Cancel(self, id: "t") -> "":  # noqa: F821, F722
        await self.engine.cancel(id, await self._caller())

    @method()
    @_dbus_errors
    async def Hold(self, id: "t") -> "":  # noqa: F821, F722
        await self.engine.hold(id, await self._caller())

    @method()
    @_dbus_errors
    async def Release(self, id: "t") -> "":  # noqa: F821, F722
        await self.engine.release(id, await self._caller())

    # Arrays (an ArrayTasks submit, or the tasks of a SubmitMany array): id is the array's first job id.
    @method()
    @_dbus_errors
    async def CancelArray(self, id: "t") -> "":  # noqa: F821, F722
        await self.engine.cancel_array(id, await self._caller())

    @method()
    @_dbus_errors
    async def HoldArray(self, id: "t") -> "":  # noqa: F821, F722
        await self.engine.hold_array(id, await self._caller())

    @method()
    @_dbus_errors
    async def ReleaseArray(self, id: "t") -> "":  # noqa: F821, F722
        await self.engine.release_array(id, await self._caller())

    @method()
    @_dbus_errors
    async def Suspend(self, id: "t") -> "":  # noqa: F821, F722
        await self.engine.suspend(id, await self._caller())

    @method()
    @_dbus_errors
    async def Resume(self, id: "t") -> "":  # noqa: F821, F722
        await self.engine.resume(id, await self._caller())

    @method()
    @_dbus_errors
    async def Requeue(self, id: "t") -> "":  # noqa: F821, F722
        await self.engine.requeue(id, await self._caller())

    @method()
    @_dbus_errors
    async def GetJob(self, id: "t") -> "a{sv}":  # noqa: F821
        job = self.engine.get(id)
        viewer = await self.service.viewer(await self._caller(), [job])
        return job_variants(job, private=self.service.viewer_sees(job, viewer))

    @method()
    @_dbus_errors
    @raw_reply
    async def ListJobs(self, filter: "a{sv}") -> "aa{sv}":  # noqa: F821
        f = _parse_filter(filter)
        limit = f.get("Limit", LIST_LIMIT) or LIST_LIMIT
        if limit > LIST_LIMIT:
            raise InvalidArgument(f"Limit: at most {LIST_LIMIT} jobs per call; page with After (the last id you got)")
        # A page holds fewer than Limit rows when they are large (REPLY_BUDGET): page with After
        # until an empty answer.
        fold = bool(f.get("FoldArrays"))
        names = _selected(f.get("Properties"))
        size = selected_row_bytes(names)
        folded: dict[int, str] = {}

        def fold_text(job: Job) -> int:  # an array's folded tasks can be long: they count in the budget
            text = self.engine.folded(job.id)
            if text is None:
                return 0
            folded[job.id] = text
            return len(text)

        jobs = within_budget(self.engine.list(f.get("States"), f.get("User"), f.get("After", 0), limit, fold=fold),
                             extra=fold_text if fold else None, size=size)
        fed = self.engine.federation
        all_nodes = bool(f.get("AllNodes")) and fed is not None
        if all_nodes:
            jobs = [j for j in jobs if not j.origin_node]  # each job once, from its origin
        caller = await self._caller()
        viewer = await self.service.viewer(caller, jobs, any_remote=all_nodes)
        sees = self.service.viewer_sees
        if not all_nodes:  # marshalled here (wire.py): a third of the page's cost through dbus-fast
            write_row = row_writer(names)
            rows = [write_row(j, sees(j, viewer)) for j in jobs]
            if fold:  # an array's tasks that are no jobs yet: one row, at the first of them
                rows = [row if (text := folded.get(j.id)) is None else with_string(row, ARRAY_TASKS_KEY, text)
                        for j, row in zip(jobs, rows)]
            return rows_body(rows)
        # The whole cluster: each job once, from its origin (copies run here for others are theirs).
        me = self.engine.config.node_name
        keep = JOB_PROPERTIES.keys() if names is None else names
        out = [{k: v for k, v in job_variants(j, private=sees(j, viewer)).items() if k in keep}
               | {ORIGIN_KEY: Variant(ORIGIN_SIGNATURE, me)} for j in jobs]
        my_name = self.service.user_name(caller.uid)
        user_name = None
        if "User" in f:
            try:
                user_name = pwd.getpwuid(f["User"]).pw_name
            except KeyError:
                return out
        budget = REPLY_BUDGET - sum(size(j) for j in jobs)
        for node, rec in await fed.list_cluster(f.get("States"), user_name, f.get("After", 0), limit):
            if not self.service.viewer_sees_name(rec.get("UserName"), my_name, viewer):
                rec = redact_job(rec)
            budget -= ROW_OVERHEAD + sum(len(str(v)) for v in rec.values() if isinstance(v, (str, list)))
            if budget < 0:
                log.info("ListJobs(AllNodes): the reply is full; %s's further rows are left out", node)
                break
            try:
                row = {k: Variant(sig, rec[k]) for k, sig in JOB_PROPERTIES.items() if k in rec and k in keep}
            except (TypeError, ValueError, OverflowError):
                log.warning("node %s sent a job record that does not fit the contract; skipped", node)
                continue
            out.append(row | {ORIGIN_KEY: Variant(ORIGIN_SIGNATURE, node)})
        return out

    @method()
    @_dbus_errors
    async def ReadOutput(self, id: "t", stderr: "b", offset: "t") -> "ay":  # noqa: F821
        """Up to 1 MiB of a job's output from offset, read for its owner (or root) wherever the job runs."""
        job = self.engine.get(id)
        await self.engine.authorize(job, await self._caller())
        if job.remote:
            return await self.engine.federation.read_output(job, stderr, offset)
        from schedd.core.output import read_output

        return await read_output(job.spec.stderr_path if stderr else job.spec.stdout_path, job.uid, offset)

    @method()
    @_dbus_errors
    async def ListNodes(self) -> "aa{sv}":  # noqa: F821
        fed = self.engine.federation
        rows = fed.node_rows() if fed is not None else [self.service.local_node()]
        return [{k: Variant(NODE_KEYS[k], row[k]) for k in NODE_KEYS} for row in rows]

    # Nodes (drain, resume, remove): root, or polkit's NODES_ACTION.
    @method()
    @_dbus_errors
    async def DrainNode(self, name: "s", reason: "s") -> "":  # noqa: F821, F722
        by = await self.service.node_operator(await self._caller(), "drain")
        await self.service.node_verb(name, reason, by, resume=False)

    @method()
    @_dbus_errors
    async def ResumeNode(self, name: "s") -> "":  # noqa: F821, F722
        by = await self.service.node_operator(await self._caller(), "resume")
        await self.service.node_verb(name, "", by, resume=True)

    @method()
    @_dbus_errors
    async def RemoveNode(self, name: "s") -> "":  # noqa: F821, F722
        await self.service.node_operator(await self._caller(), "remove")
        fed = self.engine.federation
        if fed is None:
            raise NotFound(f"no node named {name!r}: this node has no peers")
        await fed.remove_node(name)

    @method()
    @_dbus_errors
    async def GetStats(self, filter: "a{sv}") -> "a{sv}":  # noqa: F821, F722
        """Accounting totals and per-user figures (schedd.core.stats); filter keys User u, Since t."""
        f = _parse_filter(filter, STATS_FILTER_KEYS)
        figures = await stats.gather(self.engine, f.get("User"), f.get("Since", 0))
        return stats.to_variants(figures)

    @dbus_signal()
    def JobStateChanged(self, id, job, state, reason) -> "toss":  # noqa: F821
        return [id, job, state, reason]


def _load(key: str) -> Callable[[Engine], int]:
    """A capacity or load figure, as this node's ListNodes row shows it."""
    return lambda e: ledger_load(e.ledger, *e.counts())[key]


# Manager property -> its value (the signatures are protocol.MANAGER_PROPERTIES).
MANAGER_GETTERS: dict[str, Callable[[Engine], Any]] = {
    "Version": lambda e: __version__,
    "NodeName": lambda e: e.config.node_name,
    "Executor": lambda e: e.executor.name,
    **{k: _load(k) for k in LOAD_KEYS},
}
assert MANAGER_GETTERS.keys() == MANAGER_PROPERTIES.keys()
# The Manager properties that change while the daemon runs (the others are fixed when it starts),
# with their signatures: what manager_changed signals.
MANAGER_SIGNATURES = {k: MANAGER_PROPERTIES[k]
                      for k in ("AvailableCPUs", "AvailableMemory", "AvailableGPUs", "PendingJobs", "RunningJobs")}

for _name, _sig in MANAGER_PROPERTIES.items():
    setattr(ManagerObject, _name, _read_only(_name, _sig, lambda obj, get=MANAGER_GETTERS[_name]: get(obj.engine)))


class DBusService:
    """Exports the engine on a bus and turns engine events into signals."""

    def __init__(self, engine: Engine, bus: MessageBus) -> None:
        self.engine = engine
        self.bus = bus
        self.manager = ManagerObject(self)
        # Manager method -> the argument signature it takes (from its annotations), to answer a wrong one precisely.
        self._in_signatures = {m.name: "".join(a.signature for a in m.in_args) for m in self.manager.introspect().methods}
        self.objects = JobPaths(engine)  # the jobs whose paths answer (jobs.py), by id
        self._uids: OrderedDict[str, int] = OrderedDict()
        # uid -> (polkit allows manage-jobs, until): per uid, so that a user opening many
        # connections costs polkit one question per OPERATOR_TTL_S, not one per connection.
        self._operators: OrderedDict[int, tuple[bool, float]] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self._unsynced = 0  # signals sent since the last pacing round trip (drain)
        self._routed: asyncio.Future | None = None  # that round trip
        self._replies: set[asyncio.Task] = set()  # GetManagedObjects answers being built
        bus.add_message_handler(self._tap)
        if not engine.user_mode:
            engine.authorize_other = self.polkit_allows
        bus.export(MANAGER_PATH, self.manager)
        manager_node = intr.Node.default(MANAGER_PATH)
        manager_node.interfaces.append(self.manager.introspect())
        self.tree = JobTree(self, JobObject(self, None).introspect(), manager_node, REPLY_BUDGET)
        # The jobs recovered at start are on the bus at once, without a signal each: this connection
        # does not own the bus name yet (take_name comes later), so no client subscribed to the name
        # would hear them, and 100,000 jobs' InterfacesAdded and JobStateChanged took ~10 s and
        # ~135 MB of buffers to send. Clients re-read when the name's owner changes (NameOwnerChanged).
        self.objects.load(engine.jobs)
        engine.listeners.append(self)

    async def take_name(self, replace: bool = False) -> None:
        flags = NameFlag.DO_NOT_QUEUE | NameFlag.ALLOW_REPLACEMENT
        if replace:
            flags |= NameFlag.REPLACE_EXISTING
        reply = await self.bus.request_name(BUS_NAME, flags)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise RuntimeError(f"{BUS_NAME} is already owned on this bus ({reply.name}); is another schedd running?")

    # -- the caller ---------------------------------------------------------------

    def _tap(self, msg: Message):
        """Runs before dispatch: remember who calls (the method's task copies this context).

        Calls on the job subtree go to jobs.JobTree, which reads the job table (no object per
        job) and works out who reads private keys, asking the bus or polkit first when it must.
        GetManagedObjects is answered here too (in slices, within the reply budget).
        """
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        if msg.member == "GetManagedObjects" and msg.interface == OBJECT_MANAGER_IFACE:
            answered = self._managed_objects(msg)
            if answered is not None:
                return answered
        _sender.set((msg.sender, bool(msg.flags.value & ALLOW_INTERACTIVE_AUTHORIZATION)))
        _viewer.set(None)
        if msg.path.startswith(MANAGER_PATH):  # the job subtree, and the manager's Introspect that names it
            answered = self.tree.answer(msg)
            if answered is not None:
                return answered
        want = self._in_signatures.get(msg.member) if msg.interface == MANAGER_IFACE else None
        if want is not None and msg.signature != want:
            return Message.new_error(
                msg, InvalidArgument.dbus_name,
                f"{msg.member} takes ({want}) but was called with ({msg.signature})",
            )
        return None

    # -- who may read what ---------------------------------------------------------

    @property
    def public_private_data(self) -> bool:
        """Whether a job's private keys are everyone's (private_data = false, or a per-user daemon)."""
        return not self.engine.config.private_data or self.engine.user_mode

    def viewer_sees(self, job: Job, viewer: tuple[int, bool] | None) -> bool:
        """The rule of [jobs] private_data: the owner, root and polkit's manage-jobs see a job's private keys."""
        if self.public_private_data:
            return True
        if viewer is None:
            return False
        uid, operator = viewer
        return uid == 0 or uid == job.uid or operator

    def viewer_sees_name(self, user_name: Any, my_name: str | None, viewer: tuple[int, bool] | None) -> bool:
        """The same rule for a peer's job, known by its user's name (uids differ between nodes)."""
        if self.public_private_data:
            return True
        if viewer is None:
            return False
        uid, operator = viewer
        return uid == 0 or operator or (my_name is not None and user_name == my_name)

    @staticmethod
    def user_name(uid: int) -> str | None:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return None

    def _needs_operator(self, uid: int, jobs: list[Job], any_remote: bool = False) -> bool:
        return (not self.public_private_data and uid != 0
                and (any_remote or any(j.uid != uid for j in jobs)))

    async def viewer(self, caller: Caller, jobs: list[Job], *, any_remote: bool = False) -> tuple[int, bool]:
        """(uid, may see others' private keys) for these jobs; polkit is asked only when it changes the answer."""
        if not self._needs_operator(caller.uid, jobs, any_remote):
            return caller.uid, False
        return caller.uid, await self._operator(caller)

    async def _operator(self, caller: Caller) -> bool:
        if caller.sender is None or self.engine.authorize_other is None:
            return False
        hit = self._operators.get(caller.uid)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        # Reading is never worth a password prompt: asked without interactive authorization.
        allowed = bool(await self.engine.authorize_other(Caller(caller.uid, caller.sender), MANAGE_ACTION))
        self._operators[caller.uid] = (allowed, time.monotonic() + OPERATOR_TTL_S)
        self._operators.move_to_end(caller.uid)
        if len(self._operators) > 8192:
            self._operators.popitem(last=False)
        return allowed

    def _jobs_read(self, msg: Message) -> list[Job] | None:
        """The jobs whose properties this call reads (Properties.Get/GetAll, GetManagedObjects), else None."""
        if msg.interface == PROPERTIES_IFACE and (msg.member, msg.signature) in (("Get", "ss"), ("GetAll", "s")):
            if msg.body[0] != JOB_IFACE:
                return None
            jid = job_id(msg.path)
            job = None if jid is None else self.objects.get(jid)
            return None if job is None else [job]
        if msg.interface == OBJECT_MANAGER_IFACE and msg.member == "GetManagedObjects":
            return self.objects.all_jobs()
        return None

    def _known_viewer(self, sender: str, jobs: list[Job]) -> tuple[int, bool] | None:
        """The viewer from the caches alone, or None when the bus or polkit must be asked first."""
        if self.public_private_data:
            return (-1, False)  # every key is everyone's: who reads does not matter
        uid = self._uids.get(sender)
        if uid is None:
            return None
        if not self._needs_operator(uid, jobs):
            return uid, False
        hit = self._operators.get(uid)
        if hit is None or hit[1] <= time.monotonic():
            return None
        return uid, hit[0]

    async def _viewer_or_answer(self, msg: Message, jobs: list[Job]) -> tuple[int, bool] | None:
        """Who reads these jobs through a held message; None after answering it with an error."""
        try:
            return await self.viewer(await self._caller_of(msg.sender, False), jobs)
        except Exception as e:  # noqa: BLE001 - answer the call, whatever went wrong
            log.warning("cannot tell who reads job properties (%s %s): %s", msg.sender, msg.member, e)
            self.bus.send(Message.new_error(msg, ERROR_PREFIX + "Failed", "cannot tell who is calling"))
            return None

    MANAGED_MAX = 10_000  # job objects GetManagedObjects lists; its one reply is marshalled at once (~10 ms per 1,000)

    def _managed_objects(self, msg: Message) -> Message | bool | None:
        """GetManagedObjects without a stall: over MANAGED_MAX job objects it is refused (the one reply
        would hold the loop for seconds, and soon pass the bus's 32 MiB a message); at a path above the
        job subtree (the manager's, where the ObjectManager is, or its parents) the answer is built in
        slices. Elsewhere dbus-fast answers (nothing is exported below a job's path)."""
        path = msg.path or "/"
        covers_jobs = path == "/" or JOB_PATH_PREFIX.startswith(path.rstrip("/") + "/")
        if not covers_jobs or not self.objects.total():
            return None
        if self.objects.total() > self.MANAGED_MAX:
            return self._too_many(msg)
        task = asyncio.get_running_loop().create_task(self._answer_managed_objects(msg))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)
        return True

    def _too_many(self, msg: Message, size: int = 0) -> Message:
        what = f"{size >> 20} MiB of job objects are" if size else f"{self.objects.total()} job objects are"
        return Message.new_error(
            msg, "org.freedesktop.DBus.Error.LimitsExceeded",
            f"{what} exported; GetManagedObjects lists at most {self.MANAGED_MAX} (and {REPLY_BUDGET >> 20} MiB): "
            "use org.schedd.Schedd1.Manager.ListJobs (page with its After filter) and InterfacesAdded")

    def _manager_entry(self) -> dict[str, dict[str, Variant]]:
        """The manager's row of GetManagedObjects, as dbus-fast lists an exported object."""
        got: list[tuple[dict[str, Variant], Exception | None]] = []
        ServiceInterface._get_all_property_values(self.manager, lambda _i, values, _d, e: got.append((values, e)))
        ((values, error),) = got  # its getters are synchronous: answered at once
        if error is not None:
            raise error
        return {MANAGER_IFACE: values}

    async def _answer_managed_objects(self, msg: Message) -> None:
        mem = list(self.objects.values())
        disk = list(self.objects.disk_jobs())  # with mem, at most MANAGED_MAX: ~50 ms of reads
        jobs = mem + disk
        viewer = await self._viewer_or_answer(msg, jobs)
        if viewer is None:
            return
        # Too big as root would see it: what this caller sees (others' private keys empty) may fit.
        if sum(row_bytes(j) for j in jobs) > REPLY_BUDGET:
            size = sum(row_bytes(j) if self.viewer_sees(j, viewer) else ROW_OVERHEAD + len(j.spec.name) for j in jobs)
            if size > REPLY_BUDGET:
                self.bus.send(self._too_many(msg, size))
                return
        result: dict[str, dict[str, dict[str, Variant]]] = {}
        if MANAGER_PATH.startswith((msg.path or "/").rstrip("/") + "/"):  # above the manager: listed first
            try:
                result[MANAGER_PATH] = self._manager_entry()
            except Exception as e:  # noqa: BLE001 - answered as dbus-fast answered a getter's failure
                log.exception("GetManagedObjects: reading the manager's properties failed")
                self.bus.send(Message.new_error(msg, "org.freedesktop.DBus.Error.ServiceError",
                                                f"The service interface raised an error: {type(e).__name__}"))
                return
        deadline = time.monotonic() + 0.01
        for i, job in enumerate(jobs):
            # Still on the bus: one in memory not released meanwhile; one on disk is (a change loads it first).
            if i >= len(mem) or dict.get(self.objects, job.id) is job:
                result[job_path(job.id)] = {JOB_IFACE: job_variants(job, private=self.viewer_sees(job, viewer))}
            if time.monotonic() >= deadline:
                await asyncio.sleep(0)
                deadline = time.monotonic() + 0.01
        self.bus.send(Message.new_method_return(msg, "a{oa{sa{sv}}}", [result]))

    # -- the caller ---------------------------------------------------------------

    async def caller(self) -> Caller:
        who = _sender.get()
        if who is None:
            raise SchedError("cannot tell who is calling")
        return await self._caller_of(*who)

    async def _caller_of(self, sender: str, interactive: bool) -> Caller:
        uid = self._uids.get(sender)
        if uid is None:
            (uid,) = await dbus.call(self.bus, dbus.DBUS_NAME, dbus.DBUS_PATH, dbus.DBUS_NAME,
                                     "GetConnectionUnixUser", "s", [sender])
            self._uids[sender] = uid
            if len(self._uids) > 8192:
                self._uids.popitem(last=False)
        return Caller(uid, sender, interactive)

    async def polkit_allows(self, caller: Caller, action: str) -> bool:
        """Ask polkit (by bus name, never by PID) whether the caller may do `action`; no polkit means no."""
        if caller.sender is None:
            return False
        subject = ["system-bus-name", {"name": Variant("s", caller.sender)}]
        try:
            ((authorized, challenge, _details),) = await dbus.call(
                self.bus, "org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
                "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization", "(sa{sv})sa{ss}us",
                [subject, action, {}, 1 if caller.interactive else 0, ""])
        except DBusError as e:
            log.warning("polkit check of %s for uid %d failed: %s", action, caller.uid, e.text)
            return False
        # A challenge without an agent to answer it is a refusal: the contract's error is AccessDenied.
        return bool(authorized)

    def local_node(self) -> dict[str, Any]:
        """This node's ListNodes row when it has no peers (with peers, Federation.node_rows builds every row)."""
        e = self.engine
        d = e.drain
        drain = (e.drain_state(), d.reason, d.by) if d is not None else ("", "", "")
        return node_row(e.config.node_name, True, "", True, ledger_load(e.ledger, *e.counts()), now_usec(), drain)

    async def node_operator(self, caller: Caller, verb: str) -> str:
        """Who drains, resumes or removes nodes ("NAME on NODE"): root, the user of a user manager's
        daemon, or a user polkit allows NODES_ACTION; anyone else is refused."""
        e = self.engine
        if not (caller.uid == 0 or e.user_mode or (caller.sender is not None and e.authorize_other is not None
                                                  and await e.authorize_other(caller, NODES_ACTION))):
            raise AccessDenied(f"only root (or a user polkit allows {NODES_ACTION}) may {verb} nodes")
        try:
            who = pwd.getpwuid(caller.uid).pw_name
        except KeyError:
            who = f"uid {caller.uid}"
        return f"{who} on {e.config.node_name}"

    async def node_verb(self, name: str, reason: str, by: str, *, resume: bool) -> None:
        check_text("reason", reason, 1024)  # InvalidArgument: shown by schedctl and logged
        fed, e = self.engine.federation, self.engine
        if fed is not None:
            await fed.drain_node(name, reason, by, resume=resume)
        elif name in ("", e.config.node_name):
            await (e.clear_drain(by) if resume else e.set_drain(reason, by))
        else:
            raise NotFound(f"no node named {name!r}: this node ({e.config.node_name}) has no peers")

    # -- engine events -----------------------------------------------------------------

    # Signals are built directly: dbus-fast's helpers walk every property per emission, and the two
    # every job sends are marshalled by hand (wire.py).

    def _job_state_changed(self, job: Job) -> None:
        self.bus.send(job_state_changed(job))

    def job_added(self, job: Job) -> None:
        if self.objects.in_memory(job.id):
            return
        self.objects[job.id] = job  # its path answers from now on (jobs.JobTree)
        if not getattr(self.bus, "_disconnected", False):
            self.bus.send(interfaces_added(job, self.public_private_data))
        self._unsynced += 1
        if not job.state.terminal:
            self._job_state_changed(job)
            self._unsynced += 1

    SYNC_EVERY = 256  # signals of one big batch between waits for the bus daemon to have taken them

    async def drain(self) -> None:
        """Between slices of a big batch: once many signals were sent, make sure the bus daemon has
        routed those sent before the previous pacing point. It handles our messages in order, so the
        answer to a round trip sent then means they are through -- they do not pile up there ahead of
        other callers' calls and replies (150,000 jobs' signals unpaced kept a Ping waiting for 40 s),
        while the signals of the slice just made are routed as the next one is made (two cores: the
        bus daemon's work beside ours, not after it)."""
        if self._unsynced < self.SYNC_EVERY:
            return
        self._unsynced = 0
        previous, self._routed = self._routed, asyncio.ensure_future(self._round_trip())
        if previous is not None:
            await previous

    async def _round_trip(self) -> None:
        try:
            await dbus.call(self.bus, dbus.DBUS_NAME, dbus.DBUS_PATH, dbus.DBUS_NAME, "GetId")
        except Exception as e:  # noqa: BLE001 - pacing only: a failed round trip must not fail the batch
            log.debug("bus round trip for pacing failed: %s", e)

    def job_changed(self, job: Job, fields: frozenset[str], old_state: JobState) -> None:
        props = job_properties(fields)
        if self.objects.in_memory(job.id) and props:
            # Signals reach every subscriber: a private key that changed is only named as
            # invalidated, and each reader Gets it with its own rights.
            hidden = [] if self.public_private_data else sorted(p for p in props if p in PRIVATE_JOB_KEYS)
            shown = [p for p in props if p not in hidden]
            self.bus.send(Message.new_signal(
                path=job_path(job.id), interface="org.freedesktop.DBus.Properties", member="PropertiesChanged",
                signature="sa{sv}as", body=[JOB_IFACE, job_variants(job, shown), hidden],
            ))
        if old_state != job.state:
            self._job_state_changed(job)

    def array_changed(self, job: Job, tasks: int) -> None:
        """An array's tasks that are no jobs yet changed state together: one JobStateChanged, for the
        first of them (job), stands for all `tasks` of them (engine/arrays.py)."""
        self._job_state_changed(job)

    def job_unloaded(self, job: Job) -> None:
        self.objects.pop(job.id, None)  # its path answers from the store now (JobPaths.on_disk)

    def job_loaded(self, job: Job) -> None:
        self.objects[job.id] = job

    def job_released(self, job: Job) -> None:
        if self.objects.pop(job.id, None) is not None and not getattr(self.bus, "_disconnected", False):
            self.bus.send(interfaces_removed(job_path(job.id), [JOB_IFACE]))

    def manager_changed(self, facts: frozenset[str]) -> None:
        props = manager_properties(facts)
        e = self.engine
        pending, running = e.counts() if props & {"PendingJobs", "RunningJobs"} else (0, 0)
        values = {}
        for p in props:
            if p == "PendingJobs":
                values[p] = pending
            elif p == "RunningJobs":
                values[p] = running
            else:
                values[p] = MANAGER_GETTERS[p](e)
        self.bus.send(Message.new_signal(
            path=MANAGER_PATH, interface="org.freedesktop.DBus.Properties", member="PropertiesChanged",
            signature="sa{sv}as", body=[MANAGER_IFACE, {k: Variant(MANAGER_SIGNATURES[k], v) for k, v in values.items()}, []],
        ))
