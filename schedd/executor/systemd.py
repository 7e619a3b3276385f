"""The systemd executor: each job is a transient scope ``schedd-job-<id>.scope``.

Spawn sequence (race-free, crun's and systemd-run's): the gate is spawned
waiting on a pipe; StartTransientUnit (mode ``fail``) moves it into a new scope
in ``schedd.slice`` with MemoryMax/AllowedCPUs; once systemd's job for that
unit is done the gate is pinned with sched_setaffinity (scopes have no
CPUAffinity=, and AllowedCPUs is ignored on cgroup v1) and released. Several
scope starts are kept in flight: systemd is the bottleneck, not us.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections import OrderedDict
from pathlib import Path
from typing import Awaitable, Callable

from dbus_fast import Message, MessageType, Variant
from dbus_fast.errors import DBusError

from schedd import bus as dbus
from schedd import UNIT_PREFIX, UNIT_SUFFIX, faults, unit_name
from schedd.core.ledger import Allocation
from schedd.core.model import Job
from schedd.executor.container import ContainerRuntime
from schedd.executor.exits import ExecutorError, ExitCallback, ExitInfo
from schedd.executor.gated import GatedExecutor
from schedd.gpus import CONTROL_DEVICES

log = logging.getLogger(__name__)

SD_NAME = "org.freedesktop.systemd1"
SD_PATH = "/org/freedesktop/systemd1"
SD_MANAGER = "org.freedesktop.systemd1.Manager"
SLICE = "schedd.slice"
_UNIT_RE = re.compile(rf"^{re.escape(UNIT_PREFIX)}(\d+){re.escape(UNIT_SUFFIX)}$")


def _freezing_unsupported(e: DBusError) -> bool:
    """systemd's answer where the cgroup freezer is missing (v1/hybrid hosts): 'does not support freezing'."""
    return e.type in ("org.freedesktop.DBus.Error.NotSupported", "org.freedesktop.DBus.Error.UnknownMethod") \
        or "support freezing" in (e.text or "")


