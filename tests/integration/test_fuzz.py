"""Hostile input: 10,000 random Submit specs and a catalogue of known-hostile ones, from an ordinary
user over the real bus (fuzz_submit.py); judged by outcomes, not only by the daemon staying up."""

from __future__ import annotations

import json

from conftest import Node, client

N = 10_000
WATCHED = ("/etc/passwd", "/etc/shadow", "/etc/group")


def digests(node: Node) -> str:
    return node.run(["sha256sum", *WATCHED]).stdout


def test_hostile_specs_are_refused_or_end_honestly_and_never_hurt_the_daemon(node: Node, users):
    before = node.daemon_pid_and_restarts()
    files = digests(node)
    since = node.run(["date", "+@%s"]).stdout.strip()
    r = node.run([*client("fuzz_submit.py"), str(N)], user="schedd-alice", timeout=900)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    violations, examples, cases = summary.pop("violations"), summary.pop("examples"), summary.pop("catalogue")
    print(summary)
    assert violations == {}, json.dumps({"violations": examples, "catalogue": cases}, indent=1)
    assert summary["calls"] >= N
    assert summary.get("accepted", 0) > 100 and summary.get("InvalidArgument", 0) > 1000
    assert summary.get("AccessDenied", 0) > 0 and summary.get("Unsatisfiable", 0) > 0
    assert summary.get("catalogue ran", 0) > 20 and summary.get("catalogue refused", 0) > 20
    # Never a crash-loop: the same process, never restarted, and no traceback in its journal.
    assert node.daemon_pid_and_restarts() == before
    assert node.unit_property("schedd.service", "NRestarts") == "0"
    log = node.run(["journalctl", "--no-pager", "-u", "schedd", "--since", since, "-o", "cat"]).stdout
    assert "Traceback" not in log, log[-3000:]
    # Nothing the user could not write was written.
    assert digests(node) == files
    assert node.run(["sh", "-c", "ls /etc | grep -c '^schedd-fuzz-' || true"]).stdout.strip() == "0"
