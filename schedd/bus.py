"""D-Bus plumbing on dbus-fast: addresses, a connection that survives bursts, raw calls.

Workarounds for dbus-fast 5.2 (see shared/research/dbus-systemd.md §4):
- a non-blocking send that returns EAGAIN is treated as fatal and silently
  drops the connection; the socket wrapper turns it into "0 bytes written" so
  the writer waits for the socket to become writable instead;
- its writer sends each message with a syscall of its own as it is queued (a
  batch's thousands of signals: one send each); ours writes what a turn of the
  loop queued in one send;
- the session bus is not found from $XDG_RUNTIME_DIR/bus: we pass the address.
"""

from __future__ import annotations

import os
from typing import Any

import array
import asyncio
import socket

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.aio.message_bus import _MessageWriter
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


def _done(futures: list[asyncio.Future | None], error: BaseException | None = None) -> None:
    for fut in futures:
        if fut is not None and not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)


class _CoalescingWriter(_MessageWriter):
    """dbus-fast's writer, but what a turn of the loop queues goes out in one send.

    dbus-fast writes a message at once when nothing is queued, so a burst of signals (a batch's
    InterfacesAdded and JobStateChanged, two a job) cost one syscall each: under SubmitMany the
    daemon spent 9 % of its time in send(). Here a queued message waits for the end of the loop's
    turn (call_soon) and the messages queued by then are joined, up to JOIN_BYTES, into one write.
    A message carrying file descriptors goes alone, as before."""

    JOIN_BYTES = 1 << 20

    def __init__(self, bus: MessageBus) -> None:
        super().__init__(bus)
        self._futs: list[asyncio.Future | None] = []
        self._flush_handle: asyncio.Handle | None = None
        self.now = False  # the next message queued is written at once (call(..., now=True))

    def schedule_write(self, msg: Message | None = None, future: asyncio.Future | None = None) -> None:
        if msg is not None:
            self.buffer_message(msg, future)
        now, self.now = self.now, False
        if not self.bus.unique_name or self.buf is not None:
            return  # not connected yet, or a write is waiting for the socket: it takes this one along
        if now:
            # A call on a start's critical path (StartTransientUnit): out now, with what is queued
            # before it, not at the end of the loop's turn.
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self.write_callback(remove_writer=False)
        if self.buf is not None or self.messages:
            self.loop.add_writer(self.fd, self.write_callback)

    def _take(self) -> None:
        buf, fds, fut = self.messages.popleft()
        futs = [fut]
        if not fds and self.messages and not self.messages[0][1]:
            parts, size = [buf], len(buf)
            while self.messages and not self.messages[0][1] and size < self.JOIN_BYTES:
                more, _, f = self.messages.popleft()
                parts.append(more)
                futs.append(f)
                size += len(more)
            buf = b"".join(parts)
        self.unix_fds, self.buf, self.offset, self._futs = fds, memoryview(buf), 0, futs

    def write_callback(self, remove_writer: bool = True) -> None:
        sock = self.sock
        try:
            while True:
                if self.buf is None:
                    if not self.messages:
                        if remove_writer:
                            self.loop.remove_writer(self.fd)
                        return
                    self._take()
                if self.unix_fds and self.negotiate_unix_fd:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", self.unix_fds))]
                    self.offset += sock.sendmsg([self.buf[self.offset:]], anc)
                    self.unix_fds = None
                else:
                    self.offset += sock.send(self.buf[self.offset:])
                if self.offset < len(self.buf):
                    return  # the rest when the socket is writable
                self.buf = None
                _done(self._futs)
                self._futs = []
        except Exception as e:  # noqa: BLE001 - as dbus-fast's writer: the connection is over
            if self.bus._user_disconnect:
                _done(self._futs)
            else:
                _done(self._futs, e)
            self.bus._finalize(e)


async def flush(bus: MessageBus, timeout: float = 5.0) -> None:
    """Until what is queued on the connection has been written (before a disconnect, which drops it)."""
    w = getattr(bus, "_writer", None)
    if not isinstance(w, _CoalescingWriter):
        return
    futs = [f for f in (*w._futs, *(f for _, _, f in w.messages)) if f is not None and not f.done()]
    if futs:
        await asyncio.wait(futs, timeout=timeout)


async def connect(address: str, bus_class: type[MessageBus] = MessageBus, **kwargs: Any) -> MessageBus:
    bus = await bus_class(bus_address=address, bus_type=BusType.SYSTEM, **kwargs).connect()
    writer = getattr(bus, "_writer", None)
    if isinstance(writer, _MessageWriter) and not isinstance(writer, _CoalescingWriter) \
            and writer.buf is None and not writer.messages:
        writer = bus._writer = _CoalescingWriter(bus)
    if writer is not None and not isinstance(writer.sock, _EagainSafeSocket):
        writer.sock = _EagainSafeSocket(writer.sock)
    return bus


async def call(
    bus: MessageBus, dest: str, path: str, iface: str, member: str, signature: str = "", body: list | None = None,
    *, now: bool = False,
) -> list:
    """One method call; returns the reply body or raises DBusError(name, text).

    now: written to the socket before this returns control to the loop (a latency-critical call),
    instead of with the rest of the loop's turn."""
    msg = Message(destination=dest, path=path, interface=iface, member=member, signature=signature, body=body or [])
    w = getattr(bus, "_writer", None)
    if now and isinstance(w, _CoalescingWriter):
        w.now = True  # bus.call sends the message before its first suspension: that send takes the flag
    reply = await bus.call(msg)
    if reply.message_type == MessageType.ERROR:
        raise DBusError(reply.error_name, reply.body[0] if reply.body else reply.error_name)
    return reply.body


async def add_match(bus: MessageBus, rule: str) -> None:
    await call(bus, DBUS_NAME, DBUS_PATH, DBUS_NAME, "AddMatch", "s", [rule])