def cpu_mask(cpus: tuple[int, ...] | list[int]) -> bytes:
    """CPU ids -> systemd's AllowedCPUs bitmask (byte i bit j = CPU 8i+j)."""
    if not cpus:
        return b""
    mask = bytearray(max(cpus) // 8 + 1)
    for c in cpus:
        mask[c // 8] |= 1 << (c % 8)
    return bytes(mask)


class SystemdExecutor(GatedExecutor):
    name = "systemd"

    def __init__(
        self, on_exit: ExitCallback, *, address: str, status_dir: Path, kill_wait_usec: int, in_flight: int = 16,
        gpu_devices: Callable[[list[int]], list[str]] | None = None, containers: ContainerRuntime | None = None,
    ) -> None:
        super().__init__(on_exit, status_dir=status_dir, accounting=True)
        self.containers = self.gates.containers = containers
        if containers is not None:
            self.features = frozenset({"container"})
        self._container_runs: dict[int, int] = {}  # job id -> run, for the container jobs running
        self._cleanups: set[asyncio.Task] = set()  # held: the loop keeps only weak references to tasks
        self.address = address
        self.kill_wait_usec = kill_wait_usec
        self.gpu_devices = gpu_devices
        self._can_freeze: bool | None = None  # learnt at the first suspend
        self._sem = asyncio.Semaphore(in_flight)
        self._bus = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._early: OrderedDict[str, str] = OrderedDict()

    # -- connection -----------------------------------------------------------

    async def open(self) -> None:
        try:
            self._bus = await dbus.connect(self.address)
            self._bus.add_message_handler(self._on_message)
            await dbus.add_match(
                self._bus,
                f"type='signal',sender='{SD_NAME}',path='{SD_PATH}',interface='{SD_MANAGER}',member='JobRemoved'",
            )
            await self._manager("GetUnit", "s", ["init.scope" if os.getuid() == 0 else "basic.target"])
        except (OSError, DBusError, asyncio.TimeoutError) as e:
            if self._bus is not None:
                self._bus.disconnect()
            raise ExecutorError(f"systemd is not reachable at {self.address}: {e}") from e
        await super().open()

    async def close(self) -> None:
        await super().close()
        if self._bus is not None:
            self._bus.disconnect()

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL or msg.member != "JobRemoved" or msg.path != SD_PATH:
            return None
        _id, path, _unit, result = msg.body
        fut = self._waiting.pop(path, None)
        if fut is not None and not fut.done():
            fut.set_result(result)
        # Kept either way: the signal can be dispatched before the coroutine that asked for the job
        # resumes, and two callers can be handed the same job (StopUnit twice on one unit merges).
        self._early[path] = result
        while len(self._early) > 4096:
            self._early.popitem(last=False)
        return None

    async def _manager(self, member: str, sig: str = "", body: list | None = None, *, now: bool = False) -> list:
        return await dbus.call(self._bus, SD_NAME, SD_PATH, SD_MANAGER, member, sig, body, now=now)

    async def _run_job(self, member: str, sig: str, body: list) -> str:
        """Call a method that returns a systemd job path and wait for that job's result (the call is
        written at once: every one of them is a start's or a stop's critical path)."""
        (path,) = await self._manager(member, sig, body, now=True)
        result = self._early.get(path)
        if result is not None:
            return result
        fut = self._waiting.get(path)
        if fut is None:  # else another caller waits on the same systemd job: share its answer
            fut = self._waiting[path] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(fut)

    # -- the seam -------------------------------------------------------------

    async def check_specs(self, specs: list) -> None:
        if self.containers is None:
            return await super().check_specs(specs)
        for image in {s.container for s in specs if s.container}:
            await self.containers.check_image(image)

    def _devices(self, gpus: tuple[int, ...]) -> list[str]:
        """The device nodes a container job gets: its GPUs' (and the driver's shared ones), nothing else."""
        if self.gpu_devices is None or not gpus:
            return []
        return [*self.gpu_devices(list(gpus)), *(p for p in CONTROL_DEVICES if os.path.exists(p))]

    async def start(self, job: Job, alloc: Allocation, ready: Awaitable | None = None) -> dict:
        try:
            gate = self.gates.spawn(job, alloc.cpus, self._devices(alloc.gpus) if job.spec.container else None)
        except OSError as e:
            raise ExecutorError(f"cannot start {job.unit}: {e}") from e
        if job.spec.container:
            self._container_runs[job.id] = job.restarts
        try:
            async with self._sem:
                scope = asyncio.ensure_future(self._start_scope(job, alloc, gate.pid))
                try:
                    prepare = getattr(ready, "prepare", None)
                    if prepare is not None:
                        await asyncio.sleep(0)  # StartTransientUnit goes out: its local work overlaps systemd's
                        prepare()
                    await scope
                except BaseException:
                    scope.cancel()  # cancelled before the scope was asked for or made: no call left behind
                    if scope.done() and not scope.cancelled():
                        scope.exception()  # retrieved: the error raised is the one above
                    raise
            os.sched_setaffinity(gate.pid, alloc.cpus)
            if ready is not None:
                await ready
            faults.point("after-scope")
            gate.release()
        except BaseException as e:
            gate.abort()
            self.gates.start_done()
            self._forget_container(job.id, job.restarts)
            if isinstance(e, (DBusError, OSError)):
                raise ExecutorError(f"cannot start {job.unit}: {e}") from e
            raise
        self.gates.watch(job.id, gate.pid, None, self._gate_ended, job.restarts)
        return gate.handle()

    def _scope_properties(self, job: Job, alloc: Allocation, pid: int) -> list:
        props = [
            ["Description", Variant("s", f"schedd job {job.id} ({job.spec.name}) of {job.spec.user_name}")],
            ["Slice", Variant("s", SLICE)],
            ["PIDs", Variant("au", [pid])],
            ["MemoryAccounting", Variant("b", True)],
            ["MemoryMax", Variant("t", alloc.memory)],
            ["MemorySwapMax", Variant("t", 0)],
            ["CPUAccounting", Variant("b", True)],
            ["TasksAccounting", Variant("b", True)],
            ["AllowedCPUs", Variant("ay", cpu_mask(alloc.cpus))],
            # The gate records the OOM kill itself; "stop" would kill it before it can.
            ["OOMPolicy", Variant("s", "continue")],
            ["CollectMode", Variant("s", "inactive-or-failed")],
            ["TimeoutStopUSec", Variant("t", self.kill_wait_usec)],
            ["SendSIGKILL", Variant("b", True)],
        ]
        if self.gpu_devices is not None:
            # A node with GPUs: the job may open its own GPUs (and the driver's shared nodes), no other.
            props.append(["DevicePolicy", Variant("s", "closed")])
            # A container job's runtime makes the nodes inside its container: "m" (mknod) for those only.
            mode = "rwm" if job.spec.container else "rw"
            allow = [(p, mode) for p in self.gpu_devices(list(alloc.gpus))]
            if alloc.gpus:
                allow += [(p, mode) for p in CONTROL_DEVICES if os.path.exists(p)]
            if allow:
                props.append(["DeviceAllow", Variant("a(ss)", allow)])
        # No RuntimeMaxUSec: systemd cannot change it once a scope runs, and a suspended job's
        # time limit must stop running; the engine keeps the clock and stops the scope at the end.
        return props

    async def _start_scope(self, job: Job, alloc: Allocation, pid: int) -> None:
        props = self._scope_properties(job, alloc, pid)
        for attempt in range(3):
            try:
                result = await self._run_job("StartTransientUnit", "ssa(sv)a(sa(sv))", [job.unit, "fail", props, []])
            except DBusError as e:
                if e.type != "org.freedesktop.systemd1.UnitExists" or attempt == 2:
                    raise
                # A previous run of this id (requeue) left its unit: clear it, then retry.
                log.info("%s exists; clearing the old unit before starting again", job.unit)
                await self._stop_unit(job.unit)
                try:
                    await self._manager("ResetFailedUnit", "s", [job.unit])
                except DBusError:
                    pass
                continue
            if result != "done":
                raise ExecutorError(f"systemd could not start {job.unit}: job result '{result}'")
            return

    async def _stop_unit(self, unit: str) -> None:
        try:
            result = await self._run_job("StopUnit", "ss", [unit, "replace"])
        except DBusError as e:
            if e.type in ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.DBus.Error.UnknownObject"):
                return
            raise
        if result not in ("done", "canceled"):
            log.warning("stopping %s: systemd job result '%s'", unit, result)

    def _forget_container(self, job_id: int, run: int) -> None:
        """A container run that never started: its launch files go (there is no container yet)."""
        if self._container_runs.pop(job_id, None) is not None and self.containers is not None:
            task = asyncio.get_running_loop().create_task(self.containers.cleanup(job_id, run, killed=False))
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)

    def _gate_ended(self, job_id: int, info: ExitInfo) -> None:
        if info.stragglers or job_id in self._container_runs:
            # The main process is gone but it left processes behind: end them with the
            # scope before the job's CPUs and memory are handed to someone else.
            asyncio.get_running_loop().create_task(self._end_stragglers(job_id, info))
        else:
            self.on_exit(job_id, info)

    async def _end_stragglers(self, job_id: int, info: ExitInfo) -> None:
        unit = unit_name(job_id)
        if info.stragglers:
            log.info("%s: main process ended, stopping %d leftover process(es)", unit, info.stragglers)
            try:
                await self._stop_unit(unit)
            except Exception as e:  # the job's end is reported whatever happened to its leftovers
                log.error("%s: cannot stop leftover processes: %s", unit, e)
        run = self._container_runs.pop(job_id, None)
        if run is not None and self.containers is not None:
            # podman ran to its end (its own exit, nothing left behind): its --rm removed the container.
            killed = bool(info.signal or info.stragglers or info.lost or info.gate_failed
                          or info.exit_code in (125, 126, 127))
            try:
                await self.containers.cleanup(job_id, run, killed)
            except Exception:
                log.exception("job %d: cannot clean up after its container", job_id)
        self.on_exit(job_id, info)

    async def stop(self, job: Job) -> None:
        try:
            await self._stop_unit(job.unit)
        except DBusError as e:
            raise ExecutorError(f"cannot stop {job.unit}: {e}") from e

    async def signal(self, job: Job, signo: int) -> None:
        try:
            await self._manager("KillUnit", "ssi", [job.unit, "all", signo])
        except DBusError as e:
            raise ExecutorError(f"cannot signal {job.unit}: {e}") from e

    async def suspend(self, job: Job) -> None:
        """FreezeUnit where the host can freeze cgroups (v2), else SIGSTOP to every process, as Slurm does."""
        if self._can_freeze is not False:
            try:
                await self._manager("FreezeUnit", "s", [job.unit])
                self._can_freeze = True
                return
            except DBusError as e:
                if not _freezing_unsupported(e):
                    raise ExecutorError(f"cannot freeze {job.unit}: {e}") from e
                log.info("systemd cannot freeze scopes here (%s); suspending jobs with SIGSTOP", e.text)
                self._can_freeze = False
        await self.signal(job, signal.SIGSTOP)

    async def resume(self, job: Job) -> None:
        if self._can_freeze is not False:
            try:
                await self._manager("ThawUnit", "s", [job.unit])
                self._can_freeze = True
                return
            except DBusError as e:
                if not _freezing_unsupported(e):
                    raise ExecutorError(f"cannot thaw {job.unit}: {e}") from e
                self._can_freeze = False
        await self.signal(job, signal.SIGCONT)

    async def recover(self, job: Job) -> bool:
        h = job.handle or {}
        if job.spec.container:
            self._container_runs[job.id] = job.restarts
        if "pid" in h and self.gates.watch(job.id, h["pid"], h.get("start"), self._gate_ended, job.restarts):
            return True
        info = self.gates.read_status(job.id, run=job.restarts)
        if info.lost:
            # The gate is gone without a status: is anything of the job still running?
            pids = await self._unit_pids(job.unit)
            if pids:
                log.warning("%s: supervisor gone but %d process(es) remain; stopping them", job.unit, len(pids))
                try:
                    await self._stop_unit(job.unit)
                except DBusError as e:
                    log.error("%s: cannot stop leftover processes: %s", job.unit, e)
        run = self._container_runs.pop(job.id, None)
        if run is not None and self.containers is not None:
            await self.containers.cleanup(job.id, run)
        self.on_exit(job.id, info)
        return False

    async def _unit_pids(self, unit: str) -> list[int]:
        try:
            procs = await self._manager("GetUnitProcesses", "s", [unit])
        except DBusError:
            return []
        return [p[1] for p in procs[0]]

    async def orphans(self, known: set[int]) -> list[int]:
        (units,) = await self._manager("ListUnitsByPatterns", "asas", [["active", "activating", "deactivating"],
                                                                       [f"{UNIT_PREFIX}*{UNIT_SUFFIX}"]])
        found = []
        for u in units:
            m = _UNIT_RE.match(u[0])
            if m and int(m.group(1)) not in known:
                found.append(int(m.group(1)))
        if self.containers is not None:  # called once, after recovery: what a crash left of container runs
            try:
                await self.containers.sweep(known | set(found) | set(self._container_runs))  # a running unit: adopted
            except Exception:
                log.exception("cannot sweep leftover containers")
        return found

    async def adopt_pids(self, job_id: int) -> list[int]:
        return await self._unit_pids(unit_name(job_id))

    async def reap_orphan(self, job_id: int) -> None:
        await self._stop_unit(unit_name(job_id))
