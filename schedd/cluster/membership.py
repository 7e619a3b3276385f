"""Who is in the cluster beyond [[peers]]: joins, what members tell each other, removals, and their copy on disk.

A node with `[federation] seeds` announces itself (POST /join, with the cluster token) and learns the
members from the answer; a heartbeat from a node not known yet is the same claim. Names are unique: a
claim on this node's name, on a live member's name from another URL, or on a [[peers]] name from another
URL is refused (409), so nobody can take over a live node's name or point its URL elsewhere. Members learn
of each other on heartbeats: a beat carries a digest of the sender's member list, and an answer carries the
full list (and the names removed) only when the digests differ, so a steady cluster sends 16 bytes more
per beat. `node remove` leaves a tombstone, so a member that missed the removal does not bring it back.

What the token does not protect against (README, "Security"): every holder of the cluster token is every
node to the peer API. What is guarded here is what a newcomer's claim could otherwise take for good: a
learned member's name stays bound to its URL (a move is `node remove` first, then a join), the member
table is capped (MAX_MEMBERS, MAX_TOMBSTONES), and an announced URL is short, plain, and names no
link-local, multicast or unspecified address (a cloud's metadata service is 169.254.169.254), nor a
loopback one unless it comes from this machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlsplit

from schedd.config import ConfigError, check_peer_url, is_loopback_host
from schedd.errors import InvalidArgument

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_URL = 512  # characters of an announced URL
MAX_MEMBERS = 1024  # peers a node keeps (static and learned): joins beyond are refused, gossip beyond dropped
MAX_TOMBSTONES = 4096  # removed names remembered; the oldest are forgotten first
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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
    """An announced URL (a join, a beat, a member list): what [[peers]] accept, and no more than a node's
    address: at most MAX_URL characters, no spaces or control characters, no user, query or fragment, and
    no link-local (cloud metadata), multicast or unspecified address."""
    if isinstance(url, str) and (len(url) > MAX_URL or CONTROL_RE.search(url) or " " in url):
        raise InvalidArgument(f"{where}: a node's URL is at most {MAX_URL} characters, without spaces or "
                              f"control characters")
    try:
        url = check_peer_url(url, where, allow_insecure)
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ConfigError as e:
        raise InvalidArgument(str(e)) from None
    except ValueError as e:
        raise InvalidArgument(f"{where} = {url!r}: {e}") from None
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise InvalidArgument(f"{where} = {url!r}: a node's URL is scheme://host:port[/path], without user, "
                              f"query or fragment")
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return url
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or \
            (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_link_local):
        raise InvalidArgument(f"{where} = {url!r}: a link-local, multicast or unspecified address is no node's "
                              f"address (169.254.169.254 is a cloud's metadata service)")
    return url


def is_loopback_url(url: str) -> bool:
    try:
        return is_loopback_host(urlsplit(url).hostname or "")
    except ValueError:
        return False


def _loopback_peer(remote: str | None) -> bool:
    """The request's source is this machine (::ffff:127.0.0.1 too: a dual-stack socket's IPv4 client)."""
    try:
        ip = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_claim_url(url: str, remote: str | None) -> str:
    """A loopback URL is a claim only a node on this machine can make: from another machine it would have
    this node call its own local services with the cluster token (and its peers theirs)."""
    if is_loopback_url(url) and not _loopback_peer(remote):
        raise InvalidArgument(f"URL = {url!r} is a loopback address, but the claim came from {remote or 'elsewhere'}: "
                              f"announce the address peers reach the node at ([federation] url)")
    return url


def check_text(where: str, text: object, limit: int) -> str:
    """A drain's reason or who set it, as an operator or a peer gives it: shown by schedctl and logged, so
    at most `limit` characters and no control characters (a newline would forge a log line)."""
    if not isinstance(text, str) or len(text) > limit or CONTROL_RE.search(text):
        raise InvalidArgument(f"{where}: at most {limit} characters, without control characters")
    return text


def clean_text(text: str, limit: int) -> str:
    """What a peer's beat says of its drain, made printable (its beat is kept, not refused for it)."""
    return CONTROL_RE.sub(" ", text)[:limit]


def digest(names: Iterable[str]) -> str:
    """What a member list is, in 16 hex digits: equal lists, equal digests."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def members_json(own: tuple[str, str], peers: Iterable[tuple[str, str]], removed: Iterable[str]) -> dict:
    return {"Members": [{"Name": n, "URL": u} for n, u in [own, *peers]], "Removed": sorted(removed)}


def parse_members(body: object, allow_insecure: bool, from_url: str | None = None
                  ) -> tuple[list[tuple[str, str]], list[str]]:
    """A peer's {Members: [{Name, URL}], Removed: [names]}, checked; malformed entries are dropped, and
    so are loopback URLs from a peer (at from_url) on another machine: they are not this machine's."""
    if not isinstance(body, dict):
        return [], []
    out: list[tuple[str, str]] = []
    members = body.get("Members")
    local = from_url is None or is_loopback_url(from_url)
    for m in members if isinstance(members, list) else []:
        try:
            if isinstance(m, dict):
                url = check_url(m.get("URL"), "URL", allow_insecure)
                if local or not is_loopback_url(url):
                    out.append((check_name(m.get("Name")), url))
        except InvalidArgument:
            continue
    removed = body.get("Removed")
    gone = [n for n in removed if isinstance(n, str) and NAME_RE.fullmatch(n)] if isinstance(removed, list) else []
    return out[:4096], gone[:4096]
