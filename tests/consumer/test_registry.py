"""The model registry over a folder of model configs, with engines from a test
factory: no TensorFlow, no broker."""

from __future__ import annotations

import gc
import json
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from consumer.protocol import ModelState
from consumer.registry import ModelRegistry
from consumer.settings import EngineSettings
from engines import errors
from engines.base import Engine
from engines.repository import ModelRepository, ModelSpec, model_hash
from engines.simulated import SimulatedEngine
from tests.consumer.fakes import CountingEngine, write_fake_model


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    write_fake_model(tmp_path, "good")
    write_fake_model(tmp_path, "other")
    write_fake_model(tmp_path, "bad_config", {"inference_engine_name": "tensorflow2_detection"})
    write_fake_model(tmp_path, "crashes")
    return ModelRepository(tmp_path)


class Factory:
    """Builds counting engines; the model named 'crashes' raises as TensorFlow would."""

    def __init__(self) -> None:
        self.built: list[tuple[str, str]] = []

    def __call__(self, spec: ModelSpec, device: str) -> Engine:
        self.built.append((spec.name, device))
        if spec.name == "crashes":
            raise RuntimeError("Op type not registered 'FancyOp'")
        return CountingEngine()


def test_broken_models_fail_alone_and_answer_with_their_error(
    repository: ModelRepository,
) -> None:
    factory = Factory()
    registry = ModelRegistry(repository, None, "cpu", factory)
    states = {e.name: e.state for e in registry.load_all()}
    assert states == {
        "bad_config": ModelState.FAILED,
        "crashes": ModelState.FAILED,
        "good": ModelState.READY,
        "other": ModelState.READY,
    }
    assert ("good", "cpu") in factory.built  # the device is passed as requested
    assert registry.detector("good").engine.device == "/FAKE:0"
    with pytest.raises(errors.InvalidModelConfig):
        registry.detector("bad_config")
    with pytest.raises(errors.ModelLoadFailed, match="FancyOp"):
        registry.detector("crashes")


def test_unknown_unserved_and_unloaded_models_get_distinct_errors(
    repository: ModelRepository,
) -> None:
    registry = ModelRegistry(repository, ["good"], "cpu", Factory())
    with pytest.raises(errors.ModelUnavailable, match="not loaded yet"):
        registry.detector("good")
    registry.load_all()
    with pytest.raises(errors.ModelNotFound):
        registry.detector("ghost")
    with pytest.raises(errors.ModelUnavailable, match="not served"):
        registry.detector("other")
    with pytest.raises(errors.ModelUnavailable):
        registry.load("other")
    with pytest.raises(errors.ModelNotFound):
        registry.load("ghost")
    assert [e.name for e in registry.entries()] == ["good"]


def test_a_loaded_model_is_reused_unless_forced(repository: ModelRepository) -> None:
    factory = Factory()
    registry = ModelRegistry(repository, ["good"], "auto", factory)
    first = registry.load("good")
    assert registry.load("good") is first
    assert registry.load("good", force=True) is not first
    assert [name for name, _ in factory.built] == ["good", "good"]


def test_names_and_hashes_resolve_to_names(repository: ModelRepository) -> None:
    registry = ModelRegistry(repository, None, "cpu", Factory())
    registry.load("good")
    assert registry.resolve("good") == "good"
    assert registry.resolve(model_hash("good")) == "good"  # loaded: from memory
    assert registry.resolve(model_hash("other")) == "other"  # not loaded: from the folder
    with pytest.raises(errors.ModelNotFound):
        registry.resolve("nothing-like-it")


def test_the_announcement_carries_state_hash_labels_and_error(
    repository: ModelRepository,
) -> None:
    registry = ModelRegistry(repository, None, "cpu", Factory())
    entries = {e.name: e for e in registry.load_all()}
    good = registry.announcement(entries["good"], "w1", 30_000)
    assert (good.facts.state, good.facts.hash, good.facts.labels, good.device) == (
        ModelState.READY,
        model_hash("good"),
        ["thing"],
        "/FAKE:0",
    )
    broken = registry.announcement(entries["crashes"], "w1", 30_000)
    assert broken.facts.state is ModelState.FAILED and broken.facts.error is not None
    assert broken.facts.error["code"] == "model_load_failed"


