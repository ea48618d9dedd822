"""API key, CORS and the body limit, on the app with a fake backend (no models, no broker)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from consumer.protocol import ModelFacts, ModelState
from engines.errors import ModelNotFound
from http_bridge import session
from http_bridge.app import create_app
from http_bridge.backends import DetectCall
from http_bridge.settings import BridgeSettings


class FakeBackend:
    def __init__(self) -> None:
        self.loads: list[tuple[str | None, bool]] = []
        self.detected = 0

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

    async def load(self, name: str | None, force: bool = False) -> None:
        self.loads.append((name, force))

    async def detect(self, call: DetectCall) -> dict[str, Any]:
        self.detected += 1
        return {"bounding-boxes": [], "ImageName": call.image_name, "width": 1, "height": 1}

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


def client(**settings: Any) -> httpx.AsyncClient:
    app = create_app(BridgeSettings(**settings), backend=FakeBackend())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge")


def flat(routes: list[Any]) -> list[Any]:
    """Routes, those of included routers too (FastAPI keeps an included router whole)."""
    out = []
    for route in routes:
        included = getattr(route, "original_router", None)
        out += flat(included.routes) if included is not None else [route]
    return out


def every_route(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app has, path parameters filled in: a route
    added later is covered without changing the tests."""
    calls = []
    for route in flat(app.routes):
        methods: set[str] | None = getattr(route, "methods", None)
        assert methods is not None, f"a route without methods: {route!r}"
        path = str(route.path).replace("{model_name}", "m")
        assert "{" not in path, f"fill in the parameter of {path}"
        calls += [(method, path) for method in sorted(methods)]
    return calls


def call(c: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    """Each route with a body that would pass validation, so that only the key decides."""
    image = {"files": {"input_data": ("a.jpg", b"x", "image/jpeg")}}
    bodies: dict[str, dict[str, Any]] = {
        "/detect": {"files": {"image": ("a.jpg", b"x", "image/jpeg")}, "data": {"model": "m"}},
        "/get_labels": {"data": {"model": "m"}},
        "/login": {"data": {"key": "not the key"}},
        "/models/m/predict": image,
        "/models/m/predict_batch": image,
        "/models/m/predict_image": image,
    }
    body = bodies.get(path, {}) if method == "POST" else {}
    query = "?force=true" if path.endswith("/load") and path != "/load" else ""
    return c.request(method, path + query, **body, **kwargs)


def refused(r: httpx.Response) -> bool:
    """The key check's answer (POST /login's own 401 for a wrong key is a page)."""
    if r.status_code != 401 or not r.headers["content-type"].startswith("application/json"):
        return False
    assert r.json()["code"] == "unauthorized", r.text
    return True


OPEN = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/metrics", "/login"}
OPEN |= {"/health/live", "/health/ready"}
PAGES = {"/streams", "/streams/events"}


@pytest.mark.asyncio
async def test_every_route_needs_the_key_and_the_cookie_opens_only_the_live_page() -> None:
    backend = FakeBackend()
    app = create_app(BridgeSettings(api_key="s3cret"), backend=backend)
    routes = every_route(app)
    assert {p for _, p in routes} >= {"/load", "/models/m/load", "/models/m/predict"} | PAGES
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as c:
        signed_in = await c.post("/login", data={"key": "s3cret", "next": "/streams"})
        assert signed_in.status_code == 303 and session.COOKIE in c.cookies
        for method, path in routes:
            with_cookie = await call(c, method, path)
            opened = path in OPEN or (path in PAGES and method in ("GET", "HEAD"))
            assert refused(with_cookie) is not opened, (method, path, with_cookie.text)
        assert backend.loads == [] and backend.detected == 0  # the cookie ran nothing
        c.cookies.clear()
        for method, path in routes:
            alone = await call(c, method, path)
            assert refused(alone) is (path not in OPEN), (method, path)
            keyed = await call(c, method, path, headers={"X-API-Key": "s3cret"})
            assert not refused(keyed), (method, path, keyed.text)
        assert (None, False) in backend.loads and ("m", True) in backend.loads
        assert backend.detected > 0


@pytest.mark.asyncio
async def test_a_browser_is_sent_to_sign_in_only_where_the_cookie_will_open_the_page() -> None:
    async with client(api_key="s3cret") as c:
        page = await c.get("/streams", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/streams"
        # /models would answer 401 after signing in too: no round trip through the form.
        models = await c.get("/models", headers={"Accept": "text/html"})
        assert models.status_code == 401 and models.json()["code"] == "unauthorized"


@pytest.mark.parametrize(
    "token",
    [
        "\u00b2.abc",  # a superscript two: isdigit() says yes, int() says no
        "\u0663\u0663.abc",  # Arabic-Indic digits: int() takes them, a token never has them
        "9" * 5000 + ".abc",  # past int()'s digit limit
        "{expires}.\u00e9" + "0" * 63,  # a non-ASCII MAC: compare_digest raises on it
        "{expires}." + "\u0663" * 64,
        "{expires}",
        "",
        ".",
    ],
    ids=[
        "superscript",
        "arabic-indic",
        "huge",
        "mac-latin",
        "mac-arabic",
        "no-mac",
        "empty",
        "dot",
    ],
)
def test_session_valid_refuses_what_it_cannot_parse_without_raising(token: str) -> None:
    key = b"s3cret"
    expires = int(time.time()) + 60
    assert session.valid(key, token.format(expires=expires)) is False
    assert session.valid(key, session.issue(key)) is True


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
