"""Ultralytics YOLO (raw, nms, end2end) and KerasHub export folders, dropped into
the repository as their exporters write them (metadata.yaml, no config.json),
served end to end, embedded and over Kafka to a worker.

Every box must be where the test drew the object, in the pixels of the image
the client sent, at 640x480, 1920x1080 and portrait 480x640, with the
exporter's own defaults (no request fields). A raw KerasHub export is refused
with how to export it, and the process goes on serving the others.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.local.processes import BridgeProcess, ConsumerProcess
from tests.support.bridge import predict, running_bridge
from tests.support.exporter_layouts import (
    LAYOUT_MODELS,
    SCENES,
    TOLERANCE,
    box_problems,
    scene_png,
)

# Five models load (and warm up) in each process before it is ready.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
RAW_KERAS_HUB = "retinanet_raw_export"


@pytest.fixture(scope="module")
def repository(exporter_layouts_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.modelgen.exporter_layouts import export_keras_hub_raw_head

    root = tmp_path_factory.mktemp("exporter_formats")
    for name in LAYOUT_MODELS:  # copies: a link leading out of the repository is refused
        shutil.copytree(exporter_layouts_repository / name, root / name)
    export_keras_hub_raw_head(root / RAW_KERAS_HUB)
    return root


@pytest.fixture(scope="module", params=["embedded", "kafka"])
def bridge(
    request: pytest.FixtureRequest, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BridgeProcess, ConsumerProcess | None]]:
    logs = tmp_path_factory.mktemp("exporter-format-logs")
    env = {"TFSTREAM_ANSWER_TIMEOUT_S": "60"}
    with running_bridge(request, repository, logs, env, ready_timeout_s=360) as pair:
        yield pair


@pytest.mark.parametrize("model", LAYOUT_MODELS)
def test_served_boxes_are_the_drawn_objects(
    bridge: tuple[BridgeProcess, ConsumerProcess | None], model: str
) -> None:
    labels = httpx.get(f"{bridge[0].url}/models/{model}/labels", timeout=30)
    for size in SCENES:
        r = predict(bridge, model, scene_png(size))
        assert r.status_code == 200, r.text
        boxes = r.json()["data"]["bounding-boxes"]
        assert box_problems(boxes, SCENES[size], TOLERANCE[size]) == [], f"{size}"
    # The labels are metadata.yaml's names.
    assert labels.status_code == 200 and "red rectangle" in labels.text, labels.text


def test_a_raw_keras_hub_export_is_refused_with_how_to_export_it(
    bridge: tuple[BridgeProcess, ConsumerProcess | None],
) -> None:
    r = predict(bridge, RAW_KERAS_HUB, scene_png((640, 480)))
    body = r.json()
    assert r.status_code >= 400 and body["success"] is False, r.text
    assert body["code"] == "invalid_model_config"
    assert "ExportArchive" in body["error"] and "predict_step" in body["error"]
    assert predict(bridge, "yolo11_shapes_raw", scene_png((640, 480))).status_code == 200
