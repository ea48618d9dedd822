"""API key, CORS and the body limit, on the app with a fake backend (no models, no broker)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from consumer.protocol import ModelFacts, ModelState
from engines.errors import ModelNotFound
from http_bridge import session
from http_bridge.app import create_app
from http_bridge.backends import DetectCall
from http_bridge.settings import BridgeSettings


class FakeBackend:
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def names(self) -> list[str]:
        return ["m"]

    def resolve(self, name_or_hash: str) -> str:
        if name_or_hash != "m":
            raise ModelNotFound(f"no model named or hashed '{name_or_hash}'")
        return "m"

    def info(self, name: str) -> ModelFacts:
        return ModelFacts(
            "m",
            "h",
            ModelState.READY,
            config={"framework": "tf", "type": "d", "network": "n"},
            labels=["a"],
            label_hashes={"a": "ha"},
        )

    async def load(self, name: str | None, force: bool = False) -> None: ...

    async def detect(self, call: DetectCall) -> dict[str, Any]:
        return {"bounding-boxes": [], "ImageName": call.image_name, "width": 1, "height": 1}

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


def client(**settings: Any) -> httpx.AsyncClient:
    app = create_app(BridgeSettings(**settings), backend=FakeBackend())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge")


@pytest.mark.asyncio
async def test_api_key_guards_everything_but_docs_and_probes() -> None:
    async with client(api_key="s3cret") as c:
        refused = await c.get("/models")
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        assert (await c.get("/models", headers={"X-API-Key": "wrong"})).status_code == 401
        assert (await c.get("/models", headers={"X-API-Key": "s3cret"})).status_code == 200
        assert (
            await c.get("/models", headers={"Authorization": "Bearer s3cret"})
        ).status_code == 200
        for open_path in ("/docs", "/openapi.json", "/health/live", "/health/ready", "/metrics"):
            assert (await c.get(open_path)).status_code == 200, open_path


@pytest.mark.asyncio
async def test_a_browser_signs_in_once_and_the_live_page_and_its_events_open() -> None:
    async with client(api_key="s3cret") as c:
        page = await c.get("/streams", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/streams"
        assert (await c.get("/login?next=/streams")).status_code == 200
        wrong = await c.post("/login", data={"key": "nope", "next": "/streams"})
        assert wrong.status_code == 401 and session.COOKIE not in wrong.cookies
        assert (await c.get("/streams/events")).status_code == 401
        right = await c.post("/login", data={"key": "s3cret", "next": "/streams"})
        assert right.status_code == 303 and right.headers["location"] == "/streams"
        cookie = right.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert "s3cret" not in cookie  # a signed expiry, not the key
        assert (await c.get("/streams")).status_code == 200  # the client kept the cookie
        async with c.stream("GET", "/streams/events") as events:
            assert events.status_code == 200
            assert events.headers["content-type"].startswith("text/event-stream")
        # The cookie opens pages and event streams, never a call that runs a model.
        files = {"input_data": ("a.jpg", b"x", "image/jpeg")}
        assert (await c.post("/models/m/predict", files=files)).status_code == 401


@pytest.mark.asyncio
async def test_a_forged_or_expired_session_and_a_foreign_redirect_are_refused() -> None:
    key = b"s3cret"
    async with client(api_key="s3cret") as c:
        expired = session.issue(key, now=time.time() - session.LIFETIME_S - 1)
        forged = session.issue(b"another key")
        for token in (expired, forged, "9999999999.00", "garbage"):
            c.cookies.set(session.COOKIE, token)
            assert (await c.get("/streams")).status_code == 401, token
        c.cookies.set(session.COOKIE, session.issue(key))
        assert (await c.get("/streams")).status_code == 200
        away = await c.post("/login", data={"key": "s3cret", "next": "//evil.example/x"})
        assert away.headers["location"] == "/streams"


@pytest.mark.asyncio
async def test_no_api_key_means_open() -> None:
    async with client() as c:
        assert (await c.get("/models")).status_code == 200


@pytest.mark.asyncio
async def test_cors_is_off_unless_configured() -> None:
    async with client() as c:
        r = await c.get("/models", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in r.headers
    async with client(cors_origins="https://app.example") as c:
        r = await c.get("/models", headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await c.get("/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.asyncio
async def test_body_limit_by_declared_length() -> None:
    async with client(max_request_bytes=1000) as c:
        r = await c.post("/models/m/predict", files={"input_data": ("x.jpg", b"x" * 5000)})
        assert r.status_code == 413 and r.json()["code"] == "request_too_large"
        ok = await c.post("/models/m/predict", files={"input_data": ("x.jpg", b"x" * 100)})
        assert ok.status_code == 200 and ok.json()["data"] == {"bounding-boxes": []}


@pytest.mark.asyncio
async def test_unknown_route_keeps_the_envelope() -> None:
    async with client() as c:
        r = await c.get("/no/such/thing")
        assert r.status_code == 404 and r.json() == {
            "success": False,
            "data": None,
            "error": "Not Found",
            "code": "not_found",
        }
