import asyncio

import pytest

from consumer.batching import CLOSED, collect


@pytest.mark.asyncio
async def test_takes_what_is_queued_up_to_the_limit_without_waiting() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    for i in range(10):
        q.put_nowait(i)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await collect(q, 4, max_delay_s=5.0) == [0, 1, 2, 3]
    assert loop.time() - started < 1.0


@pytest.mark.asyncio
async def test_a_lone_item_waits_at_most_the_delay() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    q.put_nowait(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await collect(q, 8, max_delay_s=0.05) == [1]
    assert 0.04 <= loop.time() - started < 1.0


@pytest.mark.asyncio
async def test_items_arriving_within_the_delay_join_the_batch() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    q.put_nowait(1)
    asyncio.get_running_loop().call_later(0.01, q.put_nowait, 2)
    assert await collect(q, 8, max_delay_s=0.5) == [1, 2]


@pytest.mark.asyncio
async def test_closed_ends_the_batch_and_stays_visible() -> None:
    q: asyncio.Queue[object] = asyncio.Queue()
    q.put_nowait(1)
    q.put_nowait(CLOSED)
    assert await collect(q, 8, max_delay_s=1.0) == [1]
    assert await collect(q, 8, max_delay_s=1.0) == []
    assert await collect(q, 8, max_delay_s=1.0) == []


@pytest.mark.asyncio
async def test_skipped_items_are_dropped_and_take_no_place() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    for i in range(10):
        q.put_nowait(i)
    odd = lambda i: i % 2 == 1  # noqa: E731
    assert await collect(q, 3, max_delay_s=0, skip=lambda i: i < 3 or odd(i)) == [4, 6, 8]
    assert q.qsize() == 1  # 9 was never reached