def test_settings_with_simulate_batch_ms_give_every_model_the_simulated_engine(
    repository: ModelRepository,
) -> None:
    settings = EngineSettings(repository=repository.root, models="good", simulate_batch_ms=1)
    registry = ModelRegistry.from_settings(settings)
    (entry,) = registry.load_all()
    assert entry.state is ModelState.READY
    assert isinstance(registry.detector("good").engine, SimulatedEngine)
    assert registry.detector("good").device == "/SIMULATED:0"


# -- versions: TF Serving's <model>/<N>/ layout, reloads beside the serving weights --


def write_versions(root: Path, name: str, versions: list[int], **config: object) -> Path:
    """A versioned model: config.json and labels beside the version folders."""
    folder = root / name
    write_fake_model(root, name)
    (folder / "saved_model.pb").unlink()
    if config:
        body = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**body, **config}))
    for version in versions:
        (folder / str(version)).mkdir()
        (folder / str(version) / "saved_model.pb").write_bytes(f"v{version}".encode())
    return folder


class VersionFactory(Factory):
    """Counting engines; a version whose saved_model.pb says 'corrupt' fails to load,
    and `gate`, when given, holds every load until set (a slow load)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.loading = threading.Event()

    def __call__(self, spec: ModelSpec, device: str) -> Engine:
        self.loading.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if (spec.weights / "saved_model.pb").read_bytes() == b"corrupt":
            raise RuntimeError("saved_model.pb: truncated protobuf")
        return super().__call__(spec, device)


def test_the_highest_complete_version_is_served_unless_pinned(tmp_path: Path) -> None:
    folder = write_versions(tmp_path, "m", [1, 2, 10])
    (folder / "11").mkdir()  # being copied: no weights yet, so not complete
    repository = ModelRepository(tmp_path)
    assert repository.versions("m") == [1, 2, 10, 11]
    assert repository.spec("m").version == 10
    assert repository.spec("m").path == folder / "10"
    write_fake_model(tmp_path, "flat")
    assert repository.spec("flat").version == 1
    pinned = write_versions(tmp_path, "p", [1, 2], version=1)
    assert repository.spec("p").path == pinned / "1"
    # A version's own config.json wins over the one beside the versions.
    own = json.loads((folder / "config.json").read_text())
    (folder / "10" / "config.json").write_text(json.dumps({**own, "confidence": 90}))
    assert repository.spec("m").config.confidence == 90
    assert repository.spec("m", 2).config.confidence == 50


def test_a_new_version_loads_beside_the_old_one_which_answers_until_the_swap(
    tmp_path: Path,
) -> None:
    folder = write_versions(tmp_path, "m", [1])
    gate = threading.Event()
    factory = VersionFactory(gate)
    registry = ModelRegistry(ModelRepository(tmp_path), None, "cpu", factory)
    gate.set()
    old = registry.load("m")
    assert old.version == 1 and old.fingerprint
    (folder / "2").mkdir()
    (folder / "2" / "saved_model.pb").write_bytes(b"v2")
    gate.clear()
    factory.loading.clear()
    with ThreadPoolExecutor(1) as pool:
        refreshing = pool.submit(registry.refresh, "m")
        assert factory.loading.wait(10)
        # Loading v2: v1 still answers, and the model never stops being ready.
        assert registry.detector("m") is old.detector
        assert registry.entry("m").state is ModelState.READY  # type: ignore[union-attr]
        gate.set()
        new = refreshing.result(10)
    assert new is not None and new.version == 2 and new.state is ModelState.READY
    assert registry.detector("m") is new.detector is not old.detector
    assert new.fingerprint != old.fingerprint
    assert registry.refresh("m") is None  # nothing new


def test_a_failed_version_keeps_the_old_one_serving_and_is_retried_only_once_changed(
    tmp_path: Path,
) -> None:
    folder = write_versions(tmp_path, "m", [1])
    registry = ModelRegistry(ModelRepository(tmp_path), None, "cpu", VersionFactory())
    old = registry.load("m")
    (folder / "2").mkdir()
    (folder / "2" / "saved_model.pb").write_bytes(b"corrupt")
    entry = registry.refresh("m")
    assert entry is not None and entry.state is ModelState.READY and entry.version == 1
    assert registry.detector("m") is old.detector
    assert entry.failed is not None and entry.failed.version == 2
    announced = registry.announcement(entry, "w1", 30_000)
    assert announced.facts.state is ModelState.READY and announced.facts.version == 1
    assert announced.facts.error is None
    assert announced.versions == [
        {"version": 1, "state": "ready", "fingerprint": old.fingerprint},
        {
            "version": 2,
            "state": "failed",
            "error": {
                "code": "model_load_failed",
                "message": "m: RuntimeError: saved_model.pb: truncated protobuf",
            },
        },
    ]
    assert registry.refresh("m") is None  # unchanged folder: "not yet", not tried again
    (folder / "2" / "saved_model.pb").write_bytes(b"v2, copied whole")
    fixed = registry.refresh("m")
    assert fixed is not None and fixed.version == 2 and fixed.failed is None


def test_models_load_concurrently_up_to_load_threads(repository: ModelRepository) -> None:
    both = threading.Barrier(2, timeout=10)

    class Together(Factory):
        def __call__(self, spec: ModelSpec, device: str) -> Engine:
            both.wait()  # deadlocks (BrokenBarrierError) unless two load at once
            return super().__call__(spec, device)

    registry = ModelRegistry(repository, ["good", "other"], "cpu", Together(), load_threads=2)
    assert {e.state for e in registry.load_all()} == {ModelState.READY}


def test_two_refreshes_that_find_the_same_new_folder_load_it_once(tmp_path: Path) -> None:
    """The poll loop and a control message (or two pollers) see version 2 at once:
    the second waits on the model's lock, then finds 2 serving and loads nothing."""
    folder = write_versions(tmp_path, "m", [1])
    gate = threading.Event()
    factory = VersionFactory(gate)
    registry = ModelRegistry(ModelRepository(tmp_path), None, "cpu", factory)
    gate.set()
    registry.load("m")
    (folder / "2").mkdir()
    (folder / "2" / "saved_model.pb").write_bytes(b"v2")
    gate.clear()
    factory.loading.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(registry.refresh, "m")
        assert factory.loading.wait(10)  # the first is loading version 2
        second = pool.submit(registry.refresh, "m")
        gate.set()
        results = [first.result(10), second.result(10)]
    assert [name for name, _ in factory.built] == ["m", "m"]  # version 1, version 2 once
    loaded = [entry for entry in results if entry is not None]
    assert len(loaded) == 1 and loaded[0].version == 2
    assert registry.detector("m") is loaded[0].detector


def test_asking_for_a_failed_model_pins_nothing_of_the_asker(
    repository: ModelRepository,
) -> None:
    """The error kept for a failed model is raised to every request for it. Raised as
    it is, each raise added the asker's frames to its traceback, for good: every
    request's locals (its image) stayed in memory as long as the model stayed failed."""
    registry = ModelRegistry(repository, ["crashes"], "cpu", Factory())
    registry.load_all()

    class Image:
        """Stands in for a request's pixels."""

    def ask(image: Image) -> errors.TfstreamError:
        try:
            registry.detector("crashes")
        except errors.TfstreamError as exc:
            return exc
        raise AssertionError("a failed model answered")

    images = [Image() for _ in range(3)]
    kept = [weakref.ref(image) for image in images]
    raised = [ask(image) for image in images]
    assert all(isinstance(e, errors.ModelLoadFailed) and "FancyOp" in e.message for e in raised)
    del images, raised
    gc.collect()
    assert [ref() for ref in kept] == [None, None, None]
