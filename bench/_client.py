"""Benchmark client: runs inside the booted test systemd, as root, next to the schedd under test.

Prints one JSON object. Phases:
  floor    raw StartTransientUnit scopes/s for `true` (gate: /bin/sh blocked on a pipe,
           spawned with posix_spawn, released after the unit's job is done), K in flight
  e2e      schedd end-to-end `true` jobs/s, submit to COMPLETED
  submit   Submit calls/s over D-Bus (held jobs, C concurrent callers)
  latency  submit -> RUNNING on an idle node, p50/p99 (one job at a time)
  scope    raw single-scope start: StartTransientUnit of one scope (gate already spawned) until
           systemd's job for it is done, one at a time, p50 (the floor for submit -> RUNNING)
  commit   one durable SQLite commit (WAL, synchronous=FULL, as the daemon's store) next to the
           daemon's database, one at a time, p50: a job's program starts only once its Submit
           is durable, so submit -> RUNNING cannot beat max(scope, commit)
  cpu      CPU ms per e2e job of schedd (its own; its reaped gates and jobs apart), systemd,
           dbus-daemon and journald; per floor scope of the client, its sh and jobs, the same others
  rounds   (--rounds R) floor, e2e, scope and latency measured R times, interleaved; medians
  behind   (--behind M) 10 held jobs submitted, e2e; then up to M held (SubmitMany, batches of
           1000, as user nobody where the daemon lets it, else as root), e2e again
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from typing import Any

from dbus_fast import Message, MessageType, Variant

from schedd import bus as dbus

SD = ("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
SCHEDD = ("org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager")


class JobsRemoved:
    """systemd's JobRemoved by job path, with when each came: a scope's job may be done before
    StartTransientUnit's answer names it, so what comes early is kept for its waiter."""

    def __init__(self, bus) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[str, asyncio.Future] = {}
        self._early: dict[str, float] = {}
        bus.add_message_handler(self._on_msg)

    def _on_msg(self, msg: Message) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.member == "JobRemoved":
            now, path = time.perf_counter(), msg.body[1]
            fut = self._waiting.pop(path, None)
            if fut:
                fut.set_result(now)
            else:
                self._early[path] = now

    async def wait(self, path: str) -> float:
        """When the job at path was removed (perf_counter)."""
        if path in self._early:
            return self._early.pop(path)
        fut = self._waiting[path] = self._loop.create_future()
        return await fut


async def watch_jobs_removed() -> tuple[Any, JobsRemoved]:
    bus = await dbus.connect(dbus.bus_address(False))
    removed = JobsRemoved(bus)
    await dbus.add_match(bus, "type='signal',sender='org.freedesktop.systemd1',member='JobRemoved'")
    return bus, removed


def spawn_floor_gate() -> tuple[int, int]:
    """The floor's gate: /bin/sh blocked on a pipe, then `true` (pid, the pipe's write end)."""
    r, w = os.pipe()
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "read _ <&3; exec /bin/true"], {},
                         file_actions=[(os.POSIX_SPAWN_DUP2, r, 3)], setsid=True)
    os.close(r)
    return pid, w


async def start_floor_scope(bus, unit: str, pid: int) -> str:
    """A bare scope for pid, as schedd's would be but for its CPUs: the job path systemd answers."""
    (path,) = await dbus.call(bus, *SD, "StartTransientUnit", "ssa(sv)a(sa(sv))", [
        unit, "fail",
        [["PIDs", Variant("au", [pid])], ["Slice", Variant("s", "bench.slice")],
         ["MemoryAccounting", Variant("b", True)], ["MemoryMax", Variant("t", 256 << 20)],
         ["CollectMode", Variant("s", "inactive-or-failed")]], []])
    return path


