"""The Kafka connection reader: frames come out whole and in order however the
socket cut them, and a large response is buffered, not paused and resumed per read."""

from __future__ import annotations

import asyncio
import random
import struct

import aiokafka.conn
import pytest

from consumer import kafka_io, kafka_reader
from consumer.kafka_reader import ChunkedStreamReader

pytestmark = pytest.mark.asyncio


class Transport:
    """Counts the flow control a reader asks for."""

    def __init__(self) -> None:
        self.pauses = 0
        self.resumes = 0

    def pause_reading(self) -> None:
        self.pauses += 1

    def resume_reading(self) -> None:
        self.resumes += 1


def frames(rng: random.Random, count: int) -> list[bytes]:
    sizes = [0, 1, 3, 4, 5, 70_000, 300_000, 3_000_000]
    return [rng.randbytes(rng.choice(sizes)) for _ in range(count)]


def wire(bodies: list[bytes]) -> bytes:
    return b"".join(struct.pack(">i", len(b)) + b for b in bodies)


def cuts(rng: random.Random, data: bytes) -> list[bytes]:
    """The stream as a socket may deliver it: pieces of 1 byte to 300 KB."""
    out, at = [], 0
    while at < len(data):
        step = rng.choice([1, 2, 7, 4096, 65_536, 262_144, 300_000])
        out.append(data[at : at + step])
        at += step
    return out


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    got = []
    for _ in range(count):
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        got.append(await reader.readexactly(size))
    return got


@pytest.mark.parametrize("seed", range(5))
async def test_frames_come_out_whole_and_in_order_however_the_socket_cut_them(
    seed: int,
) -> None:
    rng = random.Random(seed)
    bodies = frames(rng, 30)
    reader = ChunkedStreamReader()
    reader.set_transport(Transport())  # type: ignore[arg-type]
    reading = asyncio.ensure_future(read_frames(reader, len(bodies)))
    for piece in cuts(rng, wire(bodies)):
        reader.feed_data(piece)
        if rng.random() < 0.3:
            await asyncio.sleep(0)  # the reader runs between some socket reads
    reader.feed_eof()
    assert await reading == bodies
    assert reader.at_eof()


async def test_a_stream_cut_short_says_what_it_had() -> None:
    reader = ChunkedStreamReader()
    reader.feed_data(b"abc")
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError) as raised:
        await reader.readexactly(10)
    assert raised.value.partial == b"abc" and raised.value.expected == 10


async def test_a_large_response_is_buffered_and_wakes_its_reader_once() -> None:
    """asyncio's StreamReader (64 KB limit) pauses and resumes the socket after every
    read of a 30 MB fetch response and wakes its reader for each: ~120 times."""
    body = random.Random(1).randbytes(30_000_000)
    reader = ChunkedStreamReader()
    transport = Transport()
    reader.set_transport(transport)  # type: ignore[arg-type]
    reader.feed_data(struct.pack(">i", len(body)))
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    wakes = 0
    waiting = asyncio.ensure_future(reader.readexactly(size))
    await asyncio.sleep(0)
    original = reader._wakeup_waiter  # type: ignore[attr-defined]

    def counted() -> None:
        nonlocal wakes
        wakes += reader._waiter is not None  # type: ignore[attr-defined]
        original()

    reader._wakeup_waiter = counted  # type: ignore[attr-defined, method-assign]
    for at in range(0, len(body), 262_144):
        reader.feed_data(body[at : at + 262_144])
    assert await waiting == body
    assert (transport.pauses, wakes) == (0, 1)
    # Data beyond what anyone waits for still pauses the socket (flow control holds).
    reader.feed_data(bytes(300_000))
    assert transport.pauses == 1


async def test_every_aiokafka_connection_reads_with_it() -> None:
    """The hook into aiokafka's internals is still where it was (aiokafka < 0.15)."""
    kafka_reader.install()  # idempotent; kafka_io installed it at import already
    assert kafka_io is not None
    protocol_class = aiokafka.conn.AIOKafkaProtocol
    assert getattr(protocol_class, "tfstream_chunked", False)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=aiokafka.conn.READER_LIMIT, loop=loop)
    protocol_class(loop.create_future(), reader, loop=loop)
    assert isinstance(reader, ChunkedStreamReader)
