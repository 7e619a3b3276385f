"""schedctl against a real schedd on a private session bus with the plain executor (no systemd, no root).

The bus gets its own configuration without service directories, so a call made before
the daemon owns its name fails fast instead of D-Bus-activating an installed schedd.
Everything runs the code of this checkout (PYTHONPATH), as a user would type it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import privatebus  # noqa: E402
from prereq import requirement  # noqa: E402

_prerequisite = requirement(None if shutil.which("dbus-daemon") else "needs dbus-daemon (scripts/setup installs it)")

SCHEDD_CONFIG = """
[node]
name = "session-test"
[resources]
memory = "2G"
[jobs]
default_memory = "256M"
kill_wait = "2s"
"""


class Session:
    """A private bus, a daemon on it, and schedctl run in a scratch directory as the user would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cwd = root / "work"
        self.cwd.mkdir()
        (root / "schedd.toml").write_text(SCHEDD_CONFIG)
        self.bus, address = privatebus.start(root / "bus")
        self.env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address, "PYTHONPATH": str(REPO),
                    "FROM_CALLER": "exported", "NO_COLOR": "1"}
        self.log = open(root / "daemon.log", "w")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "schedd.daemon", "--user", "--executor", "plain", "--config",
             str(root / "schedd.toml"), "--state-dir", str(root / "state")],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def ctl(self, *args: str | int, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "schedctl.cli", "--user", *map(str, args)], env=self.env,
                           cwd=self.cwd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise AssertionError(f"schedctl {args} -> {r.returncode}\n{r.stderr}\n{self.daemon_log()}")
        return r

    def submit(self, *args: str) -> int:
        return json.loads(self.ctl("--json", "submit", *args).stdout)["id"]

    def show(self, job_id: int) -> dict:
        return json.loads(self.ctl("show", "--json", job_id).stdout)

    def until(self, predicate, what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.daemon.poll() is None, f"schedd exited\n{self.daemon_log()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.daemon_log()}"
            time.sleep(0.05)

    def daemon_log(self) -> str:
        self.log.flush()
        return (self.root / "daemon.log").read_text()[-3000:]

    def stop(self) -> None:
        if self.daemon.poll() is None:
            active = self.ctl("queue", "--json", check=False)  # plain-executor jobs outlive the daemon
            for j in json.loads(active.stdout or "[]"):
                self.ctl("cancel", j["Id"], check=False)
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.bus.terminate()
        self.bus.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def s(tmp_path_factory) -> Session:
    session = Session(tmp_path_factory.mktemp("schedctl-session"))
    try:
        session.until(lambda: session.ctl("status", check=False).returncode == 0, "schedd --user to answer", 20)
        yield session
    finally:
        session.stop()


def test_submit_wait_logs(s: Session):
    r = s.ctl("submit", "--name", "greet", "--env", "GREETING=hello", "--", "sh", "-c",
              'echo "$GREETING $FROM_CALLER from $(pwd)"; echo oops >&2')
    assert r.stdout.startswith("Submitted job ")
    jid = int(r.stdout.split()[-1])
    assert s.ctl("wait", jid).stdout == f"job {jid} COMPLETED (success)\n"
    assert s.ctl("logs", jid).stdout == f"hello exported from {s.cwd}\noops\n"  # stderr goes with stdout by default
    j = s.show(jid)
    assert (j["Name"], j["State"], j["Reason"], j["WorkingDirectory"]) == ("greet", "COMPLETED", "success", str(s.cwd))


def test_separate_output_files_relative_to_the_caller(s: Session):
    jid = s.submit("-o", "out-%j.log", "-e", "err-%j.log", "--", "sh", "-c", "echo to-out; echo to-err >&2")
    s.ctl("wait", jid)
    j = s.show(jid)
    assert (j["StdoutPath"], j["StderrPath"]) == (f"{s.cwd}/out-{jid}.log", f"{s.cwd}/err-{jid}.log")
    assert s.ctl("logs", jid).stdout == "to-out\n"
    assert s.ctl("logs", "--stderr", jid).stdout == "to-err\n"


def test_exit_code_comes_back_through_wait(s: Session):
    jid = s.submit("--", "sh", "-c", "exit 3")
    r = s.ctl("wait", jid, check=False)
    assert r.returncode == 3 and r.stdout == f"job {jid} FAILED (exit-code), status=3\n"
    j = s.show(jid)
    assert (j["State"], j["Reason"], j["ExitCode"]) == ("FAILED", "exit-code", 3)
    ok = s.submit("--", "true")
    assert s.ctl("wait", ok, jid, check=False).returncode == 1  # several: 0 only if all completed


def test_cancel_a_running_job(s: Session):
    jid = s.submit("--name", "sleeper", "--", "sleep", "100")
    s.until(lambda: s.ctl("show", jid, "-p", "State", "--value").stdout == "RUNNING\n", "the job to run")
    listed = {j["Id"]: j for j in json.loads(s.ctl("queue", "--json").stdout)}
    assert listed[jid]["State"] == "RUNNING" and listed[jid]["Command"] == ["sleep", "100"]
    table = s.ctl("queue").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "USER", "STATE", "REASON", "CPUS", "MEM", "PRIO", "TIME", "NODE"]
    assert [line.split()[:4] for line in table[1:-2]] == [[str(jid), "sleeper", listed[jid]["UserName"], "RUNNING"]]
    assert table[-1] == "1 job listed."
    r = s.ctl("cancel", 99999, jid, check=False)  # one refusal does not stop the rest
    assert r.returncode == 1 and "no job 99999" in r.stderr
    r = s.ctl("wait", jid, check=False)
    assert r.returncode == 1 and r.stdout == f"job {jid} CANCELLED (cancelled)\n"
    assert jid not in [j["Id"] for j in json.loads(s.ctl("queue", "--json").stdout)]
    assert jid in [j["Id"] for j in json.loads(s.ctl("queue", "--all", "--json").stdout)]
    lines = s.ctl("show", jid).stdout.splitlines()
    assert {f"Id={jid}", "State=CANCELLED", "Reason=cancelled", "Command=sleep 100"} <= set(lines)
    assert all("=" in line for line in lines)