async def floor(n: int, in_flight: int) -> float:
    bus, removed = await watch_jobs_removed()
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(in_flight)
    tag = f"bench{os.getpid()}"

    async def one(i: int) -> None:
        async with sem:
            pid, w = spawn_floor_gate()
            await removed.wait(await start_floor_scope(bus, f"{tag}-{i}.scope", pid))
            os.write(w, b"\n")
            os.close(w)
            pidfd = os.pidfd_open(pid)
            ev = asyncio.Event()
            loop.add_reader(pidfd, ev.set)
            await ev.wait()
            loop.remove_reader(pidfd)
            os.close(pidfd)
            os.waitpid(pid, 0)

    c0, k0 = cpu_by_process(), os.times()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    dt = time.perf_counter() - t0
    c1, k1 = cpu_by_process(), os.times()
    bus.disconnect()
    LAST_FLOOR_CPU.clear()
    LAST_FLOOR_CPU.update({k: (c1[k] - c0[k]) / n * 1000 for k in ("systemd", "dbus-daemon", "journald")})
    LAST_FLOOR_CPU["client"] = (k1.user + k1.system - k0.user - k0.system) / n * 1000
    LAST_FLOOR_CPU["sh+jobs"] = (k1.children_user + k1.children_system - k0.children_user - k0.children_system) / n * 1000
    return n / dt


async def scope_latency(n: int) -> list[float]:
    """ms from StartTransientUnit to its job's JobRemoved, one scope at a time (the gate spawned beforehand)."""
    bus, removed = await watch_jobs_removed()
    tag = f"lat{os.getpid()}"
    out = []
    for i in range(n):
        pid, w = spawn_floor_gate()
        t0 = time.perf_counter()
        t1 = await removed.wait(await start_floor_scope(bus, f"{tag}-{i}.scope", pid))
        out.append((t1 - t0) * 1000)
        os.write(w, b"\n")
        os.close(w)
        os.waitpid(pid, 0)
    bus.disconnect()
    return out


def commit_latency(n: int, state_dir: str = "/var/lib/schedd") -> list[float]:
    """ms per one-row commit on the daemon's disk, as its store commits (WAL, synchronous=FULL)."""
    path = os.path.join(state_dir, f".bench-commit-{os.getpid()}.db")
    out = []
    try:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        for i in range(n):
            t0 = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?, ?)", (i, b"x" * 300))
            db.execute("COMMIT")
            out.append((time.perf_counter() - t0) * 1000)
        db.close()
    finally:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass
    return out


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


WHO = {"schedd": "schedd", "systemd": "systemd", "dbus-daemon": "dbus-daemon", "systemd-journal": "journald"}


def cpu_by_process() -> dict[str, float]:
    """CPU seconds so far of the processes that share a job's cost (schedd counts its gates' and jobs'
    time once they are reaped: cutime), by name."""
    tick = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys(WHO.values(), 0.0)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                data = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        comm = data[data.index(b"(") + 1 : data.rindex(b")")].decode()
        fields = data[data.rindex(b")") + 2 :].split()
        name = WHO.get(comm)
        if comm.startswith("python") and any(b"schedd" in c and b"bench" not in c for c in cmd[1:3]):
            name = "schedd"
        if name is None or (name == "systemd" and d != "1"):
            continue
        own = int(fields[11]) + int(fields[12])
        kids = int(fields[13]) + int(fields[14]) if name == "schedd" else 0
        out[name] += own / tick
        if kids:
            out["gates+jobs"] = out.get("gates+jobs", 0.0) + kids / tick
    return out


LAST_E2E_CPU: dict[str, float] = {}
LAST_FLOOR_CPU: dict[str, float] = {}


async def e2e(s: Schedd, n: int) -> float:
    c0 = cpu_by_process()
    t0 = time.perf_counter()
    ids: list[int] = []
    for k in range(0, n, 500):
        (batch,) = await s.call("SubmitMany", "aa{sv}", [[spec(["true"]) for _ in range(min(500, n - k))]])
        ids.extend(batch)
    ends = await asyncio.gather(*(s.wait_state(i, "COMPLETED") for i in ids))
    c1 = cpu_by_process()
    LAST_E2E_CPU.clear()
    LAST_E2E_CPU.update({k: (c1.get(k, 0.0) - c0.get(k, 0.0)) / n * 1000 for k in c1})
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


