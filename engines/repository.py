"""The model repository: one folder per model, laid out as the old API documents.

::

    <root>/<name>/config.json
    <root>/<name>/object-detection.pbtxt
    <root>/<name>/saved_model.pb + variables/          (tensorflow2_detection)
    <root>/<name>/saved_model/saved_model.pb + ...     (same, Model Zoo layout)
    <root>/<name>/frozen_inference_graph.pb            (tensorflow_detection)
    <root>/<name>/metadata.yaml  (Ultralytics / KerasHub: stands in for the first two)

Hashes are name-based UUIDs (uuid5), so every process, host and restart agrees
on them without sharing a file, which the old server needed.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from engines.config import EngineName, ModelConfig
from engines.errors import InvalidModelConfig, ModelNotFound
from engines.metadata import export_resizer, load_config_and_labels
from engines.resizer import FixedShape, Resizer, read_pipeline_config

#: Fixed namespace of all tfstream hashes. Changing it changes every hash clients hold.
HASH_NAMESPACE = uuid.UUID("6f0c5a4e-2b1d-5c8e-9a57-3f4be1d0c7a2")

#: Folder names we accept as model names: no separators, no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

CONFIG_FILE = "config.json"
LABEL_MAP_FILE = "object-detection.pbtxt"
FROZEN_GRAPH_FILE = "frozen_inference_graph.pb"
SAVED_MODEL_FILE = "saved_model.pb"


def model_hash(name: str) -> str:
    return str(uuid.uuid5(HASH_NAMESPACE, f"model/{name}"))


def label_hash(model: str, label: str) -> str:
    return str(uuid.uuid5(HASH_NAMESPACE, f"label/{model}/{label}"))


def check_model_name(name: str) -> str:
    """Refuse names that are not a plain folder name (`..`, `a/b`, absolute paths).

    Raises:
        ModelNotFound: a name that could not be a model of any repository.
    """
    if not _NAME.fullmatch(name) or ".." in name:
        raise ModelNotFound(f"'{name[:200]}' is not a valid model name")
    return name


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about a model before its weights are loaded."""

    name: str
    path: Path
    config: ModelConfig
    labels: dict[int, str]
    weights: Path
    """The SavedModel folder, or the frozen graph file."""
    resizer: Resizer | None = None
    """What the graph resizes images to, if known: JPEGs decode no larger than that."""
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", model_hash(self.name))

    @property
    def engine(self) -> EngineName:
        return self.config.inference_engine_name

    def label_hashes(self) -> dict[str, str]:
        """`{label: hash}` as `/get_labels` answers, in class id order."""
        return {label: label_hash(self.name, label) for _, label in sorted(self.labels.items())}


def find_weights(folder: Path, engine: EngineName) -> Path:
    """Where the weights of `engine` are in `folder`.

    Raises:
        InvalidModelConfig: the files the engine needs are not there.
    """
    if engine is EngineName.TF1:
        graph = folder / FROZEN_GRAPH_FILE
        if graph.is_file():
            return graph
        raise InvalidModelConfig(
            f"{folder.name}: weights missing: {FROZEN_GRAPH_FILE} is required by {engine.value}"
        )
    for candidate in (folder, folder / "saved_model"):
        if (candidate / SAVED_MODEL_FILE).is_file():
            return candidate
    raise InvalidModelConfig(
        f"{folder.name}: weights missing: {engine.value} needs {SAVED_MODEL_FILE} "
        "and variables/ in the model folder or in its saved_model/ sub-folder"
    )


def model_resizer(folder: Path, config: ModelConfig) -> Resizer | None:
    """`input_size` of config.json first, else the export's `pipeline.config`
    (in the model folder, or in its `saved_model/` parent layout of the Model Zoo)."""
    if config.input_size is not None:
        height, width = config.input_size
        return FixedShape(height=height, width=width)
    return read_pipeline_config([folder, folder / "saved_model"])


class ModelRepository:
    """Read-only view of a model folder; cheap enough to re-read on every call."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        """Every sub-folder with a valid name, sorted; broken ones included.

        Broken models are listed so that loading them reports why they are broken.
        """
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name))

    def folder(self, name: str) -> Path:
        """The folder of model `name`, refusing anything outside the repository.

        Raises:
            ModelNotFound: invalid name, no such folder, or a link leading outside.
        """
        check_model_name(name)
        root = self.root.resolve()
        folder = (root / name).resolve()
        if folder.parent != root or not folder.is_dir():
            raise ModelNotFound(f"model '{name}' does not exist")
        return folder

    def spec(self, name: str) -> ModelSpec:
        """Validate the model folder without touching TensorFlow.

        Raises:
            ModelNotFound: see `folder`.
            InvalidModelConfig: config, label map or weights are missing or wrong.
        """
        folder = self.folder(name)
        # metadata.yaml of an Ultralytics / KerasHub export stands in for both.
        config, labels = load_config_and_labels(folder)
        weights = find_weights(folder, config.inference_engine_name)
        return ModelSpec(
            name=name,
            path=folder,
            config=config,
            labels=labels,
            weights=weights,
            resizer=model_resizer(folder, config) or export_resizer(folder),
        )

    def resolve(self, name_or_hash: str) -> str:
        """Accept a model name or its hash, as the old `/detect` did.

        Raises:
            ModelNotFound: neither a model name nor the hash of one.
        """
        if _NAME.fullmatch(name_or_hash) and name_or_hash in self.names():
            return name_or_hash
        for name in self.names():
            if model_hash(name) == name_or_hash:
                return name
        raise ModelNotFound(f"no model named or hashed '{name_or_hash[:200]}'")
