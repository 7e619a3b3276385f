"""`[[peers]] kind = "slurm"`: a Slurm cluster, reached at its slurmrestd, as one peer.

    [[peers]]
    name = "hpc"                      # the peer's name (Node=hpc)
    kind = "slurm"
    url = "http://127.0.0.1:6820"     # slurmrestd (rest_auth/jwt)
    jwt_key_file = "/etc/schedd/slurm-jwt.key"   # Slurm's AuthAltParameters jwt_key, readable by root only
    partition = "batch"               # optional: submit there, count only its nodes
    query_user = "slurm"              # optional: the account schedd reads the queue and nodes as
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

KEYS = {"name", "kind", "url", "jwt_key_file", "partition", "query_user", "token_lifetime"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class SlurmPeerConfig:
    jwt_key_file: str
    partition: str = ""
    query_user: str = "slurm"
    token_lifetime: int = 600  # seconds a signed token is valid for


def parse(i: int, peer: dict, taken: set[str], insecure_ok: bool):
    """The PeerConfig of one Slurm [[peers]] table (ConfigError with the key that is wrong)."""
    from schedd.config import ConfigError, PeerConfig, is_loopback_host

    where = f"peers[{i}]"
    unknown = set(peer) - KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for kind = \"slurm\" "
                          f"(known: {', '.join(sorted(KEYS))})")
    for key in ("name", "url", "jwt_key_file"):
        if key not in peer:
            raise ConfigError(f"{where}: a Slurm peer needs {key}")
    name, url, key_file = peer["name"], peer["url"], peer["jwt_key_file"]
    if not isinstance(name, str) or not _NAME.match(name) or name in taken or name == "any":
        raise ConfigError(f"{where}.name = {name!r}: must be a name unique in the cluster (letters, digits, _.-)")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url = {url!r}: slurmrestd's address, http:// or https://")
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    if not host:
        raise ConfigError(f"{where}.url = {url!r}: names no host")
    if url.startswith("http://") and not is_loopback_host(host) and not insecure_ok:
        raise ConfigError(f"{where}.url = {url!r}: plain http:// to another machine would send users' Slurm "
                          "tokens and jobs in clear; use https:// or set [http] allow_insecure_peers = true")
    if not isinstance(key_file, str) or not os.path.isabs(key_file):
        raise ConfigError(f"{where}.jwt_key_file must be an absolute path (Slurm's jwt_key, readable by root only)")
    partition = peer.get("partition", "")
    if not isinstance(partition, str) or (partition and not _NAME.match(partition)):
        raise ConfigError(f"{where}.partition = {partition!r}: a Slurm partition name")
    query_user = peer.get("query_user", "slurm")
    if not isinstance(query_user, str) or not _NAME.match(query_user):
        raise ConfigError(f"{where}.query_user = {query_user!r}: a user name")
    lifetime = peer.get("token_lifetime", 600)
    if not isinstance(lifetime, int) or isinstance(lifetime, bool) or not 60 <= lifetime <= 86400:
        raise ConfigError(f"{where}.token_lifetime = {lifetime!r}: seconds, 60 to 86400")
    return PeerConfig(name, url.rstrip("/"), kind="slurm",
                      slurm=SlurmPeerConfig(key_file, partition, query_user, lifetime))
