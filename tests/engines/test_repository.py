import json
import shutil
import uuid
from pathlib import Path

import pytest

from engines.config import EngineName
from engines.errors import InvalidModelConfig, ModelNotFound
from engines.repository import ModelRepository, label_hash, model_hash

CONFIG = {
    "inference_engine_name": "tensorflow2_detection",
    "confidence": 60,
    "predictions": 15,
    "number_of_classes": 2,
    "framework": "tensorflow",
    "type": "detection",
    "network": "inception",
}
LABELS = "item { id: 1 name: 'a' display_name: 'Apple' }\nitem { id: 2 name: 'b' }\n"


def make_model(
    root: Path, name: str, config: dict[str, object] | None = None, layout: str = "root"
) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config or CONFIG))
    (folder / "object-detection.pbtxt").write_text(LABELS)
    if layout == "root":
        (folder / "saved_model.pb").write_bytes(b"x")
    elif layout == "saved_model":
        (folder / "saved_model").mkdir()
        (folder / "saved_model" / "saved_model.pb").write_bytes(b"x")
    elif layout == "frozen":
        (folder / "frozen_inference_graph.pb").write_bytes(b"x")
    return folder


def test_spec_reads_config_labels_and_weights(tmp_path: Path) -> None:
    make_model(tmp_path, "m1")
    spec = ModelRepository(tmp_path).spec("m1")
    assert spec.engine is EngineName.TF2
    assert spec.labels == {1: "Apple", 2: "b"}
    assert spec.weights == (tmp_path / "m1").resolve()
    assert spec.config.public() == {
        "framework": "tensorflow",
        "type": "detection",
        "network": "inception",
    }


def test_model_zoo_layout_with_saved_model_subfolder(tmp_path: Path) -> None:
    make_model(tmp_path, "zoo", layout="saved_model")
    assert ModelRepository(tmp_path).spec("zoo").weights.name == "saved_model"


def test_frozen_graph_layout(tmp_path: Path) -> None:
    make_model(
        tmp_path,
        "old",
        config={**CONFIG, "inference_engine_name": "tensorflow_detection"},
        layout="frozen",
    )
    spec = ModelRepository(tmp_path).spec("old")
    assert spec.weights.name == "frozen_inference_graph.pb"


def test_hashes_are_deterministic_name_based_uuids(tmp_path: Path) -> None:
    make_model(tmp_path, "m1")
    spec = ModelRepository(tmp_path).spec("m1")
    # Literal values: clients store these hashes, so a change of namespace or
    # scheme must break this test, not pass silently.
    assert spec.hash == model_hash("m1") == "69c76a11-8295-5c47-810d-978894aa8973"
    assert uuid.UUID(spec.hash).version == 5
    assert model_hash("m2") == "c1470d1e-df33-5ee5-b9c2-363aee6fc5a9"
    assert model_hash("shapes_tf2") == "75e33272-c623-58c9-b091-6c4377241b1c"
    assert spec.label_hashes() == {
        "Apple": "4e63909a-940f-5394-86bd-32b85d1dc9ee",
        "b": "b20a04b7-2a1d-52df-9dc4-aece5f692b67",
    }
    assert label_hash("shapes_tf2", "green disc") == "30dcb8d7-95ac-58bb-bf91-3079e9c120e4"
    assert len(set(spec.label_hashes().values())) == 2


def test_resolve_accepts_names_and_hashes(tmp_path: Path) -> None:
    make_model(tmp_path, "m1")
    repo = ModelRepository(tmp_path)
    assert repo.resolve("m1") == "m1"
    assert repo.resolve(model_hash("m1")) == "m1"
    with pytest.raises(ModelNotFound):
        repo.resolve(model_hash("nope"))


@pytest.mark.parametrize(
    "name", ["..", "../etc", "a/b", "/etc/passwd", ".hidden", "", "a" * 300, "x\x00y"]
)
def test_names_that_could_escape_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        ModelRepository(tmp_path).spec(name)
    assert info.value.code == "model_not_found"


