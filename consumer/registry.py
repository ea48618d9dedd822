"""The models this worker serves, the version of each, and its state.

A model that fails to load is kept as FAILED with its error: requests for it
are answered with that error, and the other models keep serving. Models the
worker was not told to serve are never loaded, so TensorFlow is imported only
when at least one served model needs it.

A reload (forced, or a new version folder found by `refresh`) loads the new
weights beside the old ones, warms them with one call, and swaps: requests
keep going to the old weights until the swap, and jobs already holding the
old detector finish on it (it is freed when the last of them lets go). A
reload that fails keeps the old weights serving and records the failed
version beside them (`Entry.failed`); a folder that failed is tried again
only once its files change, since it may have been caught half-copied.
"""

from __future__ import annotations

import copy
import logging
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from consumer.protocol import Announcement, ModelFacts, ModelState
from consumer.settings import EngineSettings
from engines.catalogue import Catalogue
from engines.detector import (
    Detector,
    EngineFactory,
    configured_engine,
    engine_factory,
    load_detector,
)
from engines.errors import ModelNotFound, ModelUnavailable, TfstreamError
from engines.repository import ModelRepository, ModelSpec, model_hash, weights_fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailedVersion:
    """A version that could not be loaded beside the one serving."""

    version: int
    error: TfstreamError
    signature: tuple[int, int] = (0, 0)
    """The folder's `ModelRepository.signature` when it failed."""


@dataclass(frozen=True)
class Entry:
    name: str
    state: ModelState
    spec: ModelSpec | None = None
    detector: Detector | None = None
    error: TfstreamError | None = None
    fingerprint: str = ""
    """Of the weights serving (`weights_fingerprint`); empty before any loaded."""
    failed: FailedVersion | None = None
    """The last version that failed to load (beside these weights, or instead of any)."""

    @property
    def version(self) -> int:
        """The version serving, or being loaded (0: unknown yet)."""
        return self.spec.version if self.spec is not None else 0


