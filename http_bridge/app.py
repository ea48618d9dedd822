"""The FastAPI application: routes, error mapping, middleware, and the backend's life."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumer.metrics import WorkerMetrics
from consumer.supervision import Supervisor
from http_bridge import errors, session
from http_bridge.backends import Backend
from http_bridge.live import router as live_router
from http_bridge.live import stop_live
from http_bridge.middleware import ApiKey, BodyLimit, HttpMetrics
from http_bridge.routes import router
from http_bridge.settings import BridgeSettings


def make_backend(
    settings: BridgeSettings, registry: CollectorRegistry, supervisor: Supervisor
) -> Backend:
    if settings.embedded:
        from http_bridge.embedded import EmbeddedBackend

        return EmbeddedBackend(settings, WorkerMetrics(registry), supervisor)
    from http_bridge.kafka_backend import KafkaBackend

    return KafkaBackend(settings, supervisor, registry)


def create_app(settings: BridgeSettings, backend: Backend | None = None) -> FastAPI:
    registry = CollectorRegistry()
    supervisor = Supervisor(registry)
    chosen = backend or make_backend(settings, registry, supervisor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await chosen.start()
        try:
            yield
        finally:
            await stop_live(app)
            await chosen.stop()
            await supervisor.stop()

    app = FastAPI(
        title="tfstream",
        version="0.1.0",
        description="Object detection with TensorFlow models: the REST API of the TensorFlow "
        "inference API, served over Kafka workers (or in-process).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.backend = chosen
    app.state.supervisor = supervisor
    app.include_router(router)
    app.include_router(live_router)
    app.include_router(session.router)
    errors.install(app)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # Outermost last: the size limit sees the body first, then the key check.
    app.add_middleware(HttpMetrics, registry=registry)
    if settings.api_key:
        app.add_middleware(ApiKey, key=settings.api_key.get_secret_value())
    if settings.cors_origins:
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app
