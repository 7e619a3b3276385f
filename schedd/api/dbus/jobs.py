"""The job subtree, /org/schedd/Schedd1/job/<id>, answered from the job table: no object per job.

An exported dbus-fast object per job cost about 3 KiB and a walk of every exported path per
Introspect; 100,000 held jobs made the daemon's memory and its restart time. dbus-fast has no
fallback objects, so DBusService's tap hands this module each method call on the subtree (and
Introspect of the manager, whose child list names it). It answers what an exported
org.schedd.Schedd1.Job object answered -- Introspect, Properties Get/GetAll/Set, Cancel -- with
the same replies and errors. Everything else falls through to dbus-fast, whose answers for a path
with nothing exported are what a client always got there: Peer methods, wrong members and
signatures, and every call on an id that is not live (Properties: UnknownObject; Cancel and other
methods: UnknownMethod).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from dbus_fast import Message, Variant
from dbus_fast import introspection as intr
from dbus_fast.constants import ErrorType
from dbus_fast.errors import DBusError
from dbus_fast.signature import get_signature_tree

from schedd import JOB_IFACE, JOB_PATH_PREFIX, MANAGER_PATH, job_path
from schedd.api.jobview import JOB_GETTERS, JOB_KEYS
from schedd.core.model import Job
from schedd.errors import ERROR_PREFIX, SchedError
from schedd.protocol import JOB_PROPERTIES, PRIVATE_JOB_KEYS

log = logging.getLogger(__name__)

JOB_ROOT = JOB_PATH_PREFIX.rstrip("/")  # /org/schedd/Schedd1/job: no object, the parent of every job's
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
INTROSPECTABLE_IFACE = "org.freedesktop.DBus.Introspectable"
# The interfaces dbus-fast answers for on every object: no properties (Get: UnknownProperty, GetAll: {}).
STANDARD_IFACES = ("org.freedesktop.DBus.Properties", "org.freedesktop.DBus.Introspectable",
                   "org.freedesktop.DBus.Peer", "org.freedesktop.DBus.ObjectManager")
PROPERTY_METHODS = {"Get": "ss", "Set": "ssv", "GetAll": "s"}
NO_REPLY_EXPECTED = 0x1  # message header flag
XML_HEADER = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
              '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n')


def _compile_all_variants() -> Callable[[Job], dict[str, Variant]]:
    """One function building every property's Variant, generated from jobview.JOB_KEYS (still the one
    declaration): a dict display with the field reads inline takes ~2/3 of the time of a loop over
    the getters, and ListJobs builds 10,000 rows at a time, SubmitMany an InterfacesAdded per job.
    The Variants are not verified against their signatures (half the cost of a row): every getter
    returns its declared type (tests/unit/test_dbus_jobs.py checks each against its signature), and
    the marshaller still refuses a value it cannot write."""
    ns: dict[str, Any] = {"V": Variant}
    items = []
    for i, k in enumerate(JOB_KEYS):
        ns[f"s{i}"] = get_signature_tree(JOB_PROPERTIES[k.name])
        if k.direct:
            value = "j." + k.fields[0]
        else:
            ns[f"g{i}"] = k.get
            value = f"g{i}(j)"
        items.append(f"{k.name!r}: V(s{i}, {value}, False)")
    exec("def all_variants(j):\n    return {" + ", ".join(items) + "}\n", ns)  # noqa: S102 - our own table
    return ns["all_variants"]


_all_variants = _compile_all_variants()
_HIDDEN = {n: Variant(JOB_PROPERTIES[n], v) for n, v in PRIVATE_JOB_KEYS.items()}


def job_variants(job: Job, names=None, *, private: bool = True) -> dict[str, Variant]:
    """The job's properties (schedd.api.jobview) as D-Bus values; private=False: the private keys
    read as empty (protocol.PRIVATE_JOB_KEYS)."""
    if names is None:
        row = _all_variants(job)
        if not private:
            row.update(_HIDDEN)
        return row
    return {n: Variant(JOB_PROPERTIES[n], JOB_GETTERS[n](job) if private or n not in PRIVATE_JOB_KEYS
                       else PRIVATE_JOB_KEYS[n]) for n in names}


def interfaces_removed(path: str, interfaces: list[str]) -> Message:
    return Message.new_signal(
        path=MANAGER_PATH, interface="org.freedesktop.DBus.ObjectManager", member="InterfacesRemoved",
        signature="oas", body=[path, interfaces])


def job_id(path: str) -> int | None:
    """The id a job path names (exactly as job_path writes it: no leading zeros), else None."""
    if not path.startswith(JOB_PATH_PREFIX):
        return None
    tail = path[len(JOB_PATH_PREFIX):]
    if not tail.isdigit() or (tail[0] == "0" and tail != "0"):
        return None
    return int(tail)


def children_xml(path: str, names) -> str:
    """Introspection XML of a node with no interfaces and these children, as dbus-fast's
    Node.tostring writes it, without an XML element per child (with one object per job, the
    Introspect of 100,000 children took 1.4 s; this, ~40 ms)."""
    names = [f'<node name="{n}" />' for n in names]
    if not names:
        return f'{XML_HEADER}<node name="{path}" />'
    return f'{XML_HEADER}<node name="{path}">\n  ' + "\n    ".join(names) + "\n    </node>"


class OnDisk(Protocol):
    """What JobPaths reads of the live jobs the engine keeps on disk only (engine/loading.py)."""

    def on_disk(self, job_id: int) -> Job | None: ...
    def on_disk_count(self) -> int: ...
    def on_disk_jobs(self, after: int, limit: int) -> list[Job]: ...
    def on_disk_ids(self) -> list[int]: ...


class _NothingOnDisk:
    def on_disk(self, job_id: int) -> Job | None:
        return None

    def on_disk_count(self) -> int:
        return 0

    def on_disk_jobs(self, after: int, limit: int) -> list[Job]:
        return []

    def on_disk_ids(self) -> list[int]:
        return []


class JobPaths(dict):
    """Job id -> Job for every job whose path answers on the bus (what was exported before): the
    jobs the engine announced (job_added) and has not released. A JobObject stored here stands for
    its job (the per-job objects of before; tools and tests may still hand one). A live job the
    engine keeps on disk only (engine/loading.py) is not held here: `disk` reads it when asked, so
    its path answers like the others, and it is counted and listed with them (total, all_ids,
    all_jobs: GetManagedObjects and the subtree's Introspect)."""

    def __init__(self, disk: OnDisk | None = None) -> None:
        super().__init__()
        self.disk: OnDisk = disk if disk is not None else _NothingOnDisk()

    def __setitem__(self, job_id: int, job: Any) -> None:
        super().__setitem__(job_id, getattr(job, "job", job))

    def __missing__(self, job_id: int) -> Job:
        job = self.disk.on_disk(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def __contains__(self, job_id: object) -> bool:
        return super().__contains__(job_id) or (isinstance(job_id, int) and self.disk.on_disk(job_id) is not None)

    def in_memory(self, job_id: int) -> bool:
        """Held here (announced, not released): what the engine's events concern -- `in` also asks
        the store, one read per call, for a job on disk."""
        return dict.__contains__(self, job_id)

    def get(self, job_id: int, default: Any = None) -> Any:
        try:
            return self[job_id]
        except KeyError:
            return default

    def load(self, jobs: dict[int, Job]) -> None:
        """Many jobs at once (the daemon's start), at the speed of dict.update."""
        self.update(jobs)

    def total(self) -> int:
        """Every job whose path answers: in memory and on disk."""
        return len(self) + self.disk.on_disk_count()

    def all_ids(self) -> list[int]:
        ids = list(self)
        return ids + self.disk.on_disk_ids() if self.disk.on_disk_count() else ids

    def all_jobs(self) -> list[Job]:
        """Every job: those in memory, then those on disk."""
        return [*self.values(), *self.disk_jobs()]

    def disk_jobs(self, page: int = 1000) -> Iterator[Job]:
        """The jobs on disk, read a page at a time."""
        after = 0
        while self.disk.on_disk_count() and (jobs := self.disk.on_disk_jobs(after, page)):
            yield from jobs
            after = jobs[-1].id


class Service(Protocol):
    """What the tree uses of DBusService (service.py): the job table, who calls, who may read what."""

    objects: "JobPaths"
    engine: Any
    bus: Any
    _tasks: set[asyncio.Task]

    async def caller(self) -> Any: ...
    def viewer_sees(self, job: Job, viewer: tuple[int, bool] | None) -> bool: ...
    def _known_viewer(self, sender: str, jobs: list[Job]) -> tuple[int, bool] | None: ...
    async def _viewer_or_answer(self, msg: Message, jobs: list[Job]) -> tuple[int, bool] | None: ...


class JobTree:
    """Answers the method calls of the job subtree (and the manager's Introspect) for DBusService's tap."""

    def __init__(self, service: Service, job_iface: intr.Interface, manager_node: intr.Node,
                 reply_budget: int) -> None:
        self.service = service
        self.objects: JobPaths = service.objects
        self.reply_budget = reply_budget
        sample = job_path(0)
        node = intr.Node.default(sample)
        node.interfaces.append(job_iface)
        head, tail = node.tostring().split(f'<node name="{sample}">', 1)
        self._job_xml = (head, tail)
        # GetAll's order is dbus-fast's (the interface's properties by name), as before.
        self._all = [p.name for p in job_iface.properties]
        manager_node.nodes = [intr.Node("job")]
        self._manager_xml = manager_node.tostring()

    def answer(self, msg: Message) -> Message | bool | None:
        """The reply (a Message, or True once answered or being answered), or None for dbus-fast to answer."""
        if msg.interface == INTROSPECTABLE_IFACE and msg.member == "Introspect" and msg.signature == "":
            xml = self._introspect(msg)
            if xml is None:
                return None
            if isinstance(xml, Message):
                return self._reply(msg, xml)
            return self._reply(msg, Message.new_method_return(msg, "s", [xml]))
        jid = job_id(msg.path)
        if jid is None or jid not in self.objects:
            return None
        if msg.interface == PROPERTIES_IFACE:
            return self._properties(msg, jid)
        if msg.interface in (JOB_IFACE, None) and msg.member == "Cancel" and msg.signature == "":
            self._start(msg, self._cancel(msg, jid))
            return True
        return None

    # -- Introspect ------------------------------------------------------------------

    def _introspect(self, msg: Message) -> str | Message | None:
        path = msg.path
        jid = job_id(path)
        if jid is not None and jid in self.objects:  # also a task of an array that is no job yet (counted in no total)
            head, tail = self._job_xml
            return f'{head}<node name="{path}">{tail}'
        if not self.objects.total():
            return None  # nothing under the subtree: dbus-fast's answers are right
        if path == MANAGER_PATH:
            return self._manager_xml
        if path == JOB_ROOT:
            return self._job_root(msg)
        return None

    def _job_root(self, msg: Message) -> str | Message:
        """The job subtree's children: every job's id. Refused, like GetManagedObjects, when the list
        would pass the reply budget (about 650,000 jobs), before anything is built."""
        ids = self.objects.all_ids()
        if len(ids) * (len(str(max(ids, default=0))) + 18) > self.reply_budget:  # "\n    <node name=\"ID\" />"
            return Message.new_error(
                msg, "org.freedesktop.DBus.Error.LimitsExceeded",
                f"{len(ids)} jobs are under {JOB_ROOT}: their list passes the "
                f"{self.reply_budget >> 20} MiB a reply may carry; use org.schedd.Schedd1.Manager.ListJobs "
                "(page with its After filter)")
        return children_xml(JOB_ROOT, ids)  # 100,000 jobs: ~20 ms

    # -- Properties ------------------------------------------------------------------

    def _properties(self, msg: Message, jid: int) -> Message | bool | None:
        if PROPERTY_METHODS.get(msg.member) != msg.signature or msg.body[0] == "":
            return None  # dbus-fast's errors for these come before it looks at the path
        iface = msg.body[0]
        if iface != JOB_IFACE:
            if iface not in STANDARD_IFACES:
                return self._error(msg, ErrorType.UNKNOWN_INTERFACE,
                                   f'could not find an interface "{iface}" at path: "{msg.path}"')
            if msg.member == "GetAll":
                return self._reply(msg, Message.new_method_return(msg, "a{sv}", [{}]))
            return self._error(msg, ErrorType.UNKNOWN_PROPERTY,
                               f'interface "{iface}" does not have property "{msg.body[1]}"')
        if msg.member != "GetAll" and msg.body[1] not in JOB_PROPERTIES:
            return self._error(msg, ErrorType.UNKNOWN_PROPERTY,
                               f'interface "{iface}" does not have property "{msg.body[1]}"')
        if msg.member == "Set":
            return self._error(msg, ErrorType.PROPERTY_READ_ONLY, "the property is readonly")
        job = self.objects[jid]
        if msg.member == "Get" and msg.body[1] not in PRIVATE_JOB_KEYS:
            return self._reply(msg, self._values(msg, job, True))  # everyone's: no need to know who asks
        viewer = self.service._known_viewer(msg.sender, [job])
        if viewer is None:
            if msg.flags.value & NO_REPLY_EXPECTED:
                return True  # nobody waits for the values
            self._start(msg, self._read_as_viewer(msg, job))
            return True
        return self._reply(msg, self._values(msg, job, self.service.viewer_sees(job, viewer)))

    def _values(self, msg: Message, job: Job, private: bool) -> Message:
        if msg.member == "Get":
            name = msg.body[1]
            return Message.new_method_return(msg, "v", [job_variants(job, (name,), private=private)[name]])
        return Message.new_method_return(msg, "a{sv}", [job_variants(job, self._all, private=private)])

    async def _read_as_viewer(self, msg: Message, job: Job) -> Message | None:
        """Who reads needs a bus (or polkit) round trip first; the job may be released meanwhile."""
        viewer = await self.service._viewer_or_answer(msg, [job])
        if viewer is None:
            return None  # answered
        job = self.objects.get(job.id)
        if job is None:
            return Message.new_error(msg, ErrorType.UNKNOWN_OBJECT, f'no interfaces at path: "{msg.path}"')
        return self._values(msg, job, self.service.viewer_sees(job, viewer))

    # -- Cancel -------------------------------------------------------------------------

    async def _cancel(self, msg: Message, jid: int) -> Message:
        """org.schedd.Schedd1.Job.Cancel(), with the caller's rights; errors as the Manager's methods give them."""
        svc = self.service
        try:
            await svc.engine.cancel(jid, await svc.caller())
        except SchedError as e:
            return Message.new_error(msg, e.dbus_name, e.message)
        except DBusError as e:
            return e._as_message(msg)
        except Exception as e:  # noqa: BLE001 - the daemon must survive its own bugs
            log.exception("Cancel failed")
            return Message.new_error(msg, ERROR_PREFIX + "Failed", f"internal error in Cancel: {type(e).__name__}")
        return Message.new_method_return(msg)

    # -- replies ----------------------------------------------------------------------------

    @staticmethod
    def _reply(msg: Message, reply: Message) -> Message | bool:
        """What the tap returns: the reply, or True alone when the caller wants none (NO_REPLY_EXPECTED)."""
        return True if msg.flags.value & NO_REPLY_EXPECTED else reply

    def _error(self, msg: Message, name: str, text: str) -> Message | bool:
        return self._reply(msg, Message.new_error(msg, name, text))

    def _start(self, msg: Message, answer) -> None:
        """Answer later: the task (which copies the tap's context: the caller) sends the reply it builds."""

        async def run() -> None:
            reply = await answer
            if reply is not None and not msg.flags.value & NO_REPLY_EXPECTED:
                self.service.bus.send(reply)

        task = asyncio.get_running_loop().create_task(run())
        self.service._tasks.add(task)
        task.add_done_callback(self.service._tasks.discard)

