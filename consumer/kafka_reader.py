"""Kafka responses read off the socket without asyncio's StreamReader copies.

aiokafka reads every response with `StreamReader.readexactly(size)`. For a fetch
response of many camera frames (tens of MB at 512 in flight) that reader copies
each byte five to ten times, all while holding the GIL the decode threads wait
for: `feed_data` appends each 256 KB socket read to one `bytearray` (its growth
reallocates and copies it over and over), `readexactly` copies the response out
twice (`bytes(buffer[:n])`) and `del buffer[:n]` shrinks, so copies, whatever
follows; and with its 64 KB limit it pauses and resumes the socket after every
read. Profiled at 512 frames in flight, that was ~70% of the event loop's CPU,
~1.5 ms per 1080p frame (docs/profile.md).

`ChunkedStreamReader` keeps the socket reads as they came and joins those of a
response once, when all of it is in; it wakes its reader only then, and pauses
the socket only when more than the awaited response is buffered. aiokafka uses
nothing of a reader but `readexactly`, the protocol's `feed_data`/`feed_eof`/
`set_exception` and the flow control; those are what this class implements
(`readline`/`readuntil` are not: aiokafka never calls them).

`install()` makes every aiokafka connection opened afterwards use it, through
aiokafka's connection protocol class (aiokafka internals, like
consumer/kafka_requests.py; pinned below 0.15 in pyproject.toml, and
tests/consumer/test_kafka_reader.py checks the hook is still where it was).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class ChunkedStreamReader(asyncio.StreamReader):
    _chunks: deque[bytes]
    _size: int
    """Bytes buffered, the first chunk's consumed head excluded."""
    _head: int
    """How much of the first chunk was already read."""
    _wanted: int
    """The size the pending `readexactly` waits for (0: none waits)."""

    def __init__(self, limit: int = 2**16, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(limit=limit, loop=loop)
        self._reset()

    @classmethod
    def adopt(cls, reader: asyncio.StreamReader) -> None:
        """Turn a fresh `StreamReader` (nothing fed yet) into one of these, in place:
        aiokafka made it and keeps its own reference."""
        if isinstance(reader, cls):
            return
        if reader._buffer:  # type: ignore[attr-defined]
            raise ValueError("the reader has data already")
        reader.__class__ = cls
        reader._reset()  # type: ignore[attr-defined]

    def _reset(self) -> None:
        self._chunks = deque()
        self._size = 0
        self._head = 0
        self._wanted = 0

    def feed_data(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)
        if self._size >= self._wanted:
            self._wakeup_waiter()  # type: ignore[attr-defined]
        transport = self._transport  # type: ignore[attr-defined]
        if (
            transport is not None
            and not self._paused  # type: ignore[attr-defined]
            and self._size > max(2 * self._limit, self._wanted)  # type: ignore[attr-defined]
        ):
            try:
                transport.pause_reading()
            except NotImplementedError:
                self._transport = None
            else:
                self._paused = True

    def _maybe_resume_transport(self) -> None:
        if self._paused and self._size <= self._limit:  # type: ignore[has-type]
            self._paused = False
            self._transport.resume_reading()  # type: ignore[attr-defined]

    def at_eof(self) -> bool:
        return bool(self._eof) and not self._size  # type: ignore[has-type]

    async def readexactly(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if self._exception is not None:  # type: ignore[attr-defined]
            raise self._exception  # type: ignore[attr-defined]
        if n == 0:
            return b""
        while self._size < n:
            if self._eof:  # type: ignore[has-type]
                raise asyncio.IncompleteReadError(self._take(self._size), n)
            self._wanted = n
            try:
                await self._wait_for_data("readexactly")  # type: ignore[attr-defined]
            finally:
                self._wanted = 0
        data = self._take(n)
        self._maybe_resume_transport()
        return data

    async def read(self, n: int = -1) -> bytes:
        if self._exception is not None:  # type: ignore[attr-defined]
            raise self._exception  # type: ignore[attr-defined]
        if n == 0:
            return b""
        if n < 0:
            while not self._eof:  # type: ignore[has-type]
                await self._wait_for_data("read")  # type: ignore[attr-defined]
            n = self._size
        elif not self._size and not self._eof:  # type: ignore[has-type]
            await self._wait_for_data("read")  # type: ignore[attr-defined]
        data = self._take(min(n, self._size))
        self._maybe_resume_transport()
        return data

    async def readline(self) -> bytes:
        raise NotImplementedError("ChunkedStreamReader reads Kafka frames only")

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        raise NotImplementedError("ChunkedStreamReader reads Kafka frames only")

    def _take(self, n: int) -> bytes:
        """The next `n` buffered bytes (n <= what is buffered): one copy at most,
        none when a socket read holds exactly them."""
        if n == 0:
            return b""
        chunks, head = self._chunks, self._head
        first = chunks[0]
        self._size -= n
        if head == 0 and len(first) == n:
            chunks.popleft()
            return first
        if len(first) - head >= n:
            data = first[head : head + n]
            head += n
            if head == len(first):
                chunks.popleft()
                head = 0
            self._head = head
            return data
        parts: list[Any] = []
        need = n
        while need:
            chunk = chunks[0]
            available = len(chunk) - head
            if available <= need:
                parts.append(memoryview(chunk)[head:] if head else chunk)
                chunks.popleft()
                head = 0
                need -= available
            else:
                parts.append(memoryview(chunk)[head : head + need])
                head += need
                need = 0
        self._head = head
        return b"".join(parts)


def install() -> None:
    """Every aiokafka connection opened from now on reads with `ChunkedStreamReader`."""
    import aiokafka.conn as conn

    base = conn.AIOKafkaProtocol
    if getattr(base, "tfstream_chunked", False):
        return

    class ChunkedProtocol(base):  # type: ignore[misc, valid-type]
        tfstream_chunked = True

        def __init__(
            self, closed_fut: Any, reader: asyncio.StreamReader, *args: Any, **kw: Any
        ) -> None:
            ChunkedStreamReader.adopt(reader)
            super().__init__(closed_fut, reader, *args, **kw)

    conn.AIOKafkaProtocol = ChunkedProtocol  # type: ignore[misc]
