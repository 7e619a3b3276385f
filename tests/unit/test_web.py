"""[http] configuration and the shared HTTP plumbing: token, JSON errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from schedd.config import ConfigError, HttpConfig, _apply, Config, login_uid_range, read_token
from schedd.api.http.web import HttpError, Web, error_body, error_code, read_json
from schedd.cluster.wire import refusal
from schedd.errors import BY_DBUS_NAME, AccessDenied, SchedError

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
    ({"peers": [{"name": "b", "url": "http://localhost:7002"}]}, "need [http] listen"),
    ({"http": {"listen": "h:1", "token_file": "/t"}, "peers": [{"name": "b", "url": "http://10.0.0.2:7001"}]},
     "allow_insecure_peers = true"),
    ({"http": {"listen": "h:1", "token_file": "/t"}, "peers": [{"name": "b", "url": "http://b.example:7001"}]},
     "in clear"),
    ({"http": {"public": "yes"}}, "true or false"),
    ({"http": {"allowed_hosts": "a.example"}}, "list of host names"),
    ({"http": {"allowed_hosts": ["a.example:80"]}}, "without ports"),
    ({"http": {"admin_token_file": "admin"}}, "absolute"),
    ({"federation": {"uid_min": 0}}, "root never"),
    ({"federation": {"uid_min": 5000, "uid_max": 10}}, "above"),
    ({"federation": {"deny_groups": "sudo"}}, "list of group names"),
    ({"federation": {"bogus": 1}}, "unknown key"),
])
def test_bad_http_config_is_explained(data, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        cfg_from(data)


def test_plain_http_peers_off_loopback_need_the_explicit_opt_in():
    base = {"node": {"name": "a"}, "http": {"listen": "0.0.0.0:7001", "token_file": "/t"}}
    for url in ("http://127.0.0.1:7002", "http://[::1]:7002", "http://localhost:7002", "https://10.0.0.2:7001",
                "https://b.example"):
        assert cfg_from(base | {"peers": [{"name": "b", "url": url}]}).peers[0].url == url
    cfg = cfg_from({"node": {"name": "a"}, "http": base["http"] | {"allow_insecure_peers": True},
                    "peers": [{"name": "b", "url": "http://10.0.0.2:7001"}]})
    assert cfg.peers[0].url == "http://10.0.0.2:7001" and cfg.http.allow_insecure_peers


def test_federation_section_and_login_defs(tmp_path: Path):
    defs = tmp_path / "login.defs"
    defs.write_text("# comment\nMAIL_DIR /var/mail\nUID_MIN\t\t 2000 # ours\n#UID_MAX 1\nUID_MAX 30000\n")
    assert login_uid_range(defs) == (2000, 30000)
    assert login_uid_range(tmp_path / "absent") == (1000, 60000)
    defs.write_text("UID_MIN 1500\n")
    assert login_uid_range(defs) == (1500, 60000)
    cfg = cfg_from({"federation": {"uid_min": 500, "uid_max": 70000, "deny_groups": ["sudo", "docker"]}})
    assert (cfg.federation.uid_min, cfg.federation.uid_max, cfg.federation.deny_groups) == (500, 70000,
                                                                                          ("sudo", "docker"))
    default = cfg_from({}).federation
    assert {"sudo", "wheel", "docker", "disk", "lxd", "libvirt", "shadow", "adm"} <= set(default.deny_groups)
    assert (default.uid_min, default.uid_max) == login_uid_range()


def test_the_operators_token_must_differ_from_the_peers(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a, b):
        p.write_text(TOKEN)
        os.chmod(p, 0o600)
    with pytest.raises(ConfigError, match="same token"):
        Web(HttpConfig(listen=("127.0.0.1", 0), token_file=a, admin_token_file=b))
    b.write_text("another-token-0123456789")
    os.chmod(b, 0o644)
    with pytest.raises(ConfigError, match="admin_token_file .*chmod 600"):
        Web(HttpConfig(listen=("127.0.0.1", 0), token_file=a, admin_token_file=b))


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
        if "refuse" in body:
            raise AccessDenied("not yours")
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
    assert r.status == 409 and await r.json() == {"error": "conflict", "message": "boom",
                                                  "dbus_error": "org.schedd.Schedd1.Error.InvalidState"}
    r = await client.post("/echo", json={"refuse": 1}, headers=auth)
    assert r.status == 403 and await r.json() == {"error": "access-denied", "message": "not yours",
                                                  "dbus_error": "org.schedd.Schedd1.Error.AccessDenied"}
    r = await client.get("/nowhere")
    assert r.status == 404 and await r.json() == {"error": "not-found", "message": "404: Not Found",
                                                  "dbus_error": "org.schedd.Schedd1.Error.NotFound"}
    r = await client.get("/echo")
    assert r.status == 405
    r = await client.get("/crash")
    assert r.status == 500 and (await r.json())["error"] == "internal"


def test_one_error_code_per_error_class_and_back():
    """Each SchedError has one code (its D-Bus name's last part, kebab case), and a peer's body decodes
    to the class it names, with the peer's message."""
    assert [error_code(c) for c in BY_DBUS_NAME.values()] == [
        "failed", "invalid-argument", "not-found", "access-denied", "unsatisfiable", "invalid-state", "no-space"]
    for cls in BY_DBUS_NAME.values():
        e = HttpError.of(cls("no"))
        got = refusal("b", e.status, json.dumps(error_body(e.status, e.code, e.message, e.dbus_error))).error
        assert type(got) is cls and got.message == "node b: no"
    assert type(refusal("b", 400, "<html>").error) is SchedError


ADMIN = "admin-token-0123456789abc"
READ = "read-token-0123456789abcd"


async def guarded(tmp_path: Path, **http) -> TestClient:
    """A Web with a browser-side route (/ui/state), /metrics and a peer-API route, configured by http."""
    files = {}
    for name, text in (("token_file", TOKEN), ("admin_token_file", ADMIN), ("read_token_file", READ)):
        p = tmp_path / name
        p.write_text(text)
        os.chmod(p, 0o600)
        files[name] = p
    w = Web(HttpConfig(**(files | {"listen": ("127.0.0.1", 0)} | http)), node_name="node7")

    async def ok(_request):
        return web.json_response({"ok": True})

    async def api(request):
        w.require_token(request)
        return web.json_response({"ok": True})

    w.app.router.add_get("/ui/state", ok)
    w.app.router.add_get("/metrics", ok)
    w.app.router.add_get("/api/v1/nodes", api)
    c = TestClient(TestServer(w.app))
    await c.start_server()
    return c


def bearer(t: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}"}


def basic(t: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{t}".encode()).decode()}


async def test_off_loopback_the_browser_side_needs_a_read_credential(tmp_path: Path):
    c = await guarded(tmp_path, listen=("10.9.8.7", 7001))
    try:
        for path in ("/ui/state", "/metrics", "/", "/ui/nothing-here"):
            for headers in ({}, bearer(TOKEN), bearer("wrong-token-000000000000"), basic(TOKEN),
                            {"Authorization": "Basic !!"}):
                r = await c.get(path, headers=headers)
                assert r.status == 401, (path, headers, r.status)
                assert r.headers["WWW-Authenticate"].startswith("Basic") and (await r.json())["error"] == "unauthorized"
            for headers in (bearer(ADMIN), bearer(READ), basic(READ), basic(ADMIN)):
                r = await c.get(path, headers=headers)
                assert r.status in (200, 404), (path, headers, r.status)
        # The peer API keeps its own credential and is not behind the read gate.
        assert (await c.get("/api/v1/nodes", headers=bearer(TOKEN))).status == 200
        assert (await c.get("/api/v1/nodes", headers=bearer(READ))).status == 401
    finally:
        await c.close()
    c = await guarded(tmp_path, listen=("0.0.0.0", 7001), public=True)
    try:
        assert (await c.get("/metrics")).status == 200 and (await c.get("/ui/state")).status == 200
    finally:
        await c.close()
    c = await guarded(tmp_path, listen=("127.0.0.1", 7001))  # loopback: open, as before
    try:
        assert (await c.get("/metrics")).status == 200
    finally:
        await c.close()


async def test_the_host_header_must_name_this_node(tmp_path: Path):
    c = await guarded(tmp_path, listen=("10.9.8.7", 7001), public=True, allowed_hosts=["sched.example.org"])
    try:
        for host in ("127.0.0.1:7001", "localhost", "LOCALHOST.:7001", "[::1]:7001", "node7:7001", "10.9.8.7:7001",
                     "sched.example.org", "app.localhost"):
            r = await c.get("/ui/state", headers={"Host": host})
            assert r.status == 200, (host, await r.text())
        for host in ("evil.example", "evil.example:7001", "10.9.8.8:7001", "node7.evil.example", "[::2]:7001", ""):
            for path in ("/ui/state", "/metrics"):
                r = await c.get(path, headers={"Host": host})
                assert r.status == 421, (host, path, r.status)
                body = await r.json()
                assert body["error"] == "misdirected-request" and "allowed_hosts" in body["message"]
        # Peers name each other by their URLs' hosts: the peer API is guarded by its token instead.
        r = await c.get("/api/v1/nodes", headers={"Host": "evil.example"} | bearer(TOKEN))
        assert r.status == 200
    finally:
        await c.close()
    c = await guarded(tmp_path, listen=("0.0.0.0", 7001), public=True)
    try:
        assert (await c.get("/ui/state", headers={"Host": "127.0.0.1"})).status == 200
        assert (await c.get("/ui/state", headers={"Host": "203.0.113.9"})).status == 421  # not an address of ours
    finally:
        await c.close()
