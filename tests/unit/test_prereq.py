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


SKIPPING = '''
import pytest

def test_skips_itself():
    pytest.skip("plain skip")

@pytest.mark.skipif(True, reason="a mark")
def test_skipped_by_a_mark():
    pass

@pytest.mark.xfail(reason="known bug")
def test_expected_to_fail():
    assert 0

def test_runs():
    pass
'''


@pytest.mark.parametrize("ci", ["true", None])
def test_the_safety_net_fails_any_other_skip_in_ci_but_leaves_xfail(tmp_path: Path, ci) -> None:
    """The hooks the repository's conftest.py loads: a skip that bypassed require() still fails in CI."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO / "tests")
    if ci is not None:
        env["CI"] = ci
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "prereq", "-q", "-rA",
                        "test_skipping.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    last = r.stdout.strip().splitlines()[-1]
    if ci:
        assert r.returncode == 1 and "CI=true but this test was skipped: Skipped: plain skip" in r.stdout
        assert "CI=true but this test was skipped: Skipped: a mark" in r.stdout
        assert "1 passed" in last and "1 xfailed" in last and "skipped" not in last, r.stdout
    else:
        assert r.returncode == 0 and "2 skipped" in last and "1 xfailed" in last, r.stdout


def test_the_repository_conftest_loads_the_safety_net() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("repo_conftest", REPO / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import prereq

    assert mod.pytest_runtest_makereport is prereq.pytest_runtest_makereport
    assert mod.pytest_make_collect_report is prereq.pytest_make_collect_report
