"""Logs and following: the daemon's transition lines in the journal, logs -f, wait's progress, monitor."""

from __future__ import annotations

import json
import queue
import subprocess
import threading

from conftest import WebNode

ALICE = "schedd-alice"


def journal_entries(node: WebNode) -> list[dict]:
    out = node.run(["journalctl", "-u", "schedd", "-o", "json", "--no-pager", "-n", "2000"]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


_readers: dict[object, queue.Queue] = {}  # keyed by the stream itself (kept alive: an id() could be reused)


def read_line(proc: subprocess.Popen, stream, timeout: float) -> str:
    """One line from a child's pipe, or AssertionError at the deadline (never a blind sleep).
    A thread per pipe reads it, so lines Python has buffered are never missed by a select()."""
    q = _readers.get(stream)
    if q is None:
        q = _readers[stream] = queue.Queue()
        threading.Thread(target=lambda: [q.put(line) for line in iter(stream.readline, "")], daemon=True).start()
    try:
        return q.get(timeout=max(0.0, timeout))
    except queue.Empty:
        raise AssertionError(f"no output within {timeout:.1f}s (exit status {proc.poll()})") from None


def test_journal_has_one_line_per_transition_with_priorities(web_node: WebNode):
    ok = web_node.submit(["true"], user=ALICE)
    bad = web_node.submit(["sh", "-c", "exit 4"], user=ALICE)
    web_node.wait(ok)
    web_node.wait(bad)

    def lines():
        found = {}
        for e in journal_entries(web_node):
            msg = e.get("MESSAGE", "")
            if isinstance(msg, str) and msg.startswith((f"job {ok} ", f"job {bad} ")):
                found.setdefault(msg.split(":")[0], (msg, e["PRIORITY"]))
        want = [f"job {ok} completed (was running)", f"job {bad} failed (was running)"]
        return found if all(w in found for w in want) else None

    found = web_node.wait_for(lines, "the transitions in journalctl -u schedd", timeout=15)
    for jid in (ok, bad):
        for what in ("submitted", "running (was pending)"):
            msg, prio = found[f"job {jid} {what}"]
            assert prio == "6", (msg, prio)
            assert f"user={ALICE} unit=schedd-job-{jid}.scope" in msg
    msg, prio = found[f"job {ok} completed (was running)"]
    assert prio == "6" and "reason=success" in msg and f"unit=schedd-job-{ok}.scope" in msg
    msg, prio = found[f"job {bad} failed (was running)"]
    assert prio == "4" and "reason=exit-code" in msg and f"user={ALICE}" in msg and "exit-code=4" in msg
    assert not any(m.startswith("<") for m, _ in found.values())  # the prefix became the priority
    short = web_node.run(["journalctl", "-u", "schedd", "--no-pager", "-p", "warning", "-n", "500"]).stdout
    assert f"job {bad} failed" in short and f"job {ok} completed" not in short


def test_logs_follow_prints_output_until_the_job_ends(web_node: WebNode):
    jid = web_node.submit(["sh", "-c", "for i in 1 2 3 4; do echo line$i; sleep 0.4; done"], user=ALICE)
    web_node.wait(jid, {"RUNNING"})
    proc = web_node.sb.popen(["schedctl", "logs", "-f", str(jid)], user=ALICE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        first = read_line(proc, proc.stdout, 10)
        assert first.startswith("line"), first
        assert web_node.job(jid)["State"] == "RUNNING"  # it printed while the job was still going
        lines = [first.rstrip("\n")]
        while lines[-1] != "line4":
            lines.append(read_line(proc, proc.stdout, 10).rstrip("\n"))
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    assert lines == [f"line{i}" for i in range(int(first[4]), 5)]
    assert web_node.job(jid)["State"] == "COMPLETED"


def test_wait_shows_progress_and_fails_if_any_failed(web_node: WebNode):
    ids = [web_node.submit(["true"], user=ALICE), web_node.submit(["sleep", "1"], user=ALICE),
           web_node.submit(["sh", "-c", "sleep 0.5; exit 2"], user=ALICE)]
    r = web_node.schedctl("wait", *map(str, ids), user=ALICE, check=False)
    assert r.returncode == 1, r
    ended = r.stdout.splitlines()
    assert sorted(ended) == sorted([f"job {ids[0]} COMPLETED (success)", f"job {ids[1]} COMPLETED (success)",
                                    f"job {ids[2]} FAILED (exit-code), status=2"])
    progress = [line for line in r.stderr.splitlines() if line.startswith("progress: ")]
    assert progress, r.stderr
    assert progress[-1] == "progress: 3/3 ended: 2 COMPLETED, 1 FAILED"
    assert "\r" not in r.stderr and "[#" not in r.stderr  # no bar when not a terminal
    # On a terminal (script(1) gives it one): a bar redrawn in place.
    ids2 = [web_node.submit(["true"], user=ALICE), web_node.submit(["sleep", "0.5"], user=ALICE)]
    tty = web_node.run(["script", "-qec", f"schedctl wait {ids2[0]} {ids2[1]}", "/dev/null"], user=ALICE,
                       check=False)
    assert tty.returncode == 0, tty
    assert f"[{'#' * 30}] 2/2 ended: 2 COMPLETED" in tty.stdout
    assert "\x1b[K" in tty.stdout  # redrawn in place (\r, then erase the line)


def test_monitor_prints_signals_as_they_arrive(web_node: WebNode):
    # Each monitor ends by itself (--count): killing the nsenter in front of it would leave it running inside.
    jid = web_node.submit(["true"], user=ALICE, Hold=("b", True))
    proc = web_node.sb.popen(["schedctl", "monitor", "--json", "--count", "3", str(jid)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(proc, proc.stderr, 15).startswith("Monitoring JobStateChanged")
        other = web_node.submit(["true"], user=ALICE)  # not asked for: not printed
        web_node.manager_call("Release", "t", str(jid))
        seen = [json.loads(read_line(proc, proc.stdout, 20)) for _ in range(3)]
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert [(e["Id"], e["State"], e["Reason"]) for e in seen] == [
        (jid, "PENDING", ""), (jid, "RUNNING", ""), (jid, "COMPLETED", "success")], seen
    assert all(e["Job"] == f"/org/schedd/Schedd1/job/{jid}" for e in seen)
    web_node.wait(other)

    text = web_node.sb.popen(["schedctl", "monitor", "--count", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        read_line(text, text.stderr, 15)
        held = web_node.submit(["true"], user=ALICE, Hold=("b", True))
        out = read_line(text, text.stdout, 15)
        text.wait(15)
    finally:
        if text.poll() is None:
            text.kill()
            text.wait()
    assert text.returncode == 0
    assert out.strip().endswith(f"job {held} HELD (held)"), out
    web_node.manager_call("Cancel", "t", str(held))
