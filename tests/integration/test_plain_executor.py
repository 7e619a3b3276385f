"""The plain executor, where no systemd is reachable: a private session bus, no root needed."""

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import privatebus  # noqa: E402
from prereq import requirement  # noqa: E402

SCHEDD = shutil.which("schedd") or "/usr/local/bin/schedd"
SCHEDCTL = shutil.which("schedctl") or "/usr/local/bin/schedctl"
_prerequisite = requirement(None if shutil.which("dbus-daemon") and os.path.exists(SCHEDD)
                            else "needs dbus-daemon and an installed schedd (scripts/setup)")


@pytest.fixture
def plain(tmp_path: Path):
    bus, address = privatebus.start(tmp_path / "bus")
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address}
    state = tmp_path / "state"
    daemon = subprocess.Popen([SCHEDD, "--user", "--executor", "plain", "--state-dir", str(state)],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "daemon.log", "w"))

    def ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([SCHEDCTL, "--user", *args], env=env, capture_output=True, text=True, timeout=60,
                           cwd=tmp_path)
        if check and r.returncode:
            raise AssertionError(f"schedctl {args}: {r.returncode} {r.stderr}")
        return r

    deadline = time.monotonic() + 20
    while ctl("status", check=False).returncode != 0:
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
        assert time.monotonic() < deadline, "schedd --user never answered"
        time.sleep(0.05)
    yield ctl
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(10)
    bus.terminate()
    bus.wait(10)


def test_plain_executor_runs_jobs(plain):
    st = json.loads(plain("status", "--json").stdout)
    assert st["Executor"] == "plain"
    jid = json.loads(plain("--json", "submit", "--cpus", "1", "--", "python3", "-c",
                           "import os; print(sorted(os.sched_getaffinity(0)))").stdout)["id"]
    assert plain("wait", str(jid)).returncode == 0
    j = json.loads(plain("show", "--json", str(jid)).stdout)
    assert plain("logs", str(jid)).stdout.strip() == str(j["AssignedCPUs"])
    three = json.loads(plain("--json", "submit", "--", "sh", "-c", "exit 3").stdout)["id"]
    assert plain("wait", str(three), check=False).returncode == 3


def test_plain_executor_memory_cap_and_cancel(plain):
    hog = json.loads(plain("--json", "submit", "--mem", "64M", "--", "python3", "-c",
                           "x = bytearray(400 << 20)").stdout)["id"]
    assert plain("wait", str(hog), check=False).returncode != 0  # RLIMIT_AS: MemoryError, exit 1
    sleeper = json.loads(plain("--json", "submit", "--", "sh", "-c", "sleep 1000 & wait").stdout)["id"]
    deadline = time.monotonic() + 10
    while json.loads(plain("show", "--json", str(sleeper)).stdout)["State"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    plain("cancel", str(sleeper))
    j = json.loads(plain("show", "--json", str(sleeper)).stdout)
    assert (j["State"], j["Reason"]) == ("CANCELLED", "cancelled")
