"""What the daemon reports about itself and its cluster: status (its resources), nodes (it and
its peers) and stats (accounting per user)."""

from __future__ import annotations

import argparse
from typing import Any

from dbus_fast import Variant
from dbus_fast.errors import DBusError

from schedd.protocol import parse_duration
from schedctl import render
from schedctl.client import Client, plain
from schedctl.commands.common import emit, user_id
from schedctl.errors import UsageError


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    st = sub.add_parser("stats", parents=[common], help="job counts, success rate, wait and CPU-hours per user")
    st.add_argument("--since", type=lambda t: _duration_arg("--since", t), metavar="DURATION",
                    help="only jobs submitted in this last stretch, e.g. 1h, 7d")
    st.add_argument("-u", "--for", dest="owner", type=_uid_arg, metavar="NAME|UID", help="only this user's jobs")
    st.set_defaults(func=cmd_stats)

    for name, func, what in (("nodes", cmd_nodes, "this node and its peers"),
                             ("status", cmd_status, "the daemon and its resources")):
        sub.add_parser(name, parents=[common], help=what).set_defaults(func=func)


def _duration_arg(option: str, text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{option}: {e}") from None


def _uid_arg(text: str) -> int:
    try:
        return user_id(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


async def cmd_stats(c: Client, args: argparse.Namespace) -> int:
    """Accounting from the daemon (GetStats); an older daemon without it: computed here from ListJobs."""
    flt: dict[str, Variant] = {}
    if args.since is not None:
        flt["Since"] = Variant("t", max(0, render.now_usec() - args.since))
    if args.owner is not None:
        flt["User"] = Variant("u", args.owner)
    try:
        (answer,) = await c.call("GetStats", "a{sv}", [flt])
        figures = plain(answer)
    except DBusError as e:
        if e.type != "org.freedesktop.DBus.Error.UnknownMethod":
            raise
        jobs = await c.list_jobs(uid=args.owner)
        figures = render.stats([j for j in jobs if args.since is None or j["SubmitTime"] >= flt["Since"].value])
    emit(args, figures, None if args.json else render.stats_text(figures))
    return 0


async def cmd_nodes(c: Client, args: argparse.Namespace) -> int:
    nodes = await c.list_nodes()
    emit(args, nodes, None if args.json else render.nodes(nodes, render.is_tty()))
    return 0


async def cmd_status(c: Client, args: argparse.Namespace) -> int:
    props = await c.properties()
    emit(args, props, None if args.json else render.status(props, render.is_tty()))
    return 0
