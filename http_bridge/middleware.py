"""ASGI middleware: request-size limit, API key (or, for the live page and its
event stream only, the session cookie: see `http_bridge.session`), and request
metrics.

The size limit is enforced while the body streams in, so an oversize upload
is refused after `max_bytes`, never read whole into memory (or spooled to disk).
"""

from __future__ import annotations

import hmac
import json
import time
from http.cookies import SimpleCookie
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engines.errors import RequestTooLarge, Unauthorized
from http_bridge import session
from http_bridge.errors import error_body

#: Paths that stay open when an API key is set: docs, the login form, and what
#: infrastructure reads without credentials: Prometheus' scrape of /metrics (the k8s
#: files annotate the pods for it; counters by route and status are no secret) and
#: the probes under /health/.
OPEN_PATHS = frozenset(
    {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/metrics", session.LOGIN_PATH}
)
OPEN_PREFIXES = ("/health/",)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = RequestTooLarge(
                f"the request has {int(declared)} bytes; the limit is {self.max_bytes}"
            )
            await _send_json(send, 413, error_body(error.code, error.message))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise RequestTooLarge(
                    f"the request body exceeds the limit of {self.max_bytes} bytes"
                )
            return message

        await self.app(scope, counted, send)


class ApiKey:
    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    def _open(self, path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    def _session(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        if not session.opens(scope["method"], scope["path"]):
            return False
        cookies = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        token = cookies.get(session.COOKIE)
        return token is not None and session.valid(self.key, token.value)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.key or self._open(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key") or b""
        auth = headers.get(b"authorization", b"")
        if not given and auth.lower().startswith(b"bearer "):
            given = auth[7:].strip()
        if hmac.compare_digest(given, self.key) or (not given and self._session(scope, headers)):
            await self.app(scope, receive, send)
            return
        page = scope["method"] == "GET" and scope["path"] in session.PAGES
        if page and b"text/html" in headers.get(b"accept", b""):
            # A browser on the live page: to the form, then back here (only where the
            # cookie the form sets will open the page: elsewhere that would be a loop).
            location = session.login_redirect(scope["path"]).encode()
            await send(
                {"type": "http.response.start", "status": 303, "headers": [(b"location", location)]}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        error = Unauthorized(
            "a valid API key is required (X-API-Key header or Authorization: Bearer; "
            f"a browser signs in at {session.LOGIN_PATH})"
        )
        await _send_json(send, error.http_status, error_body(error.code, error.message))


class HttpMetrics:
    """Counts and times requests by route template (not raw path: hashes would explode labels)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "tfstream_http_requests", "HTTP requests", ["route", "status"], registry=registry
        )
        self.seconds = Histogram(
            "tfstream_http_request_seconds", "HTTP request duration", ["route"], registry=registry
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(route, str(status)).inc()
            self.seconds.labels(route).observe(time.perf_counter() - started)
