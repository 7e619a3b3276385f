"""A missing prerequisite skips a test on a laptop and fails it in CI (tests/prereq.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prereq import require, unavailable

REPO = Path(__file__).resolve().parents[2]
SANDBOX_TOOLS = ("unshare", "nsenter", "gdbus", "setpriv", "systemctl", "journalctl")  # busctl left out


def test_require_nothing_missing_is_a_no_op(monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    require(None)


@pytest.mark.parametrize("ci", ["", "false", None])
def test_outside_ci_a_missing_prerequisite_skips(monkeypatch, ci) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="^needs frobnicate$"):
        require("needs frobnicate")


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_in_ci_a_missing_prerequisite_fails_with_its_reason(monkeypatch, ci) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="cannot run: needs frobnicate"):
        unavailable("needs frobnicate")


def _run_without_busctl(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    """One sandbox test of the real suite, with a PATH that has every sandbox tool but busctl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in SANDBOX_TOOLS:
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(bin_dir)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsE", "-q",
         "tests/integration/test_daemon.py::test_daemon_is_a_notify_service_on_the_system_bus"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _expected_reason() -> str:
    return "needs root" if os.geteuid() != 0 else "needs busctl"


def test_a_sandbox_test_without_busctl_fails_in_ci(tmp_path: Path) -> None:
    r = _run_without_busctl(tmp_path, "true")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 error" in r.stdout and f"CI=true but this test cannot run: {_expected_reason()}" in r.stdout, r.stdout


def test_a_sandbox_test_without_busctl_skips_outside_ci(tmp_path: Path) -> None:
    r = _run_without_busctl(tmp_path, None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 skipped" in r.stdout and _expected_reason() in r.stdout, r.stdout
