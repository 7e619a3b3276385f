"""Suspend through systemd's FreezeUnit, where cgroup v2 lets systemd freeze a scope.

A hybrid (v1 + v2) host's systemd refuses FreezeUnit, so there schedd falls back on
SIGSTOP (test_workload.py checks that path). This node's systemd is booted in unified
mode (systemd.unified_cgroup_hierarchy=1 on its own command line: in a container systemd
reads the kernel options from its argv), so the cgroup v2 freezer is there even on a
hybrid host, and a suspended job must be frozen by the kernel, not stopped by a signal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIG, Node, extra_node

from prereq import require
from test_workload import proc_states, scope_pids, wait_marker

ALICE = "schedd-alice"


def _cgroup2_why_not() -> str | None:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists() or Path("/sys/fs/cgroup/unified/cgroup.controllers").exists():
        return None
    return "needs a cgroup v2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified) for the freezer"


@pytest.fixture(scope="module")
def unified_node(users):
    require(_cgroup2_why_not())
    with extra_node("freeze", CONFIG, systemd_args=("systemd.unified_cgroup_hierarchy=1",)) as n:
        assert n.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"]).stdout.strip() == "cgroup2fs"
        yield n


def frozen(node: Node, unit: str) -> str:
    """The kernel's word on the scope's cgroup: the 'frozen' line of cgroup.events."""
    events = node.run(["cat", f"/sys/fs/cgroup/schedd.slice/{unit}/cgroup.events"]).stdout
    return dict(line.split() for line in events.splitlines())["frozen"]


def test_suspend_freezes_the_jobs_cgroup_and_resume_thaws_it(unified_node: Node):
    node = unified_node
    go = "/run/schedd-freeze-go"
    node.run(["rm", "-f", go])
    jid = node.submit(wait_marker(go), user=ALICE)
    unit = node.wait(jid, {"RUNNING"})["Unit"]
    pids = node.wait_for(lambda: (p := scope_pids(node, unit)) and len(p) >= 2 and p, "the gate and the job's sh")
    assert frozen(node, unit) == "0"

    node.manager_call("Suspend", "t", str(jid), user=ALICE)
    assert node.job(jid)["State"] == "SUSPENDED"
    assert node.unit_property(unit, "FreezerState") == "frozen"
    assert node.wait_for(lambda: frozen(node, unit) == "1", "the kernel to report the cgroup frozen")
    assert "T" not in proc_states(node, pids)  # frozen by the cgroup, not stopped by SIGSTOP
    assert "SIGSTOP" not in node.sb.journal("schedd", 100)

    node.manager_call("Resume", "t", str(jid), user=ALICE)
    assert node.job(jid)["State"] == "RUNNING"
    assert node.unit_property(unit, "FreezerState") == "running"
    assert frozen(node, unit) == "0"
    node.run(["touch", go])
    j = node.wait(jid)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("COMPLETED", "success", 0)
    assert j["SuspendedUSec"] > 0
