"""The bridge's error envelope: what a client sees when something unexpected breaks."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI

from http_bridge import errors


@pytest.mark.asyncio
async def test_an_unexpected_exception_is_a_500_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("password=hunter2 at /srv/secret/path")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "internal_error" and body["success"] is False
    assert "hunter2" not in json.dumps(body) and "RuntimeError" not in json.dumps(body)
    assert "hunter2" in caplog.text  # the details are in the log
