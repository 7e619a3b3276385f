"""The daemon's HTTP server: one aiohttp application on the daemon's event loop.

Features (federation, metrics, dashboard) add their routes to `Web.app` before
`start()`. This module owns what they share: listening (TLS when configured), the
credentials compared in constant time, and errors as JSON, so every endpoint
answers bad input with a 4xx and a sentence, never an HTML page or a 500.

Three credentials, each for its own side (shared/DESIGN.md "HTTP credentials"):
- the peer token (`token_file`): the peers' `/api/v1/` and nothing else;
- the operators' token (`admin_token_file`): the dashboard's actions, output tails and
  command lines, as `Authorization: Bearer` only (a browser never sends that by itself,
  so another site cannot make it act: no CSRF);
- a read credential, needed off loopback for everything outside `/api/` (the page, its
  events, `/metrics`) unless `public = true`: the operators' token or `read_token_file`'s,
  as Bearer or as the password of HTTP Basic (which browsers and Prometheus both speak).
Outside `/api/` the Host header must also name this node (DNS rebinding: a page of another
site that resolves its own name to this node's address must not read it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import re
import socket
import ssl
from typing import Any

import psutil
from aiohttp import web

from schedd.config import ConfigError, HttpConfig, is_loopback_host, read_token
from schedd.errors import BY_DBUS_NAME, SchedError

log = logging.getLogger("schedd.api.http.web")


class HttpError(Exception):
    """An answer with a status, a machine-readable code and a sentence a person can act on."""

    def __init__(self, status: int, code: str, message: str, dbus_error: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.dbus_error = dbus_error  # the D-Bus error a peer re-raises for its own clients
        self.headers = headers or {}

    @classmethod
    def of(cls, e: SchedError) -> "HttpError":
        """A refusal of the engine, as HTTP: its status, its code and its D-Bus name."""
        return cls(min(e.http_status, 500), error_code(type(e)), e.message, e.dbus_name)


def error_code(error: type[SchedError]) -> str:
    """The one spelling of an error's code: its D-Bus name's last part in kebab case (AccessDenied ->
    access-denied), the style of every other code (not-found, bad-json, unauthorized)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "-", error.dbus_name.rsplit(".", 1)[-1]).lower()


_BY_STATUS = {c.http_status: c.dbus_name for c in BY_DBUS_NAME.values() if 400 <= c.http_status < 500}


def error_body(status: int, code: str, message: str, dbus_error: str = "") -> dict[str, str]:
    """Every error answer: a code, a sentence, and the D-Bus error a peer's origin re-raises for its own
    clients (schedd.cluster.wire.refusal). Without one named, a 4xx that is some error's own status
    is that error (400 InvalidArgument, 403 AccessDenied, ...); anything else is Failed."""
    return {"error": code, "message": message,
            "dbus_error": dbus_error or _BY_STATUS.get(status, SchedError.dbus_name)}


