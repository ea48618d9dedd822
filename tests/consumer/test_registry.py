"""The model registry over a folder of model configs, with engines from a test
factory: no TensorFlow, no broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumer.protocol import ModelState
from consumer.registry import ModelRegistry
from consumer.settings import EngineSettings
from engines import errors
from engines.base import Engine
from engines.repository import ModelRepository, ModelSpec, model_hash
from engines.simulated import SimulatedEngine
from tests.consumer.fakes import CountingEngine

LABELS = 'item { id: 1 name: "thing" }\n'


def write_model(root: Path, name: str, config: dict[str, object] | None = None) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    body = config or {
        "inference_engine_name": "tensorflow2_detection",
        "confidence": 50,
        "predictions": 10,
        "number_of_classes": 1,
        "framework": "tensorflow",
        "type": "detection",
        "network": "fake",
    }
    (folder / "config.json").write_text(json.dumps(body))
    (folder / "object-detection.pbtxt").write_text(LABELS)
    (folder / "saved_model.pb").write_bytes(b"")


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    write_model(tmp_path, "good")
    write_model(tmp_path, "other")
    write_model(tmp_path, "bad_config", {"inference_engine_name": "tensorflow2_detection"})
    write_model(tmp_path, "crashes")
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
    assert (good.state, good.hash, good.labels, good.device) == (
        ModelState.READY,
        model_hash("good"),
        ["thing"],
        "/FAKE:0",
    )
    broken = registry.announcement(entries["crashes"], "w1", 30_000)
    assert broken.state is ModelState.FAILED and broken.error is not None
    assert broken.error["code"] == "model_load_failed"


def test_settings_with_simulate_batch_ms_give_every_model_the_simulated_engine(
    repository: ModelRepository,
) -> None:
    settings = EngineSettings(repository=repository.root, models="good", simulate_batch_ms=1)
    registry = ModelRegistry.from_settings(settings)
    (entry,) = registry.load_all()
    assert entry.state is ModelState.READY
    assert isinstance(registry.detector("good").engine, SimulatedEngine)
    assert registry.detector("good").device == "/SIMULATED:0"
