"""The model repository: one folder per model, laid out as the old API documents.

::

    <root>/<name>/config.json
    <root>/<name>/object-detection.pbtxt
    <root>/<name>/saved_model.pb + variables/          (tensorflow2_detection)
    <root>/<name>/saved_model/saved_model.pb + ...     (same, Model Zoo layout)
    <root>/<name>/frozen_inference_graph.pb            (tensorflow_detection)
    <root>/<name>/metadata.yaml  (Ultralytics / KerasHub: stands in for the first two)

or TF Serving's versioned layout, one folder per version (a positive integer):

    <root>/<name>/<N>/saved_model.pb + variables/      (or any layout above)
    <root>/<name>/config.json, object-detection.pbtxt  (beside the versions,
                                                         or in <N>/: the version's own wins)

The highest complete version is served unless config.json pins `"version": N`;
the flat layout is version 1.

Hashes are name-based UUIDs (uuid5), so every process, host and restart agrees
on them without sharing a file, which the old server needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from engines.catalogue import HASH_NAMESPACE, Catalogue, model_hash
from engines.config import EngineName, ModelConfig, load_config
from engines.errors import InvalidModelConfig, ModelNotFound
from engines.export_folder import CONFIG_FILE, load_config_and_labels, model_resizer
from engines.metadata import ExportMetadata, load_metadata
from engines.resizer import Resizer

#: Folder names we accept as model names: no separators, no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

FROZEN_GRAPH_FILE = "frozen_inference_graph.pb"
SAVED_MODEL_FILE = "saved_model.pb"
#: Written by TensorFlow (2.12+) beside saved_model.pb: its own fingerprint of the export.
FINGERPRINT_FILE = "fingerprint.pb"
#: A version folder's name: a positive integer, as TF Serving numbers them.
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


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
    """What the model resizes images to, if known (`export_folder.model_resizer`). JPEGs
    decode no larger than that only where `Detector.resizer` says so: not for Ultralytics
    and KerasHub exports, which get full decodes (`export_folder.decode_resizer`)."""
    version: int = 1
    """The version folder served (1 for the flat layout)."""
    metadata: ExportMetadata | None = None
    """The export's metadata.yaml (Ultralytics / KerasHub), parsed once here, if any."""
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


def weights_fingerprint(weights: Path) -> str:
    """A short fingerprint of the weights, so that an answer can say which ones made it.

    The SavedModel's own `fingerprint.pb` where TensorFlow wrote one (hashing it
    is instant), else a SHA-256 of the weight files' bytes (a frozen graph, an
    older export). Blocking: call it where the model loads.
    """
    files = (
        [weights]
        if weights.is_file()
        else [weights / FINGERPRINT_FILE]
        if (weights / FINGERPRINT_FILE).is_file()
        else sorted(p for p in weights.rglob("*") if p.is_file())
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(weights.parent).as_posix().encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class ModelRepository(Catalogue):
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

    def versions(self, name: str) -> list[int]:
        """The version folders of a model, ascending; [] for the flat layout.

        Raises:
            ModelNotFound: see `folder`.
        """
        folder = self.folder(name)
        return sorted(
            int(p.name) for p in folder.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)
        )

    def spec(self, name: str, version: int | None = None) -> ModelSpec:
        """Validate the model folder (of `version`, default: the one to serve)
        without touching TensorFlow.

        Raises:
            ModelNotFound: see `folder`; or the version asked for does not exist.
            InvalidModelConfig: config, label map or weights are missing or wrong.
        """
        folder = self.folder(name)
        versions = self.versions(name)
        if not versions:
            if version not in (None, 1):
                raise ModelNotFound(f"model '{name}' has no version {version}")
            return self._spec(name, folder, folder, 1)
        if version is not None:
            if version not in versions:
                raise ModelNotFound(f"model '{name}' has no version {version}")
            return self._spec(name, folder, folder / str(version), version)
        pinned = self._pinned(folder)
        if pinned is not None:
            if pinned not in versions:
                raise InvalidModelConfig(
                    f"{name}: config.json pins version {pinned}, which has no folder "
                    f"(versions: {versions})"
                )
            return self._spec(name, folder, folder / str(pinned), pinned)
        problem: InvalidModelConfig | None = None
        for candidate in reversed(versions):  # the highest complete version
            try:
                return self._spec(name, folder, folder / str(candidate), candidate)
            except InvalidModelConfig as exc:
                problem = problem or exc
        assert problem is not None
        raise problem

    def _spec(self, name: str, folder: Path, home: Path, version: int) -> ModelSpec:
        """`home` holds the weights; config and labels come from it, else from `folder`."""
        # metadata.yaml of an Ultralytics / KerasHub export stands in for both.
        meta = load_metadata(home)  # read once; the engine's convention uses it too
        config, labels = load_config_and_labels(home, folder, meta=meta)
        weights = find_weights(home, config.inference_engine_name)
        return ModelSpec(
            name=name,
            path=home,
            config=config,
            labels=labels,
            weights=weights,
            resizer=model_resizer(name, home, config, meta),
            version=version,
            metadata=meta,
        )

    @staticmethod
    def _pinned(folder: Path) -> int | None:
        """`"version": N` of the config.json beside the version folders, if any."""
        path = folder / CONFIG_FILE
        if not path.is_file():
            return None
        return load_config(path).version

    def signature(self, name: str, version: int) -> tuple[int, int]:
        """(newest mtime in ns, total bytes) of a version's files: a folder that failed
        to load is tried again only once this changes (it was still being copied)."""
        folder = self.folder(name)
        home = folder / str(version) if self.versions(name) else folder
        newest, size = 0, 0
        for path in [home, *home.rglob("*")]:
            with contextlib.suppress(OSError):
                stat = path.stat()
                newest, size = max(newest, stat.st_mtime_ns), size + stat.st_size
        return newest, size
