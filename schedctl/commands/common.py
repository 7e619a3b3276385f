"""What every command family shares: the global options, argument types, and --json or text."""

from __future__ import annotations

import argparse
import json
import pwd
from typing import Any

from schedctl.errors import UsageError

RECHECK_S = 5.0  # wait and logs -f also ask GetJob this often, so a signal lost (daemon restart) cannot hang them


def global_options(bus_user: bool = True) -> argparse.ArgumentParser:
    """Options accepted before and after the command. SUPPRESS keeps a subcommand's parser from
    resetting what was given before the command."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("global options")
    if bus_user:
        g.add_argument("--user", dest="user_bus", action="store_true", default=argparse.SUPPRESS,
                       help="talk to your own schedd on the session bus")
    g.add_argument("--system", dest="user_bus", action="store_false", default=argparse.SUPPRESS,
                   help="talk to the system-wide schedd (the default)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output (D-Bus property names; bytes; µs)")
    g.add_argument("--bus-address", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def job_id(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 0 < n < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id")
    return n


def user_id(text: str) -> int:
    """A user name or uid -> the uid (the daemon filters by uid)."""
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise UsageError(f"--user {text!r}: no such user") from None


def emit(args: argparse.Namespace, data: Any, text: str | None) -> None:
    """--json: the data (D-Bus property names, bytes, µs); otherwise the human text."""
    if args.json:
        print(json.dumps(data))
    elif text is not None:
        print(text)