@web.middleware
async def _json_errors(request: web.Request, handler):
    try:
        try:
            return await handler(request)
        except SchedError as e:
            raise HttpError.of(e) from None
    except HttpError as e:
        return web.json_response(error_body(e.status, e.code, e.message, e.dbus_error), status=e.status,
                                 headers=e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response(error_body(e.status, e.reason.lower().replace(" ", "-"), e.text or e.reason),
                                 status=e.status, headers={k: v for k, v in e.headers.items()
                                                           if k.lower() in ("allow", "www-authenticate")})
    except ConnectionResetError:
        # The client gave up before we could answer (a peer's timeout while this node was stalled).
        log.debug("HTTP %s %s: the client went away before the answer", request.method, request.path)
        raise
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return web.json_response(error_body(500, "internal", "the daemon failed to answer; see its journal"),
                                 status=500)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or 400 saying what is wrong with it."""
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HttpError(400, "bad-json", f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "bad-json", "the request body must be a JSON object")
    return body


def _same(given: str, secret: str | None) -> bool:
    return secret is not None and hmac.compare_digest(given.encode(), secret.encode())


def _host_of(header: str) -> str:
    """'Name:port', '[::1]:port', '1.2.3.4' -> the host, lower case, without a trailing dot."""
    h = header.strip().lower()
    if h.startswith("["):
        h = h[1:h.find("]")] if "]" in h else ""
    elif h.count(":") == 1:
        h = h.rsplit(":", 1)[0]
    return h.rstrip(".")


class Web:
    def __init__(self, cfg: HttpConfig, node_name: str = "") -> None:
        self.cfg = cfg
        self.token: str | None = read_token(cfg.token_file) if cfg.token_file else None
        self.admin_token: str | None = (read_token(cfg.admin_token_file, "admin_token_file")
                                        if cfg.admin_token_file else None)
        self.read_token: str | None = (read_token(cfg.read_token_file, "read_token_file")
                                       if cfg.read_token_file else None)
        if self.token is not None and self.admin_token == self.token:
            raise ConfigError("http.admin_token_file holds the same token as http.token_file: the operators' token "
                              "must differ from the peers' (every peer holds that one)")
        listen_host = cfg.listen[0] if cfg.listen else "127.0.0.1"
        # Reads are open where only this machine can connect, or where the operator said so.
        self.open_reads = cfg.public or is_loopback_host(listen_host)
        try:
            self._listen_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(listen_host)
        except ValueError:
            self._listen_ip = None
        names = {node_name, socket.gethostname(), socket.gethostname().split(".")[0], listen_host,
                 *cfg.allowed_hosts}
        self._names = {n.lower().rstrip(".") for n in names if n}
        self.max_event_streams = 32
        self.app = web.Application(middlewares=[_json_errors, self._guard], client_max_size=8 << 20)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.federation: Any = None  # schedd.cluster.federation.Federation when [[peers]] are configured

    # -- authentication ---------------------------------------------------------

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return given.strip() if scheme.lower() == "bearer" else None

    @staticmethod
    def _basic_password(request: web.Request) -> str | None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            return base64.b64decode(given.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None

    def authorized(self, request: web.Request) -> bool:
        """The request carries the peers' token (the peer API's credential, nothing else's)."""
        given = self._bearer(request)
        return given is not None and _same(given, self.token)

    def is_admin(self, request: web.Request) -> bool:
        """The request carries the operators' token as Bearer (never Basic: a browser resends that unasked)."""
        given = self._bearer(request)
        return given is not None and _same(given, self.admin_token)

    def can_read(self, request: web.Request) -> bool:
        """The dashboard and /metrics: open on loopback or when public, else the operators' or the read token."""
        if self.open_reads:
            return True
        for given in (self._bearer(request), self._basic_password(request)):
            if given is not None and (_same(given, self.admin_token) or _same(given, self.read_token)):
                return True
        return False

    def require_admin(self, request: web.Request) -> None:
        """403 without an operators' token configured (read-only) or for the peer token; 401 for anything else."""
        if self.admin_token is None:
            raise HttpError(403, "read-only", "this node has no [http] admin_token_file, so the dashboard is "
                                              "read-only; cancel, hold and release with schedctl")
        if self.is_admin(request):
            return
        given = self._bearer(request)
        if given is not None and _same(given, self.token):
            raise HttpError(403, "peer-token", "the cluster's peer token does not work the dashboard; use the "
                                               "operators' token of [http] admin_token_file")
        raise HttpError(401, "unauthorized", "missing or wrong operators' token (Authorization: Bearer <the token "
                                             "of [http] admin_token_file>)")

    def host_allowed(self, header: str | None) -> bool:
        """Whether a Host header names this node: loopback, its names, its listen address, [http] allowed_hosts.
        (No header at all: not a browser, so not DNS rebinding.)"""
        if header is None:
            return True
        host = _host_of(header)
        if not host:
            return False
        if is_loopback_host(host) or host in self._names:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if self._listen_ip is not None and not self._listen_ip.is_unspecified:
            return ip == self._listen_ip
        return str(ip) in self._local_addresses()

    @staticmethod
    def _local_addresses() -> set[str]:
        return {a.address.split("%", 1)[0] for addrs in psutil.net_if_addrs().values() for a in addrs
                if a.family in (socket.AF_INET, socket.AF_INET6)}

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        """Everything outside /api/ (the browser's side): the Host check, then the read credential."""
        if not request.path.startswith("/api/"):
            host = request.headers.get("Host")
            if not self.host_allowed(host):
                raise HttpError(421, "misdirected-request", f"Host {host!r} is not a name of this node; if it is "
                                                            "one, add it to [http] allowed_hosts")
            if not self.can_read(request):
                raise HttpError(401, "unauthorized", "off loopback the dashboard and /metrics need the operators' "
                                                     "token or the one of [http] read_token_file (Bearer, or as "
                                                     "the password of HTTP Basic), unless [http] public = true",
                                headers={"WWW-Authenticate": 'Basic realm="schedd", charset="UTF-8"'})
        return await handler(request)

    def require_token(self, request: web.Request) -> None:
        """401 unless the request carries this cluster's bearer token."""
        if self.token is None:
            raise HttpError(403, "no-token", "this node has no [http] token_file, so nothing can be done over HTTP")
        if not self.authorized(request):
            raise HttpError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)")

    # -- TLS --------------------------------------------------------------------

    def server_ssl(self) -> ssl.SSLContext | None:
        if not self.cfg.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        return ctx

    def client_ssl(self) -> ssl.SSLContext | None:
        """For calls to peers: verify them against tls_ca when given, else the system's CAs."""
        if not self.cfg.tls_ca:
            return None
        return ssl.create_default_context(cafile=str(self.cfg.tls_ca))

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        assert self.cfg.listen is not None
        host, port = self.cfg.listen
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.server_ssl(), reuse_address=True)
        await site.start()
        self.port = port
        log.info("HTTP on %s://%s:%d", "https" if self.cfg.tls_cert else "http", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
