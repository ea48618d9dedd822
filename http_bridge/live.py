"""The live camera page: GET /streams, fed by Server-Sent Events on /streams/events.

SSE rather than WebSocket: the data only flows to the browser, EventSource
reconnects by itself, and it is plain HTTP through any proxy. The Kafka reader
(`producer_tools.live.LiveStreams`) starts with the first viewer, not with the
bridge, so a bridge nobody watches reads no frames. In embedded mode there are
no topics to watch; the page says so instead of showing nothing.

Both routes stay out of the OpenAPI schema: an endless event stream is not an
API call (and would stall a schema fuzzer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from engines.errors import ServiceUnavailable
from http_bridge.live_page import EMBEDDED_MESSAGE, page
from producer_tools.live import LiveStreams

router = APIRouter()

#: One event stream lasts this long, then the browser reconnects (EventSource does it by
#: itself): a shutting-down bridge never waits long on open streams.
STREAM_S = 15.0
KEEPALIVE_S = 5.0


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _live(app: FastAPI) -> LiveStreams:
    """The app's reader, started by the first viewer."""
    lock: asyncio.Lock | None = getattr(app.state, "live_lock", None)
    if lock is None:  # no await since the check: one lock per app
        lock = app.state.live_lock = asyncio.Lock()
    async with lock:
        live: LiveStreams | None = getattr(app.state, "live", None)
        if live is None or not live.running:
            if live is not None:
                await live.stop()  # its reader died: release its consumer first
            live = LiveStreams(app.state.settings)
            await live.start()
            app.state.live = live
        return live


async def stop_live(app: FastAPI) -> None:
    live: LiveStreams | None = getattr(app.state, "live", None)
    if live is not None:
        await live.stop()
        app.state.live = None


@router.get("/streams", response_class=HTMLResponse, include_in_schema=False)
async def streams_page(request: Request) -> HTMLResponse:
    return HTMLResponse(page(kafka=not request.app.state.settings.embedded))


@router.get("/streams/events", include_in_schema=False)
async def stream_events(request: Request) -> StreamingResponse:
    app: FastAPI = request.app

    async def events() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        if app.state.settings.embedded:
            yield _sse("mode", {"mode": "embedded", "message": EMBEDDED_MESSAGE})
            return
        try:
            live = await _live(app)
        except ServiceUnavailable as exc:
            yield _sse("problem", {"code": exc.code, "message": exc.message})
            return
        yield _sse("mode", {"mode": "kafka", "prefix": live.topics.prefix})
        loop = asyncio.get_running_loop()
        ends = loop.time() + STREAM_S
        version, quiet_since = 0, loop.time()
        while loop.time() < ends and not await request.is_disconnected():
            views = live.changed_since(version)
            version = live.version
            for view in views:
                yield _sse("camera", view.to_dict())
            if views:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= KEEPALIVE_S:
                quiet_since = loop.time()
                yield ": keep-alive\n\n"
            await live.wait_change(version, 1.0)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
