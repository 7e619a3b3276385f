"""Benchmark client: runs inside the booted test systemd, as root, next to the schedd under test.

Prints one JSON object. Phases:
  floor    raw StartTransientUnit scopes/s for `true` (gate: /bin/sh blocked on a pipe,
           spawned with posix_spawn, released after the unit's job is done), K in flight
  e2e      schedd end-to-end `true` jobs/s, submit to COMPLETED
  submit   Submit calls/s over D-Bus (held jobs, C concurrent callers)
  latency  submit -> RUNNING on an idle node, p50/p99 (one job at a time)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from dbus_fast import Message, MessageType, Variant

from schedd import bus as dbus

SD = ("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
SCHEDD = ("org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager")


async def floor(n: int, in_flight: int) -> float:
    bus = await dbus.connect(dbus.bus_address(False))
    done: dict[str, asyncio.Future] = {}
    early: dict[str, str] = {}

    def on_msg(msg: Message):
        if msg.message_type == MessageType.SIGNAL and msg.member == "JobRemoved":
            _, path, _, result = msg.body
            fut = done.pop(path, None)
            if fut:
                fut.set_result(result)
            else:
                early[path] = result

    bus.add_message_handler(on_msg)
    await dbus.add_match(bus, "type='signal',sender='org.freedesktop.systemd1',member='JobRemoved'")
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(in_flight)
    tag = f"bench{os.getpid()}"

    async def one(i: int) -> None:
        async with sem:
            r, w = os.pipe()
            pid = os.posix_spawn("/bin/sh", ["sh", "-c", "read _ <&3; exec /bin/true"], {},
                                 file_actions=[(os.POSIX_SPAWN_DUP2, r, 3)], setsid=True)
            os.close(r)
            (path,) = await dbus.call(bus, *SD, "StartTransientUnit", "ssa(sv)a(sa(sv))", [
                f"{tag}-{i}.scope", "fail",
                [["PIDs", Variant("au", [pid])], ["Slice", Variant("s", "bench.slice")],
                 ["MemoryAccounting", Variant("b", True)], ["MemoryMax", Variant("t", 256 << 20)],
                 ["CollectMode", Variant("s", "inactive-or-failed")]], []])
            if path in early:
                early.pop(path)
            else:
                fut = loop.create_future()
                done[path] = fut
                await fut
            os.write(w, b"\n")
            os.close(w)
            pidfd = os.pidfd_open(pid)
            ev = asyncio.Event()
            loop.add_reader(pidfd, ev.set)
            await ev.wait()
            loop.remove_reader(pidfd)
            os.close(pidfd)
            os.waitpid(pid, 0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    dt = time.perf_counter() - t0
    bus.disconnect()
    return n / dt


class Schedd:
    def __init__(self) -> None:
        self.bus = None
        self.waiters: dict[tuple[int, str], asyncio.Future] = {}
        self.seen: dict[tuple[int, str], float] = {}

    async def open(self) -> None:
        self.bus = await dbus.connect(dbus.bus_address(False))
        self.bus.add_message_handler(self._on)
        await dbus.add_match(self.bus, "type='signal',sender='org.schedd.Schedd1',member='JobStateChanged'")

    def _on(self, msg: Message):
        if msg.message_type == MessageType.SIGNAL and msg.member == "JobStateChanged":
            jid, _, state, _ = msg.body
            now = time.perf_counter()
            key = (jid, state)
            fut = self.waiters.pop(key, None)
            if fut is not None:
                fut.set_result(now)
            else:
                self.seen[key] = now

    def wait_state(self, jid: int, state: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if (jid, state) in self.seen:
            fut.set_result(self.seen.pop((jid, state)))
        else:
            self.waiters[(jid, state)] = fut
        return fut

    async def call(self, member: str, sig: str = "", body: list | None = None) -> list:
        return await dbus.call(self.bus, *SCHEDD, member, sig, body)


def spec(cmd: list[str], **extra) -> dict:
    d = {"Command": Variant("as", cmd), "Memory": Variant("t", 64 << 20)}
    d.update(extra)
    return d


async def e2e(s: Schedd, n: int) -> float:
    t0 = time.perf_counter()
    ids: list[int] = []
    for k in range(0, n, 500):
        (batch,) = await s.call("SubmitMany", "aa{sv}", [[spec(["true"]) for _ in range(min(500, n - k))]])
        ids.extend(batch)
    ends = await asyncio.gather(*(s.wait_state(i, "COMPLETED") for i in ids))
    return n / (max(ends) - t0)


async def submit_rate(s: Schedd, n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    held = spec(["true"], Hold=Variant("b", True))

    async def one() -> int:
        async with sem:
            ((jid, _),) = await s.call("Submit", "a{sv}", [held])
            return jid

    t0 = time.perf_counter()
    ids = await asyncio.gather(*(one() for _ in range(n)))
    dt = time.perf_counter() - t0

    async def cancel(i: int) -> None:
        async with sem:
            await s.call("Cancel", "t", [i])

    await asyncio.gather(*(cancel(i) for i in ids))  # leave the node clean
    return n / dt


async def latency(s: Schedd, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        ((jid, _),) = await s.call("Submit", "a{sv}", [spec(["true"])])
        running = await s.wait_state(jid, "RUNNING")
        out.append((running - t0) * 1000)
        await s.wait_state(jid, "COMPLETED")
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    ncpu = int(sys.argv[2]) if len(sys.argv) > 2 else len(os.sched_getaffinity(0))
    res: dict = {"n": n, "cpus": ncpu}
    res["floor_matched"] = await floor(n, ncpu)
    res["floor_16"] = await floor(n, 16)
    s = Schedd()
    await s.open()
    res["latency_ms"] = lat = await latency(s, 200)
    res["latency_p50"], res["latency_p99"] = pct(lat, 50), pct(lat, 99)
    res["e2e"] = await e2e(s, n)
    res["submit"] = await submit_rate(s, max(n, 2000), 64)
    del res["latency_ms"]
    print(json.dumps(res))


if __name__ == "__main__":
    asyncio.run(main())
