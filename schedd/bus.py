"""D-Bus plumbing on dbus-fast: addresses, a connection that survives bursts, raw calls.

Workarounds for dbus-fast 5.2 (see shared/research/dbus-systemd.md §4):
- a non-blocking send that returns EAGAIN is treated as fatal and silently
  drops the connection; the socket wrapper turns it into "0 bytes written" so
  the writer waits for the socket to become writable instead;
- the session bus is not found from $XDG_RUNTIME_DIR/bus: we pass the address.
"""

from __future__ import annotations

import os
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"


def bus_address(user: bool) -> str:
    """The system bus, or the user's session bus (falling back on $XDG_RUNTIME_DIR/bus)."""
    if user:
        addr = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if addr:
            return addr
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
        return f"unix:path={runtime}/bus"
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"


class _EagainSafeSocket:
    """Socket proxy for dbus-fast's writer: EAGAIN means 'try again when writable'."""

    __slots__ = ("_sock",)

    def __init__(self, sock) -> None:
        self._sock = sock

    def send(self, data) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    def sendmsg(self, buffers, ancdata=()) -> int:
        try:
            return self._sock.sendmsg(buffers, ancdata)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


async def connect(address: str, bus_class: type[MessageBus] = MessageBus, **kwargs: Any) -> MessageBus:
    bus = await bus_class(bus_address=address, bus_type=BusType.SYSTEM, **kwargs).connect()
    writer = getattr(bus, "_writer", None)
    if writer is not None and not isinstance(writer.sock, _EagainSafeSocket):
        writer.sock = _EagainSafeSocket(writer.sock)
    return bus


async def call(
    bus: MessageBus, dest: str, path: str, iface: str, member: str, signature: str = "", body: list | None = None
) -> list:
    """One method call; returns the reply body or raises DBusError(name, text)."""
    reply = await bus.call(
        Message(destination=dest, path=path, interface=iface, member=member, signature=signature, body=body or [])
    )
    if reply.message_type == MessageType.ERROR:
        raise DBusError(reply.error_name, reply.body[0] if reply.body else reply.error_name)
    return reply.body


async def add_match(bus: MessageBus, rule: str) -> None:
    await call(bus, DBUS_NAME, DBUS_PATH, DBUS_NAME, "AddMatch", "s", [rule])
