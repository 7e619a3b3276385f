"""Two federated nodes in one process over HTTPS on loopback: heartbeats need the CA and the token."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from prereq import requirement
from schedd.config import Config, HttpConfig, PeerConfig
from schedd.core.engine import Engine
from schedd.cluster.federation import Federation
from schedd.cluster.api import FederationApi
from schedd.core.store import Store
from schedd.api.http.web import Web

_prerequisite = requirement(None if shutil.which("openssl") else "needs the openssl command to make a cert")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cert(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def node(tmp: Path, name: str, port: int, peer: str, peer_port: int, token: str, cert: Path, key: Path,
               ca: Path) -> tuple[Federation, Web, Store]:
    d = tmp / name
    d.mkdir()
    tok = d / "token"
    tok.write_text(token)
    os.chmod(tok, 0o600)
    cfg = Config(node_name=name, cpu_ids=[0], memory=1 << 30, state_dir=d,
                 http=HttpConfig(listen=("127.0.0.1", port), token_file=tok, tls_cert=cert, tls_key=key, tls_ca=ca,
                                 heartbeat_interval_usec=100_000),
                 peers=[PeerConfig(peer, f"https://127.0.0.1:{peer_port}")])
    store = Store(d / "schedd.db")
    engine = Engine(cfg, store)
    web = Web(cfg.http)
    fed = Federation(engine, cfg, web)
    FederationApi(fed, web)
    await web.start()
    await fed.start()
    return fed, web, store


async def wait_state(fed: Federation, peer: str, state: str, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if {r["Name"]: r["State"] for r in fed.node_rows()}[peer] == state:
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.mark.parametrize("b_trusts_a, b_token, a_sees_b, b_sees_a", [
    (True, "tls-token-0123456789abcdef", "up", "up"),
    (False, "tls-token-0123456789abcdef", "down", "up"),  # b cannot verify a's certificate: its beats never land
    (True, "another-token-0123456789ab", "down", "down"),  # 401 both ways
])
async def test_peers_talk_https_with_the_shared_token(tmp_path: Path, b_trusts_a, b_token, a_sees_b, b_sees_a):
    cert, key = make_cert(tmp_path, "shared")
    other_ca, _ = make_cert(tmp_path, "other")
    pa, pb = free_port(), free_port()
    a = await node(tmp_path, "a", pa, "b", pb, "tls-token-0123456789abcdef", cert, key, cert)
    b = await node(tmp_path, "b", pb, "a", pa, b_token, cert, key, cert if b_trusts_a else other_ca)
    try:
        # Both up is reached within a few beats; "down" is checked after 10 beats (1 s) of trying.
        for fed, peer, want in ((a[0], "b", a_sees_b), (b[0], "a", b_sees_a)):
            if want == "up":
                assert await wait_state(fed, peer, "up"), f"{fed.name} never saw {peer} up"
        await asyncio.sleep(1.0)  # let the failing side try for 10 intervals (this is what is measured)
        assert {r["Name"]: r["State"] for r in a[0].node_rows()}["b"] == a_sees_b
        assert {r["Name"]: r["State"] for r in b[0].node_rows()}["a"] == b_sees_a
        assert a[0].node_rows()[1]["URL"] == f"https://127.0.0.1:{pb}"
        assert a[0].node_rows()[0]["URL"] == f"https://127.0.0.1:{pa}"
    finally:
        for fed, web, store in (a, b):
            await fed.stop()
            await web.stop()
            store.close()
