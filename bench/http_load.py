"""Closed-loop HTTP load on the bridge: N clients, each posting its next image as soon
as the previous answer is in, for a fixed time.

Every client is one keep-alive connection, as a real service client would
hold, driven by `PlainHttp`: the load generator shares the machine's two cores
with the bridge, so it should take as little of them as it can. Latency is per
request, from the start of the POST to the parsed answer; throughput is
successful answers over the time from the first request to the last answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.plain_http import PlainHttp
from producer_tools.report import percentile


@dataclass
class HttpLoadResult:
    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.answered / self.duration_s if self.duration_s > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


async def drive(
    url: str,
    images: Sequence[tuple[str, bytes]],
    clients: int,
    seconds: float,
    warmup: int = 0,
    on_start: Callable[[], object] | None = None,
) -> HttpLoadResult:
    """POST multipart `input_data` to `url` from `clients` concurrent clients for `seconds`
    (after `warmup` requests; `on_start` is called when the measured window opens)."""
    result = HttpLoadResult(clients)
    async with contextlib.AsyncExitStack() as stack:
        connections = [await stack.enter_async_context(PlainHttp(url)) for _ in range(clients)]

        async def post(index: int, connection: PlainHttp) -> tuple[bool, str]:
            name, data = images[index % len(images)]
            try:
                status, answer = await connection.predict(name, data)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                return False, type(exc).__name__
            if status != 200:
                return False, f"http_{status}"
            return bool(json.loads(answer).get("success")), "ok"

        async def warm(indices: range, connection: PlainHttp) -> None:
            for index in indices:  # one call at a time per connection
                await post(index, connection)

        if warmup:
            await asyncio.gather(
                *(warm(range(k, warmup, clients), c) for k, c in enumerate(connections))
            )
        if on_start is not None:
            on_start()
        started = time.perf_counter()
        deadline = started + seconds
        last_done = started

        async def user(first: int) -> None:
            nonlocal last_done
            index = first
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                ok, code = await post(index, connections[first])
                t1 = time.perf_counter()
                last_done = max(last_done, t1)
                if ok:
                    result.latencies_ms.append((t1 - t0) * 1000)
                else:
                    result.errors[code] = result.errors.get(code, 0) + 1
                index += clients

        await asyncio.gather(*(user(k) for k in range(clients)))
        result.duration_s = last_done - started
    return result
