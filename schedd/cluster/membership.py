"""Who is in the cluster beyond [[peers]]: joins, what members tell each other, removals, and their copy on disk.

A node with `[federation] seeds` announces itself (POST /join, with the cluster token) and learns the
members from the answer; a heartbeat from a node not known yet is the same claim. Names are unique: a
claim on this node's name, on a live member's name from another URL, or on a [[peers]] name from another
URL is refused (409), so nobody can take over a live node's name or point its URL elsewhere. Members learn
of each other on heartbeats: a beat carries a digest of the sender's member list, and an answer carries the
full list (and the names removed) only when the digests differ, so a steady cluster sends 16 bytes more
per beat. `node remove` leaves a tombstone, so a member that missed the removal does not bring it back.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable

from schedd.config import ConfigError, check_peer_url
from schedd.errors import InvalidArgument

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class ClaimRefused(Exception):
    """A node's claim on a name (or a URL) that is not its to take: HTTP 409."""


@dataclass
class Member:
    name: str
    url: str
    since: int  # µs since the epoch it joined (or was removed)
    removed: int = 0  # µs since the epoch it was removed (a tombstone), 0 while a member


def check_name(name: object, where: str = "Name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name == "any":
        raise InvalidArgument(f"{where} {name!r}: a node name is 1 to 63 letters, digits, '.', '_' or '-' "
                              f"(starting with a letter or digit), and not 'any'")
    return name


def check_url(url: object, where: str, allow_insecure: bool) -> str:
    try:
        return check_peer_url(url, where, allow_insecure)
    except ConfigError as e:
        raise InvalidArgument(str(e)) from None


def digest(names: Iterable[str]) -> str:
    """What a member list is, in 16 hex digits: equal lists, equal digests."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def members_json(own: tuple[str, str], peers: Iterable[tuple[str, str]], removed: Iterable[str]) -> dict:
    return {"Members": [{"Name": n, "URL": u} for n, u in [own, *peers]], "Removed": sorted(removed)}


def parse_members(body: object, allow_insecure: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """A peer's {Members: [{Name, URL}], Removed: [names]}, checked; malformed entries are dropped."""
    if not isinstance(body, dict):
        return [], []
    out: list[tuple[str, str]] = []
    members = body.get("Members")
    for m in members if isinstance(members, list) else []:
        try:
            if isinstance(m, dict):
                out.append((check_name(m.get("Name")), check_url(m.get("URL"), "URL", allow_insecure)))
        except InvalidArgument:
            continue
    removed = body.get("Removed")
    gone = [n for n in removed if isinstance(n, str) and NAME_RE.fullmatch(n)] if isinstance(removed, list) else []
    return out[:4096], gone[:4096]
