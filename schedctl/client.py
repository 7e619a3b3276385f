"""A thin async client of the schedd D-Bus API: calls, plain-Python results, one signal subscription."""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.errors import DBusError

from schedd import BUS_NAME, MANAGER_IFACE, MANAGER_PATH
from schedd import bus as dbus


class Unreachable(Exception):
    """The bus or the daemon cannot be reached."""


def plain(value: Any) -> Any:
    """Variants (possibly nested) -> plain Python values."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class Client:
    def __init__(self, user: bool, address: str | None = None) -> None:
        self.user = user
        self.address = address or dbus.bus_address(user)
        self.bus = None
        self._signals: asyncio.Queue | None = None

    @property
    def where(self) -> str:
        return "the session bus" if self.user else "the system bus"

    async def connect(self) -> "Client":
        try:
            self.bus = await dbus.connect(self.address)
        except (OSError, EOFError, DBusError) as e:
            raise Unreachable(f"cannot reach {self.where} ({self.address}): {e}") from None
        return self

    def close(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()

    async def call(self, member: str, signature: str = "", body: list | None = None) -> list:
        try:
            return await dbus.call(self.bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, member, signature, body)
        except DBusError as e:
            if e.type in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
                raise Unreachable(f"schedd is not running on {self.where}") from None
            raise

    async def properties(self) -> dict[str, Any]:
        try:
            (props,) = await dbus.call(self.bus, BUS_NAME, MANAGER_PATH, "org.freedesktop.DBus.Properties",
                                       "GetAll", "s", [MANAGER_IFACE])
        except DBusError as e:
            if e.type in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
                raise Unreachable(f"schedd is not running on {self.where}") from None
            raise
        return plain(props)

    async def submit(self, spec: dict[str, Variant]) -> tuple[int, str]:
        ((jid, path),) = await self.call("Submit", "a{sv}", [spec])
        return jid, path

    async def get_job(self, jid: int) -> dict[str, Any]:
        (job,) = await self.call("GetJob", "t", [jid])
        return plain(job)

    async def list_jobs(self, states: list[str] | None = None, uid: int | None = None,
                        limit: int | None = None) -> list[dict[str, Any]]:
        """All matching jobs, paging through the daemon's per-call limit with the After cursor."""
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            flt: dict[str, Variant] = {"After": Variant("t", after)}
            if states:
                flt["States"] = Variant("as", states)
            if uid is not None:
                flt["User"] = Variant("u", uid)
            want = 10_000 if limit is None else min(10_000, limit - len(out))
            flt["Limit"] = Variant("u", want)
            (page,) = await self.call("ListJobs", "a{sv}", [flt])
            page = plain(page)
            out.extend(page)
            if len(page) < want or (limit is not None and len(out) >= limit):
                return out
            after = page[-1]["Id"]

    async def subscribe(self) -> None:
        """Start receiving JobStateChanged (before looking at current states, so nothing is missed)."""
        self._signals = asyncio.Queue()

        def on_msg(msg: Message):
            if msg.message_type == MessageType.SIGNAL and msg.member == "JobStateChanged" \
                    and msg.interface == MANAGER_IFACE:
                self._signals.put_nowait(tuple(msg.body))

        self.bus.add_message_handler(on_msg)
        await dbus.add_match(self.bus, f"type='signal',interface='{MANAGER_IFACE}',member='JobStateChanged',"
                                       f"path='{MANAGER_PATH}'")

    async def next_change(self, timeout: float | None = None) -> tuple[int, str, str, str]:
        """(id, path, state, reason) of the next JobStateChanged."""
        return await asyncio.wait_for(self._signals.get(), timeout)
