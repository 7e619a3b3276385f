"""Repository-wide pytest hooks: under CI=true no test is skipped silently (tests/prereq.py)."""

from prereq import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401
