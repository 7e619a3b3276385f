"""ReadOutput of paths a user chose that are not output files: refused at once, opening nothing.

As an unprivileged user over the system bus: a pty of the user's own (opened by a root daemon
without O_NOCTTY it becomes the daemon's controlling terminal, and hanging it up would SIGHUP the
daemon), a FIFO, a symlink to /etc/shadow. Each is AccessDenied at once, the daemon never gets a
terminal, and it keeps answering.
"""

from __future__ import annotations

import json
import subprocess

from conftest import USERS, Node, client

ALICE, BOB = USERS


def daemon_tty_nr(node: Node, pid: str) -> int:
    stat = node.run(["cat", f"/proc/{pid}/stat"]).stdout
    return int(stat.rsplit(")", 1)[1].split()[4])


def test_read_output_of_a_tty_fifo_or_symlink_is_refused_at_once(node: Node):
    pid, restarts = node.daemon_pid_and_restarts()
    assert daemon_tty_nr(node, pid) == 0
    p = node.sb.popen(client("hostile_output.py"), user=ALICE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        report = json.loads(line)
        # While the user's pty is still open: the daemon has not taken it as its terminal.
        assert daemon_tty_nr(node, pid) == 0
        for what, r in report["results"].items():
            assert "submit_error" not in r, (what, r)
            assert r["rc"] != 0 and "org.schedd.Schedd1.Error.AccessDenied" in r["stderr"], (what, r)
            assert "not a regular file" in r["stderr"], (what, r)
            # The item is about stalls: generous, yet far below a stuck open (never returns) or D-Bus's 25 s.
            assert r["seconds"] < 5, (what, r)
        # Meanwhile the daemon answers others.
        assert node.manager_call("ListJobs", "a{sv}", "0", user=BOB).returncode == 0
    finally:
        out, err = p.communicate(timeout=60)  # closes stdin: the helper hangs its pty up
    assert "closed" in out, err
    # The hang-up reached no daemon: same process, no restart, still answering.
    jid = node.submit(["true"], user=BOB)
    assert node.wait(jid)["State"] == "COMPLETED"
    assert node.daemon_pid_and_restarts() == (pid, restarts)
