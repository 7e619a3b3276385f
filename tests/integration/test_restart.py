"""Exit statuses survive the daemon: the gate records them inside the job's scope."""

from __future__ import annotations

from conftest import Node


def test_running_job_is_readopted_across_restart(node: Node):
    marker = "/run/schedd-test-restart"
    node.run(["rm", "-f", marker])
    jid = node.submit(["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done; exit 7"])
    node.wait(jid, {"RUNNING"})
    pid_before = node.unit_property("schedd.service", "MainPID")
    node.run(["systemctl", "restart", "schedd"])
    assert node.unit_property("schedd.service", "MainPID") != pid_before
    j = node.job(jid)
    assert j["State"] == "RUNNING"  # re-adopted, not killed and not started again
    assert node.unit_property(f"schedd-job-{jid}.scope", "ActiveState") == "active"
    node.run(["touch", marker])
    j = node.wait(jid)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "exit-code", 7)


def test_job_that_ends_while_the_daemon_is_down_keeps_its_exit_code(node: Node):
    marker = "/run/schedd-test-down"
    node.run(["rm", "-f", marker])
    jid = node.submit(["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.02; done; exit 9"])
    node.wait(jid, {"RUNNING"})
    node.run(["systemctl", "stop", "schedd"])
    node.run(["touch", marker])
    unit = f"schedd-job-{jid}.scope"
    node.wait_for(lambda: node.unit_property(unit, "ActiveState") in ("inactive", ""), "the job to end")
    node.run(["systemctl", "start", "schedd"])
    j = node.wait(jid)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "exit-code", 9)
    free = node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager",
                       "AvailableCPUs").stdout.split()[1]
    total = node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager",
                        "TotalCPUs").stdout.split()[1]
    assert free == total  # its CPUs were handed back
