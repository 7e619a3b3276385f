"""Missing prerequisites (root, systemd, a tool, a second CPU): a skip on a laptop, a failure in CI.

A test that cannot run where it is supposed to run proves nothing; in CI (CI=true, as CI
services set it and .ci/run does) a silent skip would hide a broken set-up, so there the
same reason fails the test. Use `require(why)` wherever a test would otherwise skip.
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