def test_a_link_leading_outside_the_repository_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_model(outside, "secret")
    repo_root = tmp_path / "repo"
    repo_root.mkdir()
    (repo_root / "link").symlink_to(outside / "secret")
    with pytest.raises(ModelNotFound):
        ModelRepository(repo_root).spec("link")


def test_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="'ghost' does not exist"):
        ModelRepository(tmp_path).spec("ghost")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda c: c.pop("confidence"), "field 'confidence': Field required"),
        (lambda c: c.update(confidence=150), "field 'confidence'"),
        (lambda c: c.update(predictions=-1), "field 'predictions'"),
        (
            lambda c: c.update(inference_engine_name="pytorch_detection"),
            "field 'inference_engine_name'",
        ),
        (lambda c: c.pop("network"), "field 'network'"),
        (lambda c: c.update(number_of_classes="two"), "field 'number_of_classes'"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, change, fragment: str) -> None:  # type: ignore[no-untyped-def]
    config = dict(CONFIG)
    change(config)
    make_model(tmp_path, "bad", config=config)
    with pytest.raises(InvalidModelConfig) as info:
        ModelRepository(tmp_path).spec("bad")
    assert fragment in info.value.message
    assert info.value.code == "invalid_model_config"


def test_config_that_is_not_json(tmp_path: Path) -> None:
    folder = make_model(tmp_path, "bad")
    (folder / "config.json").write_text("{inference_engine_name: ")
    with pytest.raises(InvalidModelConfig, match="not valid JSON"):
        ModelRepository(tmp_path).spec("bad")


@pytest.mark.parametrize("missing", ["config.json", "object-detection.pbtxt", "saved_model.pb"])
def test_missing_files(tmp_path: Path, missing: str) -> None:
    folder = make_model(tmp_path, "bad")
    (folder / missing).unlink()
    with pytest.raises(InvalidModelConfig) as info:
        ModelRepository(tmp_path).spec("bad")
    assert "missing" in info.value.message


def test_tf1_model_without_frozen_graph(tmp_path: Path) -> None:
    make_model(
        tmp_path,
        "bad",
        config={**CONFIG, "inference_engine_name": "tensorflow_detection"},
        layout="root",
    )
    with pytest.raises(InvalidModelConfig, match=r"frozen_inference_graph\.pb"):
        ModelRepository(tmp_path).spec("bad")


def test_names_lists_folders_only(tmp_path: Path) -> None:
    make_model(tmp_path, "b")
    make_model(tmp_path, "a")
    (tmp_path / "README.md").write_text("x")
    (tmp_path / ".cache").mkdir()
    assert ModelRepository(tmp_path).names() == ["a", "b"]
    shutil.rmtree(tmp_path / "a")
    assert ModelRepository(tmp_path).names() == ["b"]


def test_models_list_shows_each_version_and_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engines.cli import main

    make_model(tmp_path, "flat")
    versioned = make_model(tmp_path, "versioned", layout="none")
    for version, weights in ((1, b"one"), (2, b"two")):
        (versioned / str(version)).mkdir()
        (versioned / str(version) / "saved_model.pb").write_bytes(weights)
    (versioned / "2" / "fingerprint.pb").write_bytes(b"tf's own fingerprint")
    assert main(["list", str(tmp_path)]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["flat"].startswith("version 1, fingerprint ") and ", flat," in lines["flat"]
    assert lines["versioned"].startswith("version 2, fingerprint ")
    assert "versions [1, 2]" in lines["versioned"]
    # fingerprint.pb is what identifies a SavedModel: other files do not change it.
    before = lines["versioned"]
    (versioned / "2" / "saved_model.pb").write_bytes(b"two, re-saved")
    assert main(["list", str(tmp_path)]) == 0
    assert before in capsys.readouterr().out
