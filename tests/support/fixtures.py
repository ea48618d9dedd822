"""Session fixtures shared by every test package (loaded from tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.exporter_layouts import LAYOUT_MODELS
from tests.support.models import MODEL_GARDEN, build_images, build_repository


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shapes_tf2, shapes_tf1 and ssd_mobilenet_v2_bench, generated once per session."""
    return build_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def model_garden_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two Model Garden RetinaNet exports (pixel and normalised boxes)."""
    return build_repository(tmp_path_factory.mktemp("model_garden"), MODEL_GARDEN)


@pytest.fixture(scope="session")
def exporter_layouts_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes detector in Ultralytics' three layouts and KerasHub's (metadata.yaml only)."""
    return build_repository(tmp_path_factory.mktemp("exporter_layouts"), LAYOUT_MODELS)


@pytest.fixture(scope="session")
def shapes_images(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """60 generated images, each as .jpg and .png, with their ground truth."""
    folder = tmp_path_factory.mktemp("shapes_images")
    return folder, build_images(folder, count=60)


@pytest.fixture(scope="session")
def serving_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes models plus `broken` (corrupt weights): a worker must serve around it."""
    root = tmp_path_factory.mktemp("serving")
    for name in ("shapes_tf2", "shapes_tf1"):
        shutil.copytree(model_repository / name, root / name)
    shutil.copytree(model_repository / "shapes_tf1", root / "broken")
    (root / "broken" / "frozen_inference_graph.pb").write_bytes(b"not a graph")
    return root
