"""[http] configuration and the shared HTTP plumbing: token, JSON errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from schedd.config import ConfigError, HttpConfig, _apply, Config, read_token
from schedd.web import HttpError, Web, read_json

TOKEN = "s3cret-token-0123456789"


def cfg_from(data: dict) -> Config:
    cfg = Config()
    _apply(cfg, data)
    return cfg


def test_http_section_parses():
    cfg = cfg_from({"node": {"name": "a"}, "http": {"listen": "127.0.0.1:7001", "token_file": "/etc/schedd/t",
                                                    "heartbeat_interval": "500ms"},
                    "peers": [{"name": "b", "url": "http://127.0.0.1:7002/"}]})
    assert cfg.http.listen == ("127.0.0.1", 7001)
    assert cfg.http.heartbeat_interval_usec == 500_000
    assert [(p.name, p.url) for p in cfg.peers] == [("b", "http://127.0.0.1:7002")]
    assert cfg_from({"http": {"listen": "[::1]:80"}}).http.listen == ("::1", 80)


@pytest.mark.parametrize("data, words", [
    ({"http": {"listen": "7001"}}, "host:port"),
    ({"http": {"listen": "h:99999"}}, "1 to 65535"),
    ({"http": {"token_file": "rel/t"}}, "absolute"),
    ({"http": {"tls_cert": "/c"}}, "go together"),
    ({"http": {"bogus": 1}}, "unknown key"),
    ({"node": {"name": "a"}, "http": {"listen": "h:1", "token_file": "/t"}, "peers": [{"name": "a", "url": "http://x"}]},
     "unique"),
    ({"http": {"listen": "h:1", "token_file": "/t"}, "peers": [{"name": "b", "url": "ftp://x"}]}, "http://"),
    ({"peers": [{"name": "b", "url": "http://x"}]}, "need [http] listen"),
])
def test_bad_http_config_is_explained(data, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        cfg_from(data)


def test_token_file_must_be_private(tmp_path: Path):
    p = tmp_path / "token"
    p.write_text(TOKEN + "\n")
    os.chmod(p, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token(p)
    os.chmod(p, 0o600)
    assert read_token(p) == TOKEN


@pytest.fixture
async def client(tmp_path: Path):
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    os.chmod(tok, 0o600)
    w = Web(HttpConfig(listen=("127.0.0.1", 0), token_file=tok))

    async def echo(request: web.Request) -> web.Response:
        w.require_token(request)
        body = await read_json(request)
        if "boom" in body:
            raise HttpError(409, "conflict", "boom")
        return web.json_response(body)

    async def crash(_request):
        raise RuntimeError("bug")

    w.app.router.add_post("/echo", echo)
    w.app.router.add_get("/crash", crash)
    async with TestClient(TestServer(w.app)) as c:
        yield c


async def test_token_is_required(client):
    r = await client.post("/echo", json={"a": 1})
    assert r.status == 401 and (await r.json())["error"] == "unauthorized"
    r = await client.post("/echo", json={"a": 1}, headers={"Authorization": "Bearer wrong"})
    assert r.status == 401
    r = await client.post("/echo", json={"a": 1}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200 and await r.json() == {"a": 1}


async def test_errors_are_json(client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = await client.post("/echo", data=b"{not json", headers=auth)
    assert r.status == 400 and "not valid JSON" in (await r.json())["message"]
    r = await client.post("/echo", json=[1], headers=auth)
    assert r.status == 400 and "JSON object" in (await r.json())["message"]
    r = await client.post("/echo", json={"boom": 1}, headers=auth)
    assert r.status == 409 and await r.json() == {"error": "conflict", "message": "boom"}
    r = await client.get("/nowhere")
    assert r.status == 404 and (await r.json())["error"] == "not-found"
    r = await client.get("/echo")
    assert r.status == 405
    r = await client.get("/crash")
    assert r.status == 500 and (await r.json())["error"] == "internal"
