"""The launcher's dependency wait (job._wait_dependencies) against a scripted schedd: what it waits
for, when it lets the script run, and when it says a dependency can never hold."""

from __future__ import annotations

import asyncio

from dbus_fast.errors import DBusError

import schedctl.client
from schedd_slurm import job
from schedd_slurm.common import NOT_FOUND


class Schedd:
    """Jobs whose states advance one step per poll (the last step stays); ids not listed are gone."""

    def __init__(self, timelines: dict[int, list[dict]]) -> None:
        self.timelines = timelines
        self.polls: dict[int, int] = {}

    def now(self, jid: int) -> dict:
        steps = self.timelines[jid]
        n = self.polls.get(jid, 0)
        return {"Id": jid, "StartTime": 0, "Name": "x", "User": 1000, **steps[min(n, len(steps) - 1)]}

    async def get_job(self, jid: int) -> dict:
        if jid not in self.timelines:
            raise DBusError(NOT_FOUND, f"no job {jid}")
        row = self.now(jid)
        self.polls[jid] = self.polls.get(jid, 0) + 1
        return row

    async def job_pages(self, states, uid):
        rows = []
        for jid in sorted(self.timelines):
            row = self.now(jid)
            self.polls[jid] = self.polls.get(jid, 0) + 1
            if row["State"] in states and row["User"] == uid:
                rows.append(row)
        if rows:
            yield rows

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


def wait(monkeypatch, schedd: Schedd, waits: dict, job_id: int = 50, name: str = "x") -> str | None:
    monkeypatch.setattr(schedctl.client, "Client", lambda user_bus: schedd)
    monkeypatch.setattr(job, "POLL_S", 0)
    return asyncio.run(asyncio.wait_for(job._wait_dependencies(waits, job_id, name, 1000, False), 5))


R, C, F, X = ({"State": "RUNNING", "StartTime": 1}, {"State": "COMPLETED", "StartTime": 1},
              {"State": "FAILED", "StartTime": 1}, {"State": "CANCELLED"})


def test_afternotok_holds_after_a_failure_or_a_cancel(monkeypatch):
    s = Schedd({1: [R, R, F], 2: [{"State": "PENDING"}, X]})
    assert wait(monkeypatch, s, {"afternotok": [[1], [2]]}) is None
    assert s.polls[1] == 3  # it waited until the failure


def test_afternotok_on_a_success_is_never_satisfied(monkeypatch):
    s = Schedd({1: [R, C], 2: [R]})  # 2 still runs: 1's success alone decides
    assert wait(monkeypatch, s, {"afternotok": [[2], [1]]}) == "afternotok:1: it COMPLETED"


def test_afternotok_on_an_array_needs_one_failed_task(monkeypatch):
    assert wait(monkeypatch, Schedd({1: [C], 2: [R, F]}), {"afternotok": [[1, 2]]}) is None
    assert "every task of the array COMPLETED" in wait(monkeypatch, Schedd({1: [C], 2: [R, C]}),
                                                        {"afternotok": [[1, 2]]})


def test_a_purged_dependency_is_lifted(monkeypatch):
    assert wait(monkeypatch, Schedd({}), {"afternotok": [[7]], "afterany": [8], "after": [9]}) is None


def test_singleton_waits_for_the_earlier_job_of_its_name_only(monkeypatch):
    s = Schedd({10: [R, R, R, C], 11: [{"Name": "other", **R}], 60: [{"State": "PENDING"}]})
    assert wait(monkeypatch, s, {"singleton": True}, job_id=50) is None
    assert s.polls[10] == 4  # until the earlier one of the name ended; 11 (another name) and 60 (later) never counted


def test_kinds_combine(monkeypatch):
    s = Schedd({1: [R, C], 2: [{"State": "PENDING"}, R], 3: [R, R, F]})
    assert wait(monkeypatch, s, {"afterany": [1], "after": [2], "afternotok": [[3]]}) is None
    assert s.polls[3] == 3


def test_never_satisfied_cancels_the_job_and_never_exits_0(monkeypatch, capsys):
    calls = []

    class Cancelling(Schedd):
        async def call(self, member, sig, args):
            calls.append((member, args))
            raise DBusError("org.schedd.Schedd1.Error.Denied", "nope")

    monkeypatch.setattr(schedctl.client, "Client", lambda user_bus: Cancelling({}))
    assert job.never_satisfied(5, "afternotok:1: it COMPLETED", False) == 1
    assert calls == [("Cancel", [5])]
    err = capsys.readouterr().err
    assert "dependency never satisfied (afternotok:1: it COMPLETED)" in err and "could not cancel" in err


def test_a_restarting_schedd_is_waited_for(monkeypatch):
    from schedctl.client import Unreachable

    s = Schedd({1: [R, F]})
    tries = []

    def client(user_bus):
        tries.append(1)
        if len(tries) == 1:
            class Down(Schedd):
                async def get_job(self, jid):
                    raise Unreachable("schedd restarting")
            return Down({})
        return s

    monkeypatch.setattr(schedctl.client, "Client", client)
    monkeypatch.setattr(job, "POLL_S", 0)
    monkeypatch.setattr(job, "RETRY_S", 0)
    assert asyncio.run(asyncio.wait_for(job._wait_dependencies({"afternotok": [[1]]}, 50, "x", 1000, False), 5)) is None
    assert len(tries) == 2
