"""Scale benchmark client: runs inside the booted test systemd, as root, next to the schedd under test.

Submits N held jobs by SubmitMany (batches of 1,000), measures the listing, lookup, the CLI's
queue, memory and a restart, a 1M-task array (Submit, GetJob of a task, CancelArray), plus the raw
floors of the same run; prints one JSON object.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

from dbus_fast import Message, Variant
from dbus_fast._private.unmarshaller import Unmarshaller

from schedd import bus as dbus

SCHEDD = ("org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager")
BATCH = 1000
ARRAY_TASKS = 1_000_000
RUN_S = 5.0
# squeue's default columns (JOBID NAME USER ST TIME NODELIST(REASON)) as ListJobs' Properties
SQUEUE_COLUMNS = ["Name", "UserName", "State", "Reason", "StartTime", "Node", "ArrayJobId", "ArrayTaskId"]


def held_spec() -> dict:
    return {"Command": Variant("as", ["true"]), "Memory": Variant("t", 64 << 20), "Hold": Variant("b", True)}


def main_pid(unit: str = "schedd") -> int:
    return int(subprocess.run(["systemctl", "show", "-P", "MainPID", unit], capture_output=True, text=True,
                              check=True).stdout.strip())


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def listing(argv: list[str]) -> tuple[float, float, int, float]:
    """A command that lists every job: seconds in all, seconds to its first line, its lines, and
    its peak RSS in MiB (what printing a page at a time saves). The peak is its VmHWM read as it
    runs: wait4's ru_maxrss would count this process's own RSS, which a child's exec inherits."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    peak, done = [0.0], threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]) / 1024)
            except OSError:
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        first = proc.stdout.readline()
        first_s = time.perf_counter() - t0
        lines = int(bool(first)) + sum(chunk.count(b"\n") for chunk in iter(lambda: proc.stdout.read(1 << 16), b""))
        proc.stdout.close()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: its pid is still its own
    finally:
        done.set()
        watcher.join()
    rc = proc.wait()
    if rc:
        raise RuntimeError(f"{argv[0]} exited {rc}")
    return time.perf_counter() - t0, first_s, lines, peak[0]


async def timed(coro_fn, times: int) -> float:
    """Median ms of `times` awaits of coro_fn()."""
    xs = []
    for _ in range(times):
        t0 = time.perf_counter()
        await coro_fn()
        xs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(xs)


def sqlite_floor(n: int) -> float:
    """Rows/s of the daemon's own upsert of N job rows, 1,000 per commit, synchronous=FULL, same disk."""
    from schedd.core.model import Job, JobSpec, JobState
    from schedd.core.store import Store, job_to_row

    with tempfile.TemporaryDirectory(dir="/var/lib/schedd") as d:
        store = Store(__import__("pathlib").Path(d) / "floor.db")
        spec = JobSpec(command=["true"], name="true", cpus=1, memory=64 << 20, hold=True, working_directory="/root",
                       stdout_path="/var/lib/schedd/jobs/1/output", stderr_path="/var/lib/schedd/jobs/1/output")
        rows = [job_to_row(Job(id=i, spec=spec, state=JobState.HELD, reason="held", submit_time=1))
                for i in range(1, n + 1)]
        t0 = time.perf_counter()
        for k in range(0, n, BATCH):
            store._transaction(rows[k:k + BATCH])
        dt = time.perf_counter() - t0
        store.close()
    return n / dt


