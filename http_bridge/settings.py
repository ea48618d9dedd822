"""Everything `tfstream-bridge` can be told, as one settings object."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr

from consumer.settings import EngineSettings, KafkaClientSettings
from engines.settings import LoggingSettings, SettingsPart, cli_config
from engines.tracing import TracingSettings


class HttpServerSettings(SettingsPart):
    """Where and how the bridge listens, and who may call it."""

    group_title: ClassVar[str] = "HTTP server"

    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = Field(default=4343, ge=0, le=65535)
    """Port to listen on (the old API's port)."""
    https_certfile: Path | None = None
    """Serve HTTPS with this PEM certificate (chain); needs --https-keyfile. (--ssl-certfile
    is the client certificate for Kafka's mutual TLS.)"""
    https_keyfile: Path | None = None
    """Private key of --https-certfile."""
    max_request_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    """Largest HTTP request body accepted (413 beyond, before reading it all)."""
    api_key: SecretStr = SecretStr("")
    """If set, every call except /docs, /openapi.json, /metrics and /health/* needs this
    key: in the X-API-Key header or as Authorization: Bearer. A browser signs in once at
    /login for the live page: its session cookie opens /streams and /streams/events only."""
    cors_origins: str = ""
    """Comma-separated origins allowed by CORS ('*' for any); empty turns CORS off."""

    @property
    def scheme(self) -> str:
        return "https" if self.https_certfile else "http"


class BridgeSettings(
    LoggingSettings, TracingSettings, EngineSettings, KafkaClientSettings, HttpServerSettings
):
    """tfstream-bridge: the REST API of the old inference server. With --bootstrap
    every call becomes a Kafka request answered by tfstream-consumer workers; without
    it the bridge runs the worker in-process over the models of --repository (embedded).
    Every option is also an environment variable TFSTREAM_<OPTION>."""

    model_config = cli_config("tfstream-bridge")
    group_titles: ClassVar[dict[str, str]] = {
        "Engine": "Embedded engine (without --bootstrap)",
        "Kafka": "Kafka (with --bootstrap)",
        "Kafka TLS/SASL": "Kafka TLS/SASL (with --bootstrap)",
    }

    answer_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for a model's answer to one HTTP call before answering 504."""
    send_timeout_s: float = Field(default=5.0, gt=0)
    """Kafka mode: longest wait to hand a request to the broker before answering 503."""

    @property
    def embedded(self) -> bool:
        return not self.bootstrap
