"""What the routes need from whoever does the work: a `Backend`.

Two implement it: `embedded.EmbeddedBackend` (the worker pipeline in this
process) and `kafka_backend.KafkaBackend` (Kafka request/reply to workers).
The routes never know which one they talk to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from consumer.protocol import ModelFacts


@dataclass(frozen=True)
class DetectCall:
    """One image to find boxes in, and the caller's overrides (None: the
    model's config.json). One object, so that every backend and every fake
    in the tests takes the same single argument."""

    model: str
    image: bytes
    image_name: str | None = None
    confidence: float | None = None
    predictions: int | None = None


class Backend(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def names(self) -> list[str]:
        """Every model that can be asked for."""
        ...

    def resolve(self, name_or_hash: str) -> str:
        """The backend's `Catalogue.resolve`. Raises ModelNotFound."""
        ...

    def info(self, name: str) -> ModelFacts:
        """Raises ModelNotFound, ModelUnavailable, InvalidModelConfig."""
        ...

    async def load(self, name: str | None, force: bool = False) -> None:
        """Load one model (None: all). Raises the model's load error."""
        ...

    async def detect(self, call: DetectCall) -> dict[str, Any]:
        """The reply's data: bounding-boxes, ImageName, width, height, and model_version
        (the version of the weights that answered). `call.model` is a name `resolve`
        returned: an unknown model has had its 404 there. Raises TfstreamError."""
        ...

    async def ready(self) -> tuple[bool, dict[str, Any]]: ...
