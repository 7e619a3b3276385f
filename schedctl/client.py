"""A thin async client of schedd's D-Bus API on dbus-fast.

Raw method calls through schedd.bus (no introspection round trip), answers turned
into plain Python values, and JobStateChanged through a single match rule (the
system bus allows a client 512: never one per job).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.errors import DBusError, DBusFastError

from schedd import BUS_NAME, MANAGER_IFACE, MANAGER_PATH
from schedd import bus as dbus
from schedd.protocol import LIST_LIMIT

PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"

JobChange = tuple[int, str, str, str]  # JobStateChanged: (id, object path, state, reason)

# Errors from the bus itself that mean "no schedd to answer", as opposed to schedd saying no.
_GONE = frozenset({
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.TimedOut",
    "org.freedesktop.systemd1.NoSuchUnit",  # bus activation through a unit that is not installed
})


class Unreachable(Exception):
    """The bus, or schedd on it, does not answer: the CLI words this with a hint, not as a daemon error."""


def _gone(e: DBusError) -> bool:
    return e.type in _GONE or e.type.startswith("org.freedesktop.DBus.Error.Spawn.")


def plain(value: Any) -> Any:
    """Variants, possibly nested in dicts and lists, -> plain Python values (ready for json.dumps)."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def plain_rows(rows: list[dict[str, Variant]]) -> list[dict[str, Any]]:
    """plain() of a ListJobs page, 2-3x faster: a job property holds no variant inside (protocol's
    signatures), so each is its value; a row key that does (from a newer daemon) goes through plain()."""
    return [{k: plain(v.value) if "v" in v.signature else v.value for k, v in row.items()} for row in rows]


class Client:
    """One connection to the system or session bus, and the Manager calls schedctl makes."""

    def __init__(self, user: bool, address: str | None = None) -> None:
        self.user = user
        self.address = address or dbus.bus_address(user)
        self.bus = None
        self._changes: asyncio.Queue[JobChange] | None = None

    @property
    def where(self) -> str:
        return "the session bus" if self.user else "the system bus"

    async def connect(self) -> "Client":
        try:
            self.bus = await dbus.connect(self.address)
        except (OSError, EOFError, DBusFastError) as e:
            raise Unreachable(f"{self.address}: {e or type(e).__name__}") from None
        return self

    def close(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None

    async def __aenter__(self) -> "Client":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def _call(self, path: str, iface: str, member: str, signature: str = "", body: list | None = None) -> list:
        try:
            return await dbus.call(self.bus, BUS_NAME, path, iface, member, signature, body)
        except DBusError as e:
            if _gone(e):
                raise Unreachable(e.text) from None
            raise
        except (OSError, EOFError) as e:  # the bus connection itself went away
            raise Unreachable(str(e) or type(e).__name__) from None

    async def call(self, member: str, signature: str = "", body: list | None = None) -> list:
        """One Manager method; DBusError carries the daemon's error name and message."""
        return await self._call(MANAGER_PATH, MANAGER_IFACE, member, signature, body)

    async def properties(self) -> dict[str, Any]:
        (props,) = await self._call(MANAGER_PATH, PROPERTIES_IFACE, "GetAll", "s", [MANAGER_IFACE])
        return plain(props)

    async def submit(self, spec: dict[str, Variant]) -> tuple[int, str]:
        ((job_id, path),) = await self.call("Submit", "a{sv}", [spec])
        return job_id, path

    async def get_job(self, job_id: int) -> dict[str, Any]:
        (job,) = await self.call("GetJob", "t", [job_id])
        return plain(job)

    async def list_jobs(self, states: list[str] | None = None, uid: int | None = None,
                        limit: int | None = None, all_nodes: bool = False,
                        properties: list[str] | None = None) -> list[dict[str, Any]]:
        """Every matching job, oldest first (all_nodes: one page per node, ids are per origin, whole
        rows; else properties as job_pages)."""
        if all_nodes:
            flt = {"AllNodes": Variant("b", True), "Limit": Variant("u", min(limit or LIST_LIMIT, LIST_LIMIT))}
            if states is not None:
                flt["States"] = Variant("as", states)
            if uid is not None:
                flt["User"] = Variant("u", uid)
            (page,) = await self.call("ListJobs", "a{sv}", [flt])
            return plain_rows(page)
        return [j async for page in self.job_pages(states, uid, limit, properties=properties) for j in page]

    async def job_pages(self, states: list[str] | None = None, uid: int | None = None,
                        limit: int | None = None, page_size: int | None = None,
                        fold: bool = False, properties: list[str] | None = None
                        ) -> AsyncIterator[list[dict[str, Any]]]:
        """The matching jobs, oldest first, a page at a time (the After cursor), so a caller can
        show or write each page before asking for the next and never holds the whole queue.
        fold: an array's tasks that are no jobs yet come as one row (its ArrayTasks key says which).
        properties: only these keys (and Id) in each row, which the bus carries and parses faster."""
        after, seen, page_size = 0, 0, page_size or LIST_LIMIT
        while limit is None or seen < limit:
            want = page_size if limit is None else min(page_size, limit - seen)
            flt: dict[str, Variant] = {"After": Variant("t", after), "Limit": Variant("u", want)}
            if states is not None:
                flt["States"] = Variant("as", states)
            if uid is not None:
                flt["User"] = Variant("u", uid)
            if fold:
                flt["FoldArrays"] = Variant("b", True)
            if properties is not None:
                flt["Properties"] = Variant("as", properties)
            try:
                (page,) = await self.call("ListJobs", "a{sv}", [flt])
            except DBusError as e:
                if properties is None or "unknown filter key 'Properties'" not in (e.text or ""):
                    raise
                properties = None  # a daemon from before Properties (not restarted since an upgrade): whole rows
                del flt["Properties"]
                (page,) = await self.call("ListJobs", "a{sv}", [flt])
            # A short page is not the end: the daemon shortens pages of large rows (its reply budget).
            if not page:
                return
            rows = plain_rows(page)
            seen += len(rows)
            after = rows[-1]["Id"]
            yield rows

    async def list_nodes(self) -> list[dict[str, Any]]:
        (nodes,) = await self.call("ListNodes")
        return plain(nodes)

    async def subscribe(self) -> None:
        """Queue every JobStateChanged from now on. Call it before reading a job's state, so an
        end that happens in between is still seen."""
        changes: asyncio.Queue[JobChange] = asyncio.Queue()
        self._changes = changes

        def on_message(msg: Message) -> None:
            if (msg.message_type is MessageType.SIGNAL and msg.member == "JobStateChanged"
                    and msg.interface == MANAGER_IFACE and msg.path == MANAGER_PATH and msg.signature == "toss"):
                changes.put_nowait(tuple(msg.body))

        self.bus.add_message_handler(on_message)
        rule = (f"type='signal',sender='{BUS_NAME}',path='{MANAGER_PATH}',interface='{MANAGER_IFACE}',"
                f"member='JobStateChanged'")
        try:
            await dbus.add_match(self.bus, rule)
        except DBusError as e:
            raise Unreachable(e.text) from None

    async def next_change(self, timeout: float | None = None) -> JobChange:
        """The next JobStateChanged; TimeoutError when none comes within timeout seconds."""
        if self._changes is None:
            raise RuntimeError("subscribe() first")
        if not self._changes.empty():  # wait_for(..., 0) would time out even with one queued
            return self._changes.get_nowait()
        return await asyncio.wait_for(self._changes.get(), timeout)
