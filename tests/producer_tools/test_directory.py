"""The directory's view of announcements (no broker: records are applied as read)."""

from __future__ import annotations

import time

import pytest

from consumer.protocol import Announcement, ModelFacts, ModelState, announcement_key
from consumer.settings import KafkaClientSettings
from engines.catalogue import model_hash
from engines.errors import ModelNotFound, ModelUnavailable
from producer_tools.directory import ModelDirectory


def announce(directory: ModelDirectory, worker: str, facts: ModelFacts, age_ms: int = 0) -> None:
    now = int(time.time() * 1000)
    a = Announcement(facts, worker=worker, updated_ms=now - age_ms, ttl_ms=30_000)
    directory._apply(announcement_key(facts.name, worker), a.to_json())


def facts(name: str, state: ModelState, version: int, **more: object) -> ModelFacts:
    return ModelFacts(
        name, model_hash(name), state, version=version, fingerprint=f"f{version}", **more
    )  # type: ignore[arg-type]


def test_the_view_is_the_newest_ready_version_and_resolve_takes_name_or_hash() -> None:
    directory = ModelDirectory(KafkaClientSettings(bootstrap="127.0.0.1:1"))
    announce(directory, "w1", facts("m", ModelState.READY, 1, labels=["a"]))
    announce(directory, "w2", facts("m", ModelState.READY, 2, labels=["a"]))
    failed = {"code": "model_load_failed", "message": "broken"}
    announce(directory, "w3", facts("m", ModelState.FAILED, 3, error=failed))
    announce(directory, "w1", facts("gone", ModelState.READY, 1), age_ms=60_000)

    view = directory.view("m")
    assert (view.state, view.version, view.fingerprint, view.labels, view.error) == (
        ModelState.READY,
        2,
        "f2",
        ["a"],
        None,
    )
    assert directory.names() == ["m"]
    assert directory.resolve(model_hash("m")) == "m"
    # An announcement that aged out still resolves (requests wait in Kafka), but has no view.
    assert directory.resolve(model_hash("gone")) == "gone"
    with pytest.raises(ModelUnavailable):
        directory.view("gone")
    with pytest.raises(ModelNotFound, match="no model named or hashed"):
        directory.resolve(model_hash("never"))


def test_a_model_failed_everywhere_shows_the_error_and_no_version() -> None:
    directory = ModelDirectory(KafkaClientSettings(bootstrap="127.0.0.1:1"))
    error = {"code": "model_load_failed", "message": "broken"}
    announce(directory, "w1", facts("m", ModelState.FAILED, 3, error=error))
    view = directory.view("m")
    assert (view.state, view.version, view.fingerprint, view.error) == (
        ModelState.FAILED,
        0,
        "",
        error,
    )
    failure = directory.failed_everywhere("m")
    assert failure is not None and failure.code == "model_load_failed"
