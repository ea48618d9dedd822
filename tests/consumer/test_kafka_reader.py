"""The Kafka connection reader: frames come out whole and in order however the
socket cut them, and a large response is buffered, not paused and resumed per read."""

from __future__ import annotations

import asyncio
import random
import ssl
import struct
from pathlib import Path

import aiokafka.conn
import pytest

from consumer import kafka_io, kafka_reader
from consumer.kafka_reader import ChunkedStreamReader
from deploy.local.security import make_tls_files

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


async def test_an_error_on_the_connection_reaches_the_waiting_reader() -> None:
    """aiokafka's protocol calls `set_exception` when the socket fails: the pending
    read raises it instead of waiting for ever, and so does the next one."""
    reader = ChunkedStreamReader()
    reader.feed_data(b"\x00\x00")
    waiting = asyncio.ensure_future(reader.readexactly(4))
    await asyncio.sleep(0)
    reader.set_exception(ConnectionResetError("peer gone"))
    with pytest.raises(ConnectionResetError):
        await waiting
    with pytest.raises(ConnectionResetError):
        await reader.readexactly(1)


async def test_a_paused_socket_is_resumed_when_the_reader_waits_for_more() -> None:
    """Paused with data nobody waited for, then a read for more than is buffered:
    the socket must be resumed, or the reader waits for data that never comes."""
    reader = ChunkedStreamReader()
    transport = Transport()
    reader.set_transport(transport)  # type: ignore[arg-type]
    reader.feed_data(bytes(200_000))
    assert transport.pauses == 1
    waiting = asyncio.ensure_future(reader.readexactly(500_000))
    await asyncio.sleep(0)
    assert transport.resumes == 1 and not waiting.done()
    reader.feed_data(bytes(300_000))
    assert len(await waiting) == 500_000
    assert transport.pauses == 1  # the awaited response itself never pauses the socket


def tls_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    files = make_tls_files(tmp, [])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(files.server_cert, files.server_key)
    client = ssl.create_default_context(cafile=str(files.ca))
    return server, client


@pytest.mark.parametrize("secured", [False, True], ids=["plaintext", "tls"])
async def test_a_real_connection_delivers_every_frame_and_its_flow_control_holds(
    secured: bool, tmp_path: Path
) -> None:
    """Through aiokafka's own protocol class on a loopback socket (TLS too: its
    transport delivers decrypted data even after a pause): ~30 MB of frames sent
    at once reach a slow reader whole and in order, and what is buffered stays
    bounded (the socket is paused, the sender held back) instead of growing to
    all of it."""
    rng = random.Random(7)
    bodies = frames(rng, 40)
    data = wire(bodies)
    server_tls, client_tls = tls_contexts(tmp_path) if secured else (None, None)

    async def send_all(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(send_all, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=aiokafka.conn.READER_LIMIT, loop=loop)
    protocol = aiokafka.conn.AIOKafkaProtocol(loop.create_future(), reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", port, ssl=client_tls)
    try:
        assert isinstance(reader, ChunkedStreamReader)
        most = 0
        got = []
        for _ in bodies:
            await asyncio.sleep(0.005)  # a slow reader: the sender is faster
            most = max(most, reader._size)
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            got.append(await reader.readexactly(size))
        assert got == bodies
        assert await reader.read() == b"" and reader.at_eof()
        # Bounded by the largest frame plus what a paused transport still hands on,
        # far below the ~30 MB sent.
        assert most < max(len(b) for b in bodies) + 4 * 1024 * 1024, most
        assert len(data) > 20_000_000
    finally:
        transport.close()
        server.close()
        await server.wait_closed()
