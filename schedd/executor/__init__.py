"""Executors: how a job's processes are started, watched, stopped and re-adopted."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from schedd.executor.base import Executor
from schedd.executor.exits import ExecutorError, ExitCallback, ExitInfo, StartWithdrawn

log = logging.getLogger(__name__)

__all__ = ["Executor", "ExecutorError", "ExitInfo", "StartWithdrawn", "make_executor"]


async def make_executor(
    kind: str, on_exit: ExitCallback, *, address: str, status_dir: Path, kill_wait_usec: int,
    gpu_devices: Callable[[list[int]], list[str]] | None = None, containers=None,
) -> Executor:
    """'systemd', 'plain', or 'auto': systemd where its manager answers on the bus, else plain.

    containers: the [containers] config; Container jobs run only under systemd (in the job's scope)."""
    if kind in ("systemd", "auto"):
        from schedd.executor.container import ContainerRuntime
        from schedd.executor.systemd import SystemdExecutor

        runtime = ContainerRuntime.probe(containers, status_dir.parent / "containers") if containers else None
        ex = SystemdExecutor(on_exit, address=address, status_dir=status_dir, kill_wait_usec=kill_wait_usec,
                             gpu_devices=gpu_devices, containers=runtime)
        try:
            await ex.open()
            return ex
        except ExecutorError as e:
            if kind == "systemd":
                raise
            log.warning("%s; using the plain executor (no cgroup limits, no scopes)", e)
    from schedd.executor.plain import PlainExecutor

    ex = PlainExecutor(on_exit, status_dir=status_dir, kill_wait_usec=kill_wait_usec)
    await ex.open()
    return ex