def restart_floor() -> float:
    """What any restart pays: the daemon's imports in a fresh interpreter and one read of every row."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import schedd.daemon"], check=True)
    conn = sqlite3.connect("file:/var/lib/schedd/schedd.db?mode=ro", uri=True)
    conn.execute("SELECT * FROM jobs").fetchall()
    conn.close()
    return time.perf_counter() - t0


class RawBus:
    """A system-bus connection read by hand: a reply's bytes as they arrive, none of it parsed -- what
    the daemon and the bus daemon take for a call, apart from what a client library spends on it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(dbus.bus_address(False).removeprefix("unix:path="))
        self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
        if not self.sock.recv(4096).startswith(b"OK"):
            raise RuntimeError("the bus refused EXTERNAL authentication")
        self.sock.sendall(b"BEGIN\r\n")
        self.buf = bytearray()
        self.serial = 0
        self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")
        self._read()  # NameAcquired

    def call(self, dest: str, path: str, iface: str, member: str, sig: str = "", body: list | None = None) -> bytes:
        """The reply's bytes (the first message back that answers this call)."""
        self.serial += 1
        msg = Message(destination=dest, path=path, interface=iface, member=member, signature=sig,
                      body=body or [], serial=self.serial)
        self.sock.sendall(msg._marshall(False))
        while True:  # subscribed to nothing: what comes is a reply (or, after Hello, NameAcquired)
            raw = self._read()
            if raw[1] == 3:
                raise RuntimeError(f"{member} answered an error")
            if raw[1] == 2:
                return raw

    def _read(self) -> bytes:
        while True:
            if len(self.buf) >= 16:
                body_len, _, fields_len = struct.unpack_from("<III", self.buf, 4)
                end = 16 + fields_len + (-fields_len % 8) + body_len
                if len(self.buf) >= end:
                    raw = bytes(self.buf[:end])
                    del self.buf[:end]
                    return raw
            self.buf += self.sock.recv(1 << 20)


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    res: dict = {"n": n, "cpus": len(os.sched_getaffinity(0))}
    bus = await dbus.connect(dbus.bus_address(False))

    async def call(member: str, sig: str = "", body: list | None = None) -> list:
        return await dbus.call(bus, *SCHEDD, member, sig, body)

    async def ping() -> None:
        await dbus.call(bus, SCHEDD[0], SCHEDD[1], "org.freedesktop.DBus.Peer", "Ping", "", [])

    # SubmitMany, and who spent the CPU on it: the daemon, the bus daemon routing its signals, this client
    ids: list[int] = []
    procs = {"schedd": main_pid(), "dbus": main_pid("dbus"), "client": os.getpid()}
    cpu0 = {k: cpu_s(p) for k, p in procs.items()}
    t0 = time.perf_counter()
    for k in range(0, n, BATCH):
        (batch,) = await call("SubmitMany", "aa{sv}", [[held_spec() for _ in range(min(BATCH, n - k))]])
        ids.extend(batch)
    res["submit_rate"] = n / (time.perf_counter() - t0)
    for k, p in procs.items():
        res[f"submit_cpu_us_{k}"] = (cpu_s(p) - cpu0[k]) / n * 1e6
    pid = main_pid()
    res["rss_mib"] = rss_mib(pid)
    res["floor_ping_ms"] = await timed(ping, 200)

    # listing and lookup
    first, mid = ids[0], ids[len(ids) // 2]
    res["list100_ms"] = await timed(lambda: call("ListJobs", "a{sv}", [{"Limit": Variant("u", 100)}]), 20)
    res["list100_deep_ms"] = await timed(
        lambda: call("ListJobs", "a{sv}", [{"Limit": Variant("u", 100), "After": Variant("t", mid)}]), 20)
    rows = []

    async def default_page() -> None:
        (page,) = await call("ListJobs", "a{sv}", [{}])
        rows.append(len(page))

    res["list_default_ms"] = ms = await timed(default_page, 5)
    res["list_default_rows"] = rows[0] / (ms / 1000)
    res["list_default_page_rows"] = rows[0]
    # the same page split: until its bytes are here (daemon + bus daemon), then dbus-fast parsing them
    raw_bus, pages = RawBus(), []

    async def raw_page() -> None:
        pages.append(raw_bus.call(*SCHEDD, "ListJobs", "a{sv}", [{}]))

    res["list_default_raw_ms"] = await timed(raw_page, 5)
    res["list_default_bytes"] = len(pages[-1])

    async def parse() -> None:
        Unmarshaller(io.BytesIO(pages[-1])).unmarshall()

    res["list_default_parse_ms"] = await timed(parse, 5)
    res["floor_parse_rows"] = rows[0] / (res["list_default_parse_ms"] / 1000)

    # the same page with only the columns squeue shows by default (ListJobs' Properties)
    squeue = {"Properties": Variant("as", SQUEUE_COLUMNS)}
    picked: list[int] = []

    async def selected_page() -> None:
        (page,) = await call("ListJobs", "a{sv}", [squeue])
        picked.append(len(page))

    res["list_select_ms"] = ms = await timed(selected_page, 5)
    res["list_select_rows"] = picked[0] / (ms / 1000)
    res["list_select_bytes"] = len(raw_bus.call(*SCHEDD, "ListJobs", "a{sv}", [squeue]))
    raw_bus.sock.close()
    res["getjob_ms"] = await timed(lambda: call("GetJob", "t", [ids[len(ids) * 3 // 4]]), 200)
    del first

    # the CLI
    t0 = time.perf_counter()
    q = subprocess.run(["/opt/schedd/venv/bin/schedctl", "queue"], capture_output=True, check=True)
    res["queue_s"] = time.perf_counter() - t0
    res["queue_bytes"] = len(q.stdout)
    res["queue_lines"] = q.stdout.count(b"\n")
    for key, argv in (("squeue", ["/opt/schedd/slurm-bin/squeue"]), ("sacct", ["/opt/schedd/slurm-bin/sacct", "-X"]),
                      ("queue_all", ["/opt/schedd/venv/bin/schedctl", "queue", "--all"])):  # every job
        res[f"{key}_s"], res[f"{key}_first_s"], res[f"{key}_lines"], res[f"{key}_rss_mib"] = listing(argv)

    # floors that touch the disk, before the restart (the daemon idles meanwhile)
    res["floor_sqlite_rows"] = sqlite_floor(n)
    res["floor_restart_s"] = restart_floor()

    # restart to the bus
    bus.disconnect()
    t0 = time.perf_counter()
    subprocess.run(["systemctl", "restart", "schedd"], check=True)
    res["restart_ready_s"] = time.perf_counter() - t0
    bus = await dbus.connect(dbus.bus_address(False))
    probe = ids[-1]
    while True:
        try:
            await dbus.call(bus, *SCHEDD, "GetJob", "t", [probe])
            break
        except Exception:  # noqa: BLE001 - not on the bus yet
            await asyncio.sleep(0.01)
    res["restart_s"] = time.perf_counter() - t0
    res["rss_after_restart_mib"] = rss_mib(main_pid())

    # a 1M-task array: one Submit (ArrayTasks), one record; then CancelArray of all of it
    before = rss_mib(main_pid())
    array = {**held_spec(), "ArrayTasks": Variant("s", f"1-{ARRAY_TASKS}")}
    t0 = time.perf_counter()
    ((aid, _),) = await call("Submit", "a{sv}", [array])
    res["array_submit_ms"] = (time.perf_counter() - t0) * 1000
    res["array_rss_delta_mib"] = rss_mib(main_pid()) - before
    res["array_getjob_ms"] = await timed(lambda: call("GetJob", "t", [aid + ARRAY_TASKS - 1]), 50)
    t0 = time.perf_counter()
    await call("CancelArray", "t", [aid])
    res["array_cancel_ms"] = (time.perf_counter() - t0) * 1000

    # the same array running (%2 of `true`) for a few seconds: memory holds its window, not its tasks
    before = rss_mib(main_pid())
    running = {k: v for k, v in array.items() if k != "Hold"} | {"ArrayTasks": Variant("s", f"1-{ARRAY_TASKS}%2")}
    ((aid, _),) = await call("Submit", "a{sv}", [running])
    await asyncio.sleep(RUN_S)  # a measurement window, not a synchronisation
    (done,) = await call("ListJobs", "a{sv}", [{"States": Variant("as", ["COMPLETED"]), "After": Variant("t", aid - 1)}])
    res["array_run_tasks_per_s"] = len(done) / RUN_S
    res["array_run_rss_delta_mib"] = rss_mib(main_pid()) - before
    await call("CancelArray", "t", [aid])
    bus.disconnect()
    print(json.dumps(res))


if __name__ == "__main__":
    asyncio.run(main())