class ModelRegistry(Catalogue):
    def __init__(
        self,
        repository: ModelRepository,
        served: list[str] | None,
        device: str = "auto",
        factory: EngineFactory = configured_engine,
        load_threads: int = 2,
    ) -> None:
        """`served`: the model names to serve, or None for every model of the repository;
        `device` is passed to `factory` as requested ("auto", "cpu", "GPU:1");
        `load_threads`: models loaded at once by `load_all`."""
        self.repository = repository
        self._served = served
        self._device = device
        self._factory = factory
        self._load_threads = max(1, load_threads)
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._model_locks: dict[str, threading.Lock] = {}

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> ModelRegistry:
        return cls(
            ModelRepository(settings.repository),
            settings.model_names(),
            settings.device,
            engine_factory(settings.simulate_batch_ms),
            settings.load_threads,
        )

    def served_names(self) -> list[str]:
        return list(self._served) if self._served is not None else self.repository.names()

    def names(self) -> list[str]:
        return self.served_names()

    def known(self) -> Iterator[str]:
        """Loaded models answer from memory; only a name this worker has not loaded
        costs a look at the repository folder."""
        yield from list(self._entries)
        yield from self.repository.names()

    def serves(self, name: str) -> bool:
        return name in self.served_names()

    def announce_loading(self) -> list[Entry]:
        """Mark every served model not loaded yet as LOADING (to announce before loading)."""
        with self._lock:
            for name in self.served_names():
                self._entries.setdefault(name, Entry(name, ModelState.LOADING))
            return list(self._entries.values())

    def load_all(self) -> list[Entry]:
        """Load every served model, `load_threads` at a time; blocking (call it from a
        thread). Loading is mostly file reading and graph building, which overlap."""
        names = self.served_names()
        with ThreadPoolExecutor(self._load_threads, thread_name_prefix="load") as pool:
            return list(pool.map(self.load, names))

    def _check_served(self, name: str) -> None:
        if not self.serves(name):
            self.repository.folder(name)  # raises ModelNotFound for unknown names
            raise ModelUnavailable(f"model '{name}' is not served by this worker group")

    def _model_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._model_locks.setdefault(name, threading.Lock())

    def load(self, name: str, force: bool = False, version: int | None = None) -> Entry:
        """Load one served model (again, with `force`; `version`: that version folder,
        default the one to serve); blocking. Never raises for a broken model: the
        entry records the error, and ready weights already serving keep serving.

        Raises:
            ModelNotFound: `name` is not in the repository.
            ModelUnavailable: `name` is in the repository but not served here.
        """
        self._check_served(name)
        with self._model_lock(name):  # one load per model; other models load meanwhile
            current = self._entries.get(name)
            serving = current if current is not None and current.detector is not None else None
            if serving is not None and serving.state is ModelState.READY and not force:
                return serving
            if serving is None:
                self._put(Entry(name, ModelState.LOADING))
            entry = self._load(name, version, serving)
            self._put(entry)
            return entry

    def refresh(self, name: str) -> Entry | None:
        """Roll in the version the repository now says to serve, if it changed; the new
        entry, or None when nothing was (re)loaded. Blocking.

        A version that failed is not tried again until its folder changes. What
        serves is looked at under the model's lock: a refresh that waited there for
        another one loading the same folder finds it serving and loads nothing.

        Raises:
            ModelNotFound: `name` is not in the repository.
            ModelUnavailable: `name` is in the repository but not served here.
        """
        self._check_served(name)
        if not self._needs(name, self._entries.get(name)):
            return None  # the common case (nothing new) takes no lock
        with self._model_lock(name):
            current = self._entries.get(name)
            spec = self._needs(name, current)
            if spec is None:
                return None
            log.info(
                "new model version found",
                extra={
                    "model": name,
                    "version": spec.version,
                    "serving": current and current.version,
                },
            )
            serving = current if current is not None and current.detector is not None else None
            if serving is None:
                self._put(Entry(name, ModelState.LOADING))
            entry = self._load(name, spec.version, serving)
            self._put(entry)
            return entry

    def _needs(self, name: str, current: Entry | None) -> ModelSpec | None:
        """The spec of the version to roll in, or None when `current` serves it, its
        folder failed as it is now, or nothing loadable is there."""
        try:
            spec = self.repository.spec(name)
        except TfstreamError:  # nothing loadable there now: keep what serves
            return None
        if current is not None and current.detector is not None and current.version == spec.version:
            return None
        failed = current.failed if current is not None else None
        if failed is not None and failed.version == spec.version:
            try:
                signature = self.repository.signature(name, spec.version)
            except ModelNotFound:
                return None
            if signature == failed.signature:
                return None
        return spec

    def refresh_all(self) -> list[Entry]:
        """`refresh` every served model; the entries that changed."""
        changed = []
        for name in self.served_names():
            try:
                entry = self.refresh(name)
            except TfstreamError:
                continue
            if entry is not None:
                changed.append(entry)
        return changed

    def _put(self, entry: Entry) -> None:
        with self._lock:
            self._entries[entry.name] = entry

    def _load(self, name: str, version: int | None, serving: Entry | None) -> Entry:
        """Load beside `serving` (the entry whose weights serve now, if any)."""
        spec: ModelSpec | None = None
        try:
            spec = self.repository.spec(name, version)
            detector = load_detector(spec, self._device, factory=self._factory)
            fingerprint = weights_fingerprint(spec.weights)
        except TfstreamError as caught:
            exc = detached(caught)
            failed_version = spec.version if spec is not None else (version or 0)
            log.error(
                "model failed to load",
                extra={
                    "model": name,
                    "version": failed_version,
                    "code": exc.code,
                    "error": exc.message,
                    "still_serving": serving.version if serving is not None else None,
                },
            )
            failed = FailedVersion(failed_version, exc, self._signature(name, failed_version))
            if serving is not None:  # the old weights keep answering
                return replace(serving, failed=failed)
            return Entry(name, ModelState.FAILED, spec=spec, error=exc, failed=failed)
        log.info(
            "model ready",
            extra={
                "model": name,
                "version": spec.version,
                "fingerprint": fingerprint,
                "device": detector.device,
                "load_s": round(detector.load_s, 2),
                "batch": detector.engine.fixed_batch or "any",
                "replaces": serving.version if serving is not None else None,
            },
        )
        return Entry(name, ModelState.READY, spec=spec, detector=detector, fingerprint=fingerprint)

    def _signature(self, name: str, version: int) -> tuple[int, int]:
        try:
            return self.repository.signature(name, version)
        except TfstreamError:
            return (0, 0)

    def detector(self, name: str) -> Detector:
        """The ready detector for `name`.

        Raises:
            ModelNotFound: no such model in the repository.
            ModelUnavailable: not served here, or still loading.
            ModelLoadFailed / InvalidModelConfig: it failed to load (the original error).
        """
        entry = self._entries.get(name)
        if entry is not None and entry.detector is not None:
            return entry.detector
        if entry is not None and entry.error is not None:
            # A copy: the kept error, raised itself, would gather the frames of every
            # request that asked (and their images) in its traceback, for good.
            raise copy.copy(entry.error)
        if entry is not None:
            raise ModelUnavailable(f"model '{name}' is still loading")
        if not self.serves(name):
            self.repository.folder(name)
            raise ModelUnavailable(f"model '{name}' is not served by this worker group")
        raise ModelUnavailable(f"model '{name}' is not loaded yet")

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

    def entry(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def facts(self, name: str) -> ModelFacts:
        """The model as this process serves it (the embedded bridge answers from this).

        Raises:
            ModelNotFound, InvalidModelConfig: see `spec`.
        """
        entry = self._entries.get(name) or Entry(name, ModelState.LOADING)
        facts = model_facts(replace(entry, spec=self.spec(name)))
        return facts if entry.detector is not None else replace(facts, version=0)

    def announcement(self, entry: Entry, worker: str, ttl_ms: int) -> Announcement:
        return Announcement(
            model_facts(entry),
            worker=worker,
            device=entry.detector.device if entry.detector else "",
            ttl_ms=ttl_ms,
            versions=versions(entry),
        )


def detached(error: TfstreamError) -> TfstreamError:
    """`error` without what pins the failed load: the frames of its traceback and of
    the errors chained to it (`raise ... from exc`) are cleared and let go. Their
    locals hold the engine being built (its graph; on a GPU, its memory), and the
    error is kept for as long as the version stays failed. What an answer or an
    announcement needs, the code and the message, stays."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if link.__traceback__ is not None:
            traceback.clear_frames(link.__traceback__)
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    error.__cause__ = None
    error.__context__ = None
    error.__suppress_context__ = True
    return error


def model_facts(entry: Entry) -> ModelFacts:
    spec = entry.spec
    return ModelFacts(
        name=entry.name,
        hash=model_hash(entry.name),
        state=entry.state,
        engine=spec.engine.value if spec else "",
        config=spec.config.model_dump(mode="json") if spec else {},
        labels=[label for _, label in sorted(spec.labels.items())] if spec else [],
        label_hashes=spec.label_hashes() if spec else {},
        error=entry.error.to_dict() if entry.error else None,
        version=entry.version,
        fingerprint=entry.fingerprint,
    )


def versions(entry: Entry) -> list[dict[str, Any]]:
    """Each version this worker knows of the model: the one serving (or loading, or
    failed) and a newer one that failed beside it, with its error."""
    out: list[dict[str, Any]] = []
    if entry.detector is not None or entry.failed is None:
        out.append(
            {"version": entry.version, "state": entry.state.value, "fingerprint": entry.fingerprint}
        )
    if entry.failed is not None:
        out.append(
            {
                "version": entry.failed.version,
                "state": ModelState.FAILED.value,
                "error": entry.failed.error.to_dict(),
            }
        )
    return out
