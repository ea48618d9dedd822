"""Model Garden exports served end to end, embedded and over Kafka to a worker.

The models are real exports of Model Garden's exporter (pixel and normalised
boxes); every served box must be what the raw signature outputs mean in
original-image pixels. A model declared normalised that outputs pixels must
answer `invalid_model_output`, never a box, and over Kafka leave a DLQ copy
while the worker goes on serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.local.processes import BridgeProcess, ConsumerProcess
from tests.support.bridge import predict as served_predict
from tests.support.bridge import running_bridge
from tests.support.models import (
    MODEL_GARDEN,
    MODEL_GARDEN_SIZES,
    boxes_match,
    declared_normalized,
    link_model,
    model_garden_reference,
    shapes_png,
)
from tests.support.workers import header_dict, read_topic

pytestmark = pytest.mark.slow
LIAR = "retinanet_declared_normalized"


@pytest.fixture(scope="module")
def repository(model_garden_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    for name in MODEL_GARDEN:
        link_model(model_garden_repository / name, root / name)
    declared_normalized(model_garden_repository / "retinanet_mg_pixels", root / LIAR)
    return root


@pytest.fixture(scope="module", params=["embedded", "kafka"])
def bridge(
    request: pytest.FixtureRequest, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BridgeProcess, ConsumerProcess | None]]:
    logs = tmp_path_factory.mktemp("format-logs")
    env = {"TFSTREAM_ANSWER_TIMEOUT_S": "60"}
    # Three Model Garden graphs load (and warm up) before the process is ready:
    # about 15 s each on a quiet 2-core machine, several times that on a busy one.
    with running_bridge(request, repository, logs, env, ready_timeout_s=360) as pair:
        yield pair


def predict(bridge: tuple[BridgeProcess, object], model: str, png: bytes) -> httpx.Response:
    """Every box the model finds: confidence 0, up to 100."""
    return served_predict(bridge, model, png, form={"confidence": "0", "predictions": "100"})


@pytest.mark.parametrize("model", MODEL_GARDEN)
def test_served_boxes_are_the_raw_outputs_in_image_pixels(
    bridge: tuple[BridgeProcess, ConsumerProcess | None], model_garden_repository: Path, model: str
) -> None:
    for width, height in MODEL_GARDEN_SIZES:
        png = shapes_png(width, height, seed=width)
        r = predict(bridge, model, png)
        assert r.status_code == 200, r.text
        boxes = r.json()["data"]["bounding-boxes"]
        reference = model_garden_reference(model_garden_repository / model, png)
        assert len(reference) >= 5
        assert boxes_match(boxes, reference) == [], f"{width}x{height}"


def test_pixel_boxes_declared_normalized_answer_invalid_model_output(
    bridge: tuple[BridgeProcess, ConsumerProcess | None],
) -> None:
    png = shapes_png(640, 480)
    r = predict(bridge, LIAR, png)
    assert r.status_code == 500, r.text
    body = r.json()
    assert body["success"] is False and body["data"] is None
    assert body["code"] == "invalid_model_output" and LIAR in body["error"]
    # The same process goes on serving, this model's neighbours and this model alike.
    assert predict(bridge, "retinanet_mg_pixels", png).status_code == 200
    assert predict(bridge, LIAR, png).json()["code"] == "invalid_model_output"
    worker = bridge[1]
    if worker is None:
        return
    dlq = asyncio.run(
        read_topic(
            worker.bootstrap,
            f"{worker.prefix}.dlq",
            expect=2,
            timeout_s=60,
            until=lambda recs: (
                sum(header_dict(r)["dlq-reason-code"] == "invalid_model_output" for r in recs) >= 2
            ),
        )
    )
    copies = [r for r in dlq if header_dict(r)["dlq-reason-code"] == "invalid_model_output"]
    assert len(copies) == 2 and all(r.value == png for r in copies)
    assert header_dict(copies[0])["dlq-source-topic"] == f"{worker.prefix}.requests.{LIAR}"
    assert worker.proc is not None and worker.proc.poll() is None
