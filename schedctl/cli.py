"""schedctl: parse the command line, make one D-Bus call (or subscribe), render the answer.

No scheduling logic lives in the client (pueue's is the model): the daemon validates and
decides. Each command family is a module of schedctl.commands; this one holds the parser they
join and main. What a person can get wrong on the command line (sizes, durations, ids, a job
file) is checked before the first call, so a typo is reported even when the daemon is down.
Exit status: 0 ok, 1 the daemon refused or a job failed, 2 usage, 124 wait --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from dbus_fast.errors import DBusError

from schedd import __version__
from schedctl.client import Client, Unreachable
from schedctl.commands import jobs, logs, nodes, status, submit, wait
from schedctl.commands.common import global_options
from schedctl.errors import Failure, UsageError

FAMILIES = (submit, jobs, logs, wait, status, nodes)  # in this order in --help


def parser() -> argparse.ArgumentParser:
    common = global_options()
    p = argparse.ArgumentParser(prog="schedctl", parents=[common], description="Control the schedd job scheduler.")
    p.add_argument("--version", action="version", version=f"schedctl {__version__}")
    sub = p.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.add_parsers(sub, common)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """argv -> Namespace with the global options filled in whatever their position."""
    args = parser().parse_args(argv)
    if getattr(args, "owner", None) == "":  # `queue --user` without a name is the global --user
        args.user_bus, args.owner = True, None
    args.user_bus = getattr(args, "user_bus", False)
    args.json = getattr(args, "json", False)
    args.bus_address = getattr(args, "bus_address", None)
    if args.command_name == "submit" and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return args


async def _run(args: argparse.Namespace) -> int:
    async with Client(args.user_bus, args.bus_address) as client:
        return await args.func(client, args)


def _say(message: object) -> None:
    print(f"schedctl: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as e:  # argparse: a usage error (2), or --help/--version (0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        prepare = getattr(args, "prepare", None)
        if prepare is not None:
            prepare(args)
        return asyncio.run(_run(args))
    except UsageError as e:
        _say(e)
        return 2
    except Unreachable as e:
        bus, systemctl = ("session", "systemctl --user") if args.user_bus else ("system", "systemctl")
        _say(f"cannot reach schedd on the {bus} bus ({e}): is it running? try: {systemctl} status schedd")
        return 1
    except DBusError as e:
        _say(e.text)
        return 1
    except Failure as e:
        _say(e)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `schedctl queue | head`: stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
