"""The daemon's HTTP server: one aiohttp application on the daemon's event loop.

Features (federation, metrics, dashboard) add their routes to `Web.app` before
`start()`. This module owns what they share: listening (TLS when configured), the
bearer token compared in constant time, and errors as JSON, so every endpoint
answers bad input with a 4xx and a sentence, never an HTML page or a 500.
"""

from __future__ import annotations

import hmac
import json
import logging
import ssl
from typing import Any

from aiohttp import web

from .config import HttpConfig, read_token
from .errors import SchedError

log = logging.getLogger("schedd.web")


class HttpError(Exception):
    """An answer with a status, a machine-readable code and a sentence a person can act on."""

    def __init__(self, status: int, code: str, message: str, dbus_error: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.dbus_error = dbus_error  # the D-Bus error a peer re-raises for its own clients

    @classmethod
    def of(cls, e: SchedError) -> "HttpError":
        """A refusal of the engine, as HTTP: its status, its D-Bus name (short, and whole)."""
        return cls(min(e.http_status, 500), e.dbus_name.rsplit(".", 1)[-1].lower(), e.message, e.dbus_name)


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


@web.middleware
async def _json_errors(request: web.Request, handler):
    try:
        try:
            return await handler(request)
        except SchedError as e:
            raise HttpError.of(e) from None
    except HttpError as e:
        body = error_body(e.code, e.message)
        if e.dbus_error:
            body["dbus_error"] = e.dbus_error
        return web.json_response(body, status=e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response(error_body(e.reason.lower().replace(" ", "-"), e.text or e.reason),
                                 status=e.status, headers={k: v for k, v in e.headers.items()
                                                           if k.lower() in ("allow", "www-authenticate")})
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return web.json_response(error_body("internal", "the daemon failed to answer; see its journal"),
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


class Web:
    def __init__(self, cfg: HttpConfig) -> None:
        self.cfg = cfg
        self.token: str | None = read_token(cfg.token_file) if cfg.token_file else None
        self.app = web.Application(middlewares=[_json_errors], client_max_size=8 << 20)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.federation: Any = None  # schedd.federation.Federation when [[peers]] are configured

    # -- authentication ---------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return False
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

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
