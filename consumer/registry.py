"""The models this worker serves, and the state of each.

A model that fails to load is kept as FAILED with its error: requests for it
are answered with that error, and the other models keep serving. Models the
worker was not told to serve are never loaded, so TensorFlow is imported only
when at least one served model needs it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from consumer.protocol import Announcement, ModelState
from consumer.settings import EngineSettings
from engines.detector import (
    Detector,
    EngineFactory,
    configured_engine,
    engine_factory,
    load_detector,
)
from engines.errors import ModelUnavailable, TfstreamError
from engines.repository import ModelRepository, ModelSpec, model_hash

log = logging.getLogger(__name__)


@dataclass
class Entry:
    name: str
    state: ModelState
    spec: ModelSpec | None = None
    detector: Detector | None = None
    error: TfstreamError | None = None


class ModelRegistry:
    def __init__(
        self,
        repository: ModelRepository,
        served: list[str] | None,
        device: str = "auto",
        factory: EngineFactory = configured_engine,
    ) -> None:
        """`served`: the model names to serve, or None for every model of the repository;
        `device` is passed to `factory` as requested ("auto", "cpu", "GPU:1")."""
        self.repository = repository
        self._served = served
        self._device = device
        self._factory = factory
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> ModelRegistry:
        return cls(
            ModelRepository(settings.repository),
            settings.model_names(),
            settings.device,
            engine_factory(settings.simulate_batch_ms),
        )

    def served_names(self) -> list[str]:
        return list(self._served) if self._served is not None else self.repository.names()

    def serves(self, name: str) -> bool:
        return name in self.served_names()

    def load_all(self) -> list[Entry]:
        """Load every served model; blocking (call it from a thread)."""
        return [self.load(name) for name in self.served_names()]

    def load(self, name: str, force: bool = False) -> Entry:
        """Load one served model (again, with `force`); blocking. Never raises for
        a broken model: the entry records the error.

        Raises:
            ModelNotFound: `name` is not in the repository.
            ModelUnavailable: `name` is in the repository but not served here.
        """
        if not self.serves(name):
            self.repository.folder(name)  # raises ModelNotFound for unknown names
            raise ModelUnavailable(f"model '{name}' is not served by this worker group")
        with self._lock:
            current = self._entries.get(name)
            if current is not None and current.state is ModelState.READY and not force:
                return current
            self._entries[name] = Entry(name, ModelState.LOADING)
            entry = self._load(name)
            self._entries[name] = entry
            return entry

    def _load(self, name: str) -> Entry:
        spec: ModelSpec | None = None
        try:
            spec = self.repository.spec(name)
            detector = load_detector(spec, self._device, factory=self._factory)
        except TfstreamError as exc:
            log.error(
                "model failed to load",
                extra={"model": name, "code": exc.code, "error": exc.message},
            )
            return Entry(name, ModelState.FAILED, spec=spec, error=exc)
        log.info(
            "model ready",
            extra={
                "model": name,
                "device": detector.device,
                "load_s": round(detector.load_s, 2),
                "batch": detector.engine.fixed_batch or "any",
            },
        )
        return Entry(name, ModelState.READY, spec=spec, detector=detector)

    def detector(self, name: str) -> Detector:
        """The ready detector for `name`.

        Raises:
            ModelNotFound: no such model in the repository.
            ModelUnavailable: not served here, or still loading.
            ModelLoadFailed / InvalidModelConfig: it failed to load (the original error).
        """
        entry = self._entries.get(name)
        if entry is not None and entry.detector is not None and entry.state is ModelState.READY:
            return entry.detector
        if entry is not None and entry.error is not None:
            raise entry.error
        if entry is not None:
            raise ModelUnavailable(f"model '{name}' is still loading")
        if not self.serves(name):
            self.repository.folder(name)
            raise ModelUnavailable(f"model '{name}' is not served by this worker group")
        raise ModelUnavailable(f"model '{name}' is not loaded yet")

    def resolve(self, name_or_hash: str) -> str:
        """A model name from a name or hash. Loaded models answer from memory; only
        a name this worker has not loaded costs a look at the repository folder.

        Raises:
            ModelNotFound: neither a model name nor the hash of one.
        """
        for entry in self._entries.values():
            if name_or_hash == entry.name or (entry.spec and entry.spec.hash == name_or_hash):
                return entry.name
        return self.repository.resolve(name_or_hash)

    def spec(self, name: str) -> ModelSpec:
        """The model's spec as loaded, or read from its folder if it was not.

        Raises:
            ModelNotFound, InvalidModelConfig: see `ModelRepository.spec`.
        """
        entry = self._entries.get(name)
        return (
            entry.spec
            if entry is not None and entry.spec is not None
            else self.repository.spec(name)
        )

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def announcement(self, entry: Entry, worker: str, ttl_ms: int) -> Announcement:
        spec = entry.spec
        labels = [label for _, label in sorted(spec.labels.items())] if spec else []
        return Announcement(
            model=entry.name,
            worker=worker,
            state=entry.state,
            hash=model_hash(entry.name),
            engine=spec.engine.value if spec else "",
            config=spec.config.model_dump(mode="json") if spec else {},
            labels=labels,
            label_hashes=spec.label_hashes() if spec else {},
            device=entry.detector.device if entry.detector else "",
            error=entry.error.to_dict() if entry.error else None,
            ttl_ms=ttl_ms,
        )
