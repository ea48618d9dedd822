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


def test_a_worker_gone_longer_than_forget_ms_is_forgotten_and_its_model_is_404() -> None:
    """The map holds only workers seen lately; a model only such workers served, or
    known only from an old request topic, stops making requests wait."""
    directory = ModelDirectory(KafkaClientSettings(bootstrap="127.0.0.1:1"), forget_ms=60_000)
    now = int(time.time() * 1000)
    for worker, age_ms in (("w-old", 120_000), ("w-recent", 50_000)):
        stopped = Announcement(
            facts("m", ModelState.STOPPED, 1),
            worker=worker,
            updated_ms=now - age_ms,
            forget_ms=60_000,
        )
        directory._apply(announcement_key("m", worker), stopped.to_json())
    # Stopped a while ago, not yet forgotten: requests wait in Kafka (the waiting rule).
    assert directory.expected("m") and directory.resolve("m") == "m"
    with pytest.raises(ModelUnavailable):
        directory.view("m")
    directory._forget()
    assert list(directory._latest) == [announcement_key("m", "w-recent")]
    directory._latest.clear()  # w-recent ages out too
    directory._seen_topics({"tfstream.requests.m"})
    assert directory.expected("m")  # a topic seen just now: a worker may be coming
    directory._topics["tfstream.requests.m"] -= 61  # seen for longer than forget_ms
    assert not directory.expected("m")
    with pytest.raises(ModelNotFound):
        directory.view("m")


def test_a_model_loading_on_one_worker_and_failed_on_another_is_loading() -> None:
    """The failure is newer and names a higher version, yet the model may still come
    up on the worker loading it (requests wait for it): the view says loading, not
    the other worker's error."""
    directory = ModelDirectory(KafkaClientSettings(bootstrap="127.0.0.1:1"))
    announce(directory, "w1", facts("m", ModelState.LOADING, 0), age_ms=1_000)
    error = {"code": "model_load_failed", "message": "broken on w2"}
    announce(directory, "w2", facts("m", ModelState.FAILED, 3, error=error))
    view = directory.view("m")
    assert (view.state, view.version, view.fingerprint, view.error) == (
        ModelState.LOADING,
        0,
        "",
        None,
    )
    assert directory.failed_everywhere("m") is None
    with pytest.raises(ModelUnavailable, match="not ready on any worker"):
        directory.serving("m")
