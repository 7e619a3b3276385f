"""How the systemd executor suspends: FreezeUnit where systemd can freeze a scope (cgroup v2),
else SIGSTOP/SIGCONT to every process with KillUnit, learnt once (against a fake manager).

The real FreezeUnit path runs in tests/integration/test_freeze.py (a unified-mode sandbox);
the SIGSTOP one in test_workload.py on this hybrid host."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from dbus_fast.errors import DBusError

from schedd.executor import ExecutorError
from schedd.executor.systemd import SystemdExecutor
from schedd.core.model import Job, JobSpec

# systemd 252's answer on a v1/hybrid host (unit.c: "Unit does not support freezing").
NO_FREEZER = DBusError("org.freedesktop.DBus.Error.NotSupported", "Unit schedd-job-7.scope does not support freezing")


class FakeManager:
    def __init__(self, freeze_error: DBusError | None = None) -> None:
        self.freeze_error = freeze_error
        self.calls: list[tuple] = []

    async def __call__(self, member: str, sig: str = "", body: list | None = None) -> list:
        self.calls.append((member, *(body or [])))
        if member in ("FreezeUnit", "ThawUnit") and self.freeze_error is not None:
            raise self.freeze_error
        return []


def executor(tmp_path: Path, manager: FakeManager) -> SystemdExecutor:
    ex = SystemdExecutor(lambda *_: None, address="unix:path=/nonexistent", status_dir=tmp_path, kill_wait_usec=1)
    ex._manager = manager  # type: ignore[method-assign]
    return ex


JOB = Job(id=7, spec=JobSpec(command=["sleep", "60"], name="sleep", cpus=1, memory=1 << 30, uid=1000, gid=1000))


async def test_where_systemd_can_freeze_suspend_is_freezeunit_and_resume_thawunit(tmp_path: Path) -> None:
    m = FakeManager()
    ex = executor(tmp_path, m)
    await ex.suspend(JOB)
    await ex.resume(JOB)
    assert m.calls == [("FreezeUnit", JOB.unit), ("ThawUnit", JOB.unit)]


async def test_where_it_cannot_the_job_gets_sigstop_and_sigcont_and_freezing_is_not_tried_again(tmp_path) -> None:
    m = FakeManager(NO_FREEZER)
    ex = executor(tmp_path, m)
    await ex.suspend(JOB)
    await ex.resume(JOB)
    await ex.suspend(JOB)
    assert m.calls == [("FreezeUnit", JOB.unit), ("KillUnit", JOB.unit, "all", signal.SIGSTOP),
                       ("KillUnit", JOB.unit, "all", signal.SIGCONT), ("KillUnit", JOB.unit, "all", signal.SIGSTOP)]


async def test_an_old_systemd_without_freezeunit_falls_back_too(tmp_path: Path) -> None:
    m = FakeManager(DBusError("org.freedesktop.DBus.Error.UnknownMethod", "Unknown method FreezeUnit"))
    await executor(tmp_path, m).suspend(JOB)
    assert m.calls[-1] == ("KillUnit", JOB.unit, "all", signal.SIGSTOP)


async def test_any_other_freeze_error_is_reported_not_papered_over_with_sigstop(tmp_path: Path) -> None:
    m = FakeManager(DBusError("org.freedesktop.systemd1.NoSuchUnit", f"Unit {JOB.unit} not loaded."))
    with pytest.raises(ExecutorError, match="cannot freeze schedd-job-7.scope"):
        await executor(tmp_path, m).suspend(JOB)
    assert [c[0] for c in m.calls] == ["FreezeUnit"]
