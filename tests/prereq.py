"""Missing prerequisites (root, systemd, a tool, a second CPU): a skip on a laptop, a failure in CI.

A test that cannot run where it is supposed to run proves nothing; in CI (CI=true, as CI
services set it and .ci/run does) a silent skip would hide a broken set-up, so there the
same reason fails the test. Use `require(why)` wherever a test would otherwise skip.
The hooks at the end are the safety net, loaded for every test by the repository's conftest.py:
under CI=true a skip that bypassed require() (pytest.skip, a skipif mark) fails as well.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """CI=true (or 1/yes): the environment where every test must really run."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(why: str) -> NoReturn:
    """The test cannot run here, for `why`: skipped, or failed in CI."""
    if in_ci():
        pytest.fail(f"CI=true but this test cannot run: {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)  # also at import time, for a module that cannot load


def ordinary_uid() -> int:
    """A caller that is not root: ourselves if we are not, else some account with a passwd entry."""
    import pwd

    if os.getuid() != 0:
        return os.getuid()
    for pw in pwd.getpwall():
        if pw.pw_uid not in (0, 65534):
            return pw.pw_uid
    unavailable("no non-root user in /etc/passwd")


def require(why: str | None) -> None:
    """Nothing when why is None (the prerequisite is there); else unavailable(why)."""
    if why is not None:
        unavailable(why)


def requirement(why: str | None):
    """An autouse, module-scoped fixture that requires `why` before any other fixture of the module runs:
    assign it to a module-level name instead of `pytestmark = pytest.mark.skipif(...)`."""

    @pytest.fixture(scope="module", autouse=True)
    def _prerequisite() -> None:
        require(why)

    return _prerequisite


# -- the safety net: loaded for every test by the repository's conftest.py ---------------------------

def _skip_reason(longrepr) -> str:
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a test skipped some other way (pytest.skip, a skipif mark) fails with its reason too;
    an expected failure (xfail) stays what it is."""
    outcome = yield
    rep = outcome.get_result()
    if in_ci() and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"CI=true but this test was skipped: {_skip_reason(rep.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Likewise for a module that skips itself at import time."""
    outcome = yield
    rep = outcome.get_result()
    if in_ci() and rep.skipped:
        rep.outcome = "failed"
        rep.longrepr = f"CI=true but this module was skipped: {_skip_reason(rep.longrepr)}"
