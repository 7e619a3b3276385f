"""Node maintenance: drain (take no new jobs, let running ones finish), resume, and remove a node
that is gone for good. Root's (or polkit's org.schedd.Schedd1.manage-nodes); the node may be this one
or any peer (the daemon asks a peer through the peer API)."""

from __future__ import annotations

import argparse
from typing import Any

from schedctl.client import Client
from schedctl.commands.common import emit


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    dr = sub.add_parser("drain", parents=[common], help="a node takes no new jobs; its running jobs finish")
    _drain_args(dr)
    un = sub.add_parser("undrain", parents=[common], help="a drained node takes jobs again (node resume)")
    un.add_argument("node", metavar="NODE")
    un.set_defaults(func=cmd_resume)

    node = sub.add_parser("node", parents=[common], help="drain, resume or remove a node of the cluster")
    verbs = node.add_subparsers(dest="node_verb", required=True, metavar="VERB")
    _drain_args(verbs.add_parser("drain", parents=[common], help="take no new jobs; running ones finish"))
    rs = verbs.add_parser("resume", parents=[common], help="take jobs again after a drain")
    rs.add_argument("node", metavar="NODE")
    rs.set_defaults(func=cmd_resume)
    rm = verbs.add_parser("remove", parents=[common], help="forget a node that is gone for good (it must be down)")
    rm.add_argument("node", metavar="NODE")
    rm.set_defaults(func=cmd_remove)


def _drain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", metavar="NODE", help="the node's name (this node's or a peer's)")
    p.add_argument("--reason", default="", metavar="TEXT", help="why, shown by `schedctl nodes`")
    p.set_defaults(func=cmd_drain)


def _done(args: argparse.Namespace, what: str) -> None:
    emit(args, {"Node": args.node, "Done": what}, f"node {args.node}: {what}")


async def cmd_drain(c: Client, args: argparse.Namespace) -> int:
    await c.call("DrainNode", "ss", [args.node, args.reason])
    _done(args, "draining (no new jobs; running ones finish; see schedctl nodes)")
    return 0


async def cmd_resume(c: Client, args: argparse.Namespace) -> int:
    await c.call("ResumeNode", "s", [args.node])
    _done(args, "resumed (takes jobs again)")
    return 0


async def cmd_remove(c: Client, args: argparse.Namespace) -> int:
    await c.call("RemoveNode", "s", [args.node])
    _done(args, "removed from the cluster")
    return 0
