"""/metrics, /health/live and /health/ready on a port of their own.

Served from a thread, not the event loop, so a probe still gets an answer when
the loop is busy; liveness instead checks that the loop keeps ticking, which is
what a stuck worker stops doing.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], tuple[bool, dict[str, object]]]


class Problems:
    """Why the worker is not ready, by what is wrong: kept by the parts that find a
    problem (an answer log that cannot be written, a DLQ that refuses) and read by
    the readiness probe, which names them. A part clears its own once it is cured."""

    def __init__(self) -> None:
        self._found: dict[str, str] = {}

    def set(self, what: str, reason: str) -> None:
        self._found[what] = reason

    def clear(self, what: str) -> None:
        self._found.pop(what, None)

    def __bool__(self) -> bool:
        return bool(self._found)

    def snapshot(self) -> dict[str, str]:
        return dict(self._found)


class HealthServer:
    """`pages`: more GET paths, each answered with the JSON of its callable (the camera
    gateway's /cameras)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        live: Check,
        ready: Check,
        pages: Mapping[str, Callable[[], object]] | None = None,
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif self.path in ("/health/live", "/health/ready", "/health"):
                    ok, detail = (outer.ready if self.path == "/health/ready" else outer.live)()
                    body = json.dumps({"status": "ok" if ok else "unavailable", **detail}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                elif self.path in outer.pages:
                    body = json.dumps(outer.pages[self.path]()).encode()
                    self._send(200, body, "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # probes are not news
                return

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                # A probe that gave up before its answer (busy process, short timeout)
                # is not news; anything else still prints its traceback.
                if isinstance(sys.exc_info()[1], ConnectionError):
                    return
                super().handle_error(request, client_address)  # type: ignore[arg-type]

        self.registry = registry
        self.live = live
        self.ready = ready
        self.pages = dict(pages or {})
        self._server = Server((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