def test_logs_follow_until_the_end(s: Session):
    jid = s.submit("--", "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done; printf last")
    r = s.ctl("logs", "-f", jid, timeout=20)  # starts while the job may still be pending: no file yet is fine
    assert r.stdout == "line 1\nline 2\nline 3\nlast"
    assert s.show(jid)["State"] == "COMPLETED"


def test_job_file_with_overrides(s: Session):
    (s.cwd / "job.json").write_text(json.dumps({
        "job_id": "123", "command": "sh -c 'echo from-file'", "resources": {"cpu": 1, "memory": "128M"},
        "priority": 1, "output": "file-%j.log"}))
    r = s.ctl("--json", "submit", "--file", "job.json", "--priority", "7")
    assert "job ids are assigned by the daemon" in r.stderr
    jid = json.loads(r.stdout)["id"]
    s.ctl("wait", jid)
    j = s.show(jid)
    assert (j["Priority"], j["Memory"], j["StdoutPath"]) == (7, 128 << 20, f"{s.cwd}/file-{jid}.log")
    assert (s.cwd / f"file-{jid}.log").read_text() == "from-file\n"


def test_hold_release_and_wait_timeout(s: Session):
    jid = s.submit("--hold", "--", "true")
    r = s.ctl("wait", jid, "--timeout", "0.3", check=False)
    assert r.returncode == 124 and "timed out" in r.stderr
    assert [j["Id"] for j in json.loads(s.ctl("queue", "--state", "HELD", "--json").stdout)] == [jid]
    s.ctl("release", jid)
    assert s.ctl("wait", jid).returncode == 0


def test_bad_input_is_refused_with_a_message(s: Session):
    for args, rc, words in ((["submit", "--mem", "lots", "--", "true"], 2, "not a size"),
                            (["submit", "--time", "soon", "--", "true"], 2, "not a duration"),
                            (["submit"], 2, "give the command"),
                            (["queue", "--state", "DONE"], 2, "states are"),
                            (["submit", "--cpus", "4096", "--", "true"], 1, "4096"),
                            (["submit", "--after", "99999", "--", "true"], 1, "99999"),
                            (["show", "99999"], 1, "no job 99999"),
                            (["release", "99999"], 1, "no job 99999")):
        r = s.ctl(*args, check=False)
        assert (r.returncode, r.stdout) == (rc, ""), (args, r)
        assert r.stderr.startswith("schedctl: ") and words in r.stderr, (args, r.stderr)
    assert s.ctl("show", "x", check=False).returncode == 2  # argparse's own usage error
    assert s.daemon.poll() is None


def test_status_nodes_stats(s: Session):
    st = json.loads(s.ctl("status", "--json").stdout)
    assert (st["Executor"], st["NodeName"], st["TotalMemory"]) == ("plain", "session-test", 2 << 30)
    text = s.ctl("status").stdout
    assert text.startswith("● schedd ") and "Executor: plain" in text
    nodes = json.loads(s.ctl("nodes", "--json").stdout)
    assert [(n["Name"], n["State"], n["Local"]) for n in nodes] == [("session-test", "up", True)]
    assert s.ctl("nodes").stdout.splitlines()[1].startswith("session-test*")
    stats = json.loads(s.ctl("stats", "--json").stdout)
    assert stats["Total"]["Jobs"] >= 1 and sum(u["Jobs"] for u in stats["Users"].values()) == stats["Total"]["Jobs"]
