"""The manuals are generated from the code (packaging/manpages.py): every schedctl command and
option, every schedd option and every schedd.toml key appears in its page, so they cannot drift."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prereq import require
from schedctl import cli

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("manpages", REPO / "packaging/manpages.py")
manpages = importlib.util.module_from_spec(spec)
sys.modules["manpages"] = manpages  # its dataclasses look their module up
spec.loader.exec_module(manpages)


def plain(roff: str) -> str:
    """The page's words without roff escapes, as `man` shows them."""
    text = re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")
    return text


def test_schedctl_page_lists_every_command_and_option():
    page = plain(manpages.schedctl_page())
    commands = manpages.subcommands(cli.parser())
    assert {"submit", "queue", "show", "cancel", "wait", "logs", "status"} <= {c[0] for c in commands}
    for name, aliases, _help, sp in commands:
        assert re.search(rf"^\.SS {re.escape(name)}\b", page, re.M), f"command {name} missing"
        for alias in aliases:
            assert alias in page
        for a in sp._actions:
            if a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
                continue
            for opt in a.option_strings:
                assert opt in page, f"schedctl {name} {opt} is not in schedctl(1)"
    for section in ("EXIT STATUS", "EXAMPLES", "FILES", "GLOBAL OPTIONS"):
        assert f".SH {section}" in page
    for code in ("0", "1", "2", "124"):
        assert re.search(rf"^\.TP\n{code}$", page, re.M), f"exit status {code}"


def test_an_option_added_to_the_parser_shows_up(monkeypatch):
    """The page follows the parser: a new option appears without anyone editing the page."""
    real = cli.parser

    def more():
        p = real()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                a.choices["show"].add_argument("--brand-new-option", help="a drift canary")
        return p

    monkeypatch.setattr(cli, "parser", more)
    assert "--brand-new-option" in plain(manpages.schedctl_page())


def test_schedd_page_lists_the_daemon_options_signals_and_files():
    page = plain(manpages.schedd_page())
    for opt in ("--system", "--user", "--config", "--state-dir", "--executor", "--replace", "--verbose"):
        assert opt in page
    for section in ("SIGNALS", "RECOVERY", "FILES"):
        assert f".SH {section}" in page
    assert "/var/lib/schedd" in page and "/etc/schedd/schedd.toml" in page


def test_toml_page_has_every_key_config_accepts_with_its_default():
    page = plain(manpages.toml_page())
    keys = manpages.config_keys()
    assert "keep_finished" in keys["jobs"] and "listen" in keys["http"]
    for section, names in keys.items():
        assert (f".SH [{section}]" if section != "peers" else ".SH [[peers]]") in page
        for k in names:
            assert re.search(rf"^\.TP\n{re.escape(k)} = \S", page, re.M), f"[{section}] {k}"
    assert 'kill_wait = "10s"' in page and 'policy = "backfill"' in page


def test_an_undocumented_key_fails_the_build(monkeypatch):
    monkeypatch.setattr(manpages, "config_keys", lambda: {"jobs": ["kill_wait", "not_in_the_example"]})
    with pytest.raises(SystemExit, match="not_in_the_example"):
        manpages.toml_page()


def test_pages_render_without_warnings(tmp_path):
    require(None if shutil.which("man") else "needs man (man-db, in scripts/setup's PKGS)")
    assert manpages.main([str(tmp_path)]) == 0
    for name in ("schedctl.1", "schedd.8", "schedd.toml.5"):
        r = subprocess.run(["man", "--warnings", "-l", "-E", "UTF-8", str(tmp_path / name)], capture_output=True,
                           text=True, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
        assert r.returncode == 0 and "NAME" in r.stdout, r.stderr
        assert r.stderr.strip() == "", f"{name}: {r.stderr}"
