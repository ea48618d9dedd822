"""A minimal HTTP/1.1 client for the benchmark's predict calls."""

from __future__ import annotations

import asyncio
import urllib.parse


class PlainHttp:
    """One keep-alive HTTP/1.1 connection that sends a multipart predict built by hand.

    The raw call has no client; the served call's client is timed with it. httpx
    adds about 0.6 ms per call on this machine (a `GET /health/live` round trip
    takes ~0.9 ms through httpx against ~0.3 ms here), a fifth of the 3 ms
    budget, and none of it is the server's; under a 16-client load its CPU is
    taken from the bridge on a two-core machine. So the benchmark
    sends with the least a client can do: the body joined from its parts, the
    answer's length read from its head (`bench.lone.client_costs` puts both
    clients side by side in the same run).

    One call at a time per connection. A call that fails or outlasts `timeout_s`
    closes the connection (its answer may still be on the way), and the next call
    opens a new one, as a pooled client would."""

    BOUNDARY = b"tfstream-bench-boundary"

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"plain HTTP only: {url}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = parts.path or "/"
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> PlainHttp:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close()

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    def _head(self, method: str, path: str, extra: bytes = b"") -> bytes:
        return f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n".encode() + extra + b"\r\n"

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        """Raises OSError, asyncio.IncompleteReadError or TimeoutError; the connection
        is closed then."""
        try:
            return await asyncio.wait_for(self._send(request), self.timeout_s)
        except BaseException:
            self._close()
            raise

    async def _send(self, request: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            await self._open()
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self._reader.readexactly(length)

    async def predict(self, name: str, data: bytes) -> tuple[int, bytes]:
        """POST `data` as the form field `input_data`; the status and the answer's body."""
        body = b"".join(
            (
                b"--" + self.BOUNDARY + b"\r\n",
                b'Content-Disposition: form-data; name="input_data"; filename="',
                name.encode(),
                b'"\r\nContent-Type: image/jpeg\r\n\r\n',
                data,
                b"\r\n--" + self.BOUNDARY + b"--\r\n",
            )
        )
        headers = (
            b"Content-Type: multipart/form-data; boundary=" + self.BOUNDARY + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        )
        return await self._exchange(self._head("POST", self.path, headers) + body)

    async def get(self, path: str) -> int:
        status, _ = await self._exchange(self._head("GET", path))
        return status
