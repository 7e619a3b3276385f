"""schedd.bus's writer: what a turn of the loop queues goes out in few writes, whole and in order."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import pytest
from dbus_fast import Message

from schedd import bus as dbus


class CountingSocket:
    """The writer's socket: counts the sends, and takes at most `most` bytes a send."""

    def __init__(self, sock: socket.socket, most: int = 1 << 30) -> None:
        self.sock, self.most, self.sends = sock, most, 0

    def send(self, data) -> int:
        self.sends += 1
        return self.sock.send(data[:self.most])

    def sendmsg(self, buffers, ancdata=()) -> int:
        self.sends += 1
        return self.sock.sendmsg(buffers, ancdata)


def writer(sock: CountingSocket) -> dbus._CoalescingWriter:
    bus = SimpleNamespace(_negotiate_unix_fd=False, _sock=sock, _loop=asyncio.get_running_loop(),
                          _fd=sock.sock.fileno(), unique_name=":1.1", _user_disconnect=False,
                          _finalize=lambda e: None)
    bus._writer = dbus._CoalescingWriter(bus)  # type: ignore[arg-type]
    return bus._writer


def signals(n: int) -> list[Message]:
    return [Message.new_signal(path="/a", interface="a.b", member="Changed", signature="ts", body=[i, "x" * (i % 50)])
            for i in range(n)]


async def read_all(peer: socket.socket, size: int) -> bytes:
    loop, got = asyncio.get_running_loop(), bytearray()
    async with asyncio.timeout(10):
        while len(got) < size:
            got += await loop.sock_recv(peer, size - len(got))
    return bytes(got)


@pytest.fixture
def pair():
    """A connected pair of non-blocking sockets: the writer's end and the bus daemon's."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def queue(w: dbus._CoalescingWriter, m: Message, serial: int) -> asyncio.Future:
    m.serial = serial
    fut = asyncio.get_running_loop().create_future()
    w.schedule_write(m, fut)
    return fut


async def test_a_burst_goes_out_in_one_write_in_order(pair):
    a, b = pair
    sock = CountingSocket(a)
    w = writer(sock)
    msgs = signals(500)
    futs = [queue(w, m, i + 1) for i, m in enumerate(msgs)]
    assert sock.sends == 0  # nothing written before the loop's turn ends
    want = b"".join(bytes(m._marshall(False)) for m in msgs)
    assert await read_all(b, len(want)) == want
    await asyncio.wait_for(asyncio.gather(*futs), 5)
    assert sock.sends == 1


async def test_partial_writes_resume_when_writable_and_lose_nothing(pair):
    a, b = pair
    sock = CountingSocket(a, most=777)  # every send short
    w = writer(sock)
    msgs = signals(300)
    futs = []
    for i, m in enumerate(msgs):
        futs.append(queue(w, m, i + 1))
        if i == 100:
            await asyncio.sleep(0)  # a turn of the loop in the middle: two bursts
    want = b"".join(bytes(m._marshall(False)) for m in msgs)
    assert await read_all(b, len(want)) == want
    await asyncio.wait_for(asyncio.gather(*futs), 5)
    await asyncio.wait_for(dbus.flush(w.bus), 5)  # type: ignore[arg-type]
    assert not w.messages and w.buf is None
