"""Everything `tfstream-bridge` can be told, as one settings object."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from consumer.settings import KafkaClientSettings, WorkerSettings
from engines.settings import cli_config
from engines.tracing import TracingSettings


class BridgeSettings(WorkerSettings, KafkaClientSettings, TracingSettings):
    """tfstream-bridge: the REST API of the old inference server. With --bootstrap
    every call becomes a Kafka request answered by tfstream-consumer workers; without
    it the bridge runs the worker in-process over the models of --repository (embedded).
    Every option is also an environment variable TFSTREAM_<OPTION>."""

    model_config = cli_config("tfstream-bridge")

    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = 4343
    """Port to listen on (the old API's port)."""
    request_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for a worker's answer before answering 504."""
    send_timeout_s: float = Field(default=5.0, gt=0)
    """Longest wait to hand a request to the broker before answering 503."""
    max_request_bytes: int = 32 * 1024 * 1024
    """Largest HTTP request body accepted (413 beyond, before reading it all)."""
    api_key: str = ""
    """If set, every call except /docs, /openapi.json and /health/* needs this key in
    the X-API-Key header (or Authorization: Bearer)."""
    https_certfile: Path | None = None
    """Serve HTTPS with this PEM certificate (chain); needs --https-keyfile. (--ssl-certfile
    is the client certificate for Kafka's mutual TLS.)"""
    https_keyfile: Path | None = None
    """Private key of --https-certfile."""
    cors_origins: str = ""
    """Comma-separated origins allowed by CORS ('*' for any); empty turns CORS off."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR."""
    log_format: Literal["json", "text"] = "text"
    """Structured JSON lines, or plain text for a terminal."""

    @property
    def scheme(self) -> str:
        return "https" if self.https_certfile else "http"

    @property
    def embedded(self) -> bool:
        return not self.bootstrap