async def submit_held_as_root(s: Schedd, m: int) -> None:
    held = spec(["true"], Hold=Variant("b", True))
    for k in range(0, m, 1000):
        await s.call("SubmitMany", "aa{sv}", [[held] * min(1000, m - k)])


def submit_held(m: int) -> str:
    """M held jobs behind, in batches of 1000: as user nobody (another user's queue) where the daemon
    takes them from that user; the submitting user, as it turned out."""
    try:
        r = subprocess.run([sys.executable, __file__, "--submit-held", str(m)], user=65534, group=65534,
                           extra_groups=[], capture_output=True, text=True, cwd="/")
        if r.returncode == 0:
            return "nobody"
        why = r.stderr.strip()[-300:]
    except OSError as e:  # e.g. nobody cannot run this venv's python
        why = str(e)
    sys.stderr.write(f"submitting as nobody failed ({why}); submitting as root\n")
    return "root"


async def submit_held_main(m: int) -> None:
    s = Schedd()
    await s.open()
    await submit_held_as_root(s, m)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _option(argv: list[str], name: str, default: int) -> int:
    if name not in argv:
        return default
    i = argv.index(name)
    value = int(argv[i + 1])
    del argv[i : i + 2]
    return value


async def main(argv: list[str]) -> None:
    behind = _option(argv, "--behind", 0)
    rounds = max(1, _option(argv, "--rounds", 1))
    n = int(argv[0]) if argv else 1000
    ncpu = int(argv[1]) if len(argv) > 1 else len(os.sched_getaffinity(0))
    res: dict = {"n": n, "cpus": ncpu, "rounds": rounds}
    s = Schedd()
    await s.open()
    # Each round measures a floor and schedd's figure next to each other (a shared machine's load
    # drifts); the figures are the rounds' medians, the ratios the medians of each round's ratio.
    per: dict[str, list[float]] = {k: [] for k in ("floor_matched", "scope_p50", "latency_p50", "latency_p99", "e2e")}
    for r in range(rounds):
        per["floor_matched"].append(await floor(n, ncpu))
        for k, v in LAST_FLOOR_CPU.items():
            per.setdefault(f"floorcpu_ms_{k}", []).append(v)
        per["e2e"].append(await e2e(s, n))
        for k, v in LAST_E2E_CPU.items():
            per.setdefault(f"cpu_ms_{k}", []).append(v)
        per["scope_p50"].append(pct(await scope_latency(200), 50))
        lat = await latency(s, 200)
        per["latency_p50"].append(pct(lat, 50))
        per["latency_p99"].append(pct(lat, 99))
        if r == 0:
            res["floor_16"] = await floor(n, 16)
            res["commit_p50"] = pct(commit_latency(200), 50)
            res["submit"] = await submit_rate(s, max(n, 2000), 64)
    for k, v in per.items():
        res[k] = statistics.median(v)
    res["e2e_ratios"] = [e / f for e, f in zip(per["e2e"], per["floor_matched"])]
    res["latency_ratios"] = [lt / sc for lt, sc in zip(per["latency_p50"], per["scope_p50"])]
    if behind:
        # The comparison: e2e with M held jobs behind against the same with 10 behind, each
        # measured the same way (R back-to-back runs, median).
        few = min(10, behind)
        user = await asyncio.get_running_loop().run_in_executor(None, submit_held, few)
        if user == "root":
            await submit_held_as_root(s, few)
        res["e2e_behind_10"] = statistics.median([await e2e(s, n) for _ in range(rounds)])
        t0 = time.perf_counter()
        if behind > few:
            user = await asyncio.get_running_loop().run_in_executor(None, submit_held, behind - few)
            if user == "root":
                await submit_held_as_root(s, behind - few)
        res["behind_user"] = user
        res["behind_submit_s"] = time.perf_counter() - t0
        res["behind"] = behind
        res["e2e_behind"] = statistics.median([await e2e(s, n) for _ in range(rounds)])
    print(json.dumps(res))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--submit-held"]:
        asyncio.run(submit_held_main(int(sys.argv[2])))
    else:
        asyncio.run(main(sys.argv[1:]))
