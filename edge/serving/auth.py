"""Who may call the agent's HTTP routes: a bearer token for writes, JSON bodies only.

The rules (ASGI middleware around the Starlette app, :func:`install`):

- **Content type.** Every request with a body (POST, PUT, PATCH) must say
  ``Content-Type: application/json`` (a charset parameter is fine), else ``415`` naming the
  ``Content-Type`` header. A browser cannot send that cross-site without a CORS preflight, which the
  agent never answers, so a page on the shop's network cannot POST to the device (the ``text/plain``
  "simple request" trick is refused).
- **Writes** (every state-changing route: ``POST /v1/sales`` and anything not listed in
  :data:`READ_ROUTES`) need ``Authorization: Bearer <token>``. The token comes from
  ``--http-token-file`` (first line of the file) or ``EDGESHIP_HTTP_TOKEN``. Without a configured
  token, writes are accepted only from loopback clients (the agent listens on loopback by default);
  from anywhere else they get ``401`` saying how to configure one.
- **Reads** (``POST /v1/predict``, ``/v1/predict:batch``, ``/v1/predict:candidate``, ``/v1/predict:live``, ``/v1/explain`` and
  every GET: ``/healthz``, ``/metrics``, ``/v1/catalogue``, ``/v1/history``) are
  open by default; ``--http-auth-reads`` makes them require the token too.

Comparison is constant-time (:func:`hmac.compare_digest`).

>>> auth = HttpAuth(token="s3cret")
>>> auth.check_token("Bearer s3cret"), auth.check_token("Bearer nope"), auth.check_token(None)
(True, False, False)
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HttpAuth", "READ_ROUTES", "http_auth_for", "install", "load_token"]

logger = logging.getLogger(__name__)

#: (method, path) pairs that only read state; every other non-GET route is a write.
READ_ROUTES = frozenset(
    {("POST", "/v1/predict"), ("POST", "/v1/predict:batch"), ("POST", "/v1/predict:candidate"), ("POST", "/v1/predict:live"),
     ("POST", "/v1/explain")}
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
TOKEN_ENV = "EDGESHIP_HTTP_TOKEN"


def load_token(path: str | os.PathLike[str] | None) -> str | None:
    """The token from ``path`` (first line, stripped) or else ``$EDGESHIP_HTTP_TOKEN``; None if neither."""
    if path is not None:
        token = Path(path).read_text().splitlines()[0].strip() if Path(path).stat().st_size else ""
        if len(token) < 16:
            raise ValueError(f"http_token_file {path}: the token must be at least 16 characters")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token and len(token) < 16:
        raise ValueError(f"{TOKEN_ENV}: the token must be at least 16 characters")
    return token or None


@dataclass(frozen=True)
class HttpAuth:
    """The HTTP access rules of one agent."""

    token: str | None = None
    auth_reads: bool = False

    def check_token(self, header: str | None) -> bool:
        if self.token is None or not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())


def http_auth_for(config: Any) -> HttpAuth:
    """The rules an :class:`edge.config.AgentConfig` asks for."""
    return HttpAuth(token=load_token(getattr(config, "http_token_file", None)), auth_reads=getattr(config, "http_auth_reads", False))


def _loopback(client: Any) -> bool:
    try:
        return client is not None and ipaddress.ip_address(client[0].split("%")[0]).is_loopback
    except ValueError:
        return False


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


class _AuthMiddleware:
    def __init__(self, app: Any, auth: HttpAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method in _BODY_METHODS:
            ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                await _deny(send, 415, "unsupported_media_type", "Content-Type", "json_content_type",
                            f"must be application/json, not {ctype or 'missing'}")  # fmt: skip
                return
        write = method not in ("GET", "HEAD", "OPTIONS") and (method, path) not in READ_ROUTES
        if write or self.auth.auth_reads:
            header = _header(scope, b"authorization")
            if self.auth.token is not None:
                if not self.auth.check_token(header):
                    logger.warning("HTTP %s %s refused: missing or wrong bearer token", method, path)
                    await _deny(send, 401, "unauthorized", "Authorization", "bearer_token",
                                "needs Authorization: Bearer <token> (the agent's --http-token-file)")  # fmt: skip
                    return
            elif write and not _loopback(scope.get("client")):
                await _deny(send, 401, "unauthorized", "Authorization", "bearer_token",
                            "writes from other hosts need a token: start the agent with --http-token-file")  # fmt: skip
                return
        await self.app(scope, receive, send)


async def _deny(send: Any, status: int, code: str, field: str, rule: str, message: str) -> None:
    body = json.dumps(
        {"error": {"code": code, "message": f"{field} {message}", "details": [{"field": field, "rule": rule, "message": message}]}}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="edgeship"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install(app: Any, auth: HttpAuth) -> None:
    """Wrap a Starlette ``app`` with the rules (outermost middleware)."""
    app.add_middleware(_AuthMiddleware, auth=auth)
