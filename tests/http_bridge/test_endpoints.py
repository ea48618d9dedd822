"""Every documented endpoint, in both modes: embedded, and over real Kafka to a worker.

The answer shapes are checked field by field against the old API's facts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from deploy.local.processes import ConsumerProcess
from engines.repository import label_hash, model_hash
from tests.support.bridge import BridgeProcess, running_bridge
from tests.support.models import match_truth

pytestmark = [pytest.mark.slow]

Truth = dict[str, list[dict[str, Any]]]
Serving = tuple[BridgeProcess, ConsumerProcess | None]
SHAPES_LABELS = ["red rectangle", "green disc", "blue rectangle", "yellow disc"]


@pytest.fixture(scope="module", params=["embedded", "kafka"])
def serving(
    request: pytest.FixtureRequest,
    serving_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Serving]:
    """The bridge, and the worker behind it in Kafka mode (None when embedded)."""
    logs = tmp_path_factory.mktemp("bridge-logs")
    env = {"TFSTREAM_MAX_REQUEST_BYTES": str(3 * 1024 * 1024), "TFSTREAM_ANSWER_TIMEOUT_S": "30"}
    with running_bridge(request, serving_repository, logs, env) as pair:
        yield pair


@pytest.fixture(scope="module")
def bridge(serving: Serving) -> BridgeProcess:
    return serving[0]


def image_with_objects(
    shapes_images: tuple[Path, Truth], ext: str = ".jpg", minimum: int = 2
) -> tuple[str, bytes, list[dict[str, Any]]]:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if n.endswith(ext) and len(truth[n]) >= minimum)
    return name, (folder / name).read_bytes(), truth[name]


def assert_box_shape(box: dict[str, Any]) -> None:
    assert set(box) == {"ObjectClassName", "ObjectClassId", "confidence", "coordinates"}
    assert isinstance(box["ObjectClassName"], str) and isinstance(box["ObjectClassId"], int)
    assert isinstance(box["confidence"], float) and 0 <= box["confidence"] <= 100
    assert set(box["coordinates"]) == {"left", "top", "right", "bottom"}
    assert all(isinstance(v, int) for v in box["coordinates"].values())


def test_load_answers_every_model_with_its_hash(bridge: BridgeProcess) -> None:
    r = httpx.get(f"{bridge.url}/load", timeout=60)
    assert r.status_code == 200
    body = r.json()
    assert {"shapes_tf2", "shapes_tf1"} <= set(body)
    assert body["shapes_tf2"] == "75e33272-c623-58c9-b091-6c4377241b1c"
    assert body["shapes_tf1"] == "7f0f3895-61ed-581a-816f-e31d44c67317"


def test_models_lists_the_models_in_the_envelope(bridge: BridgeProcess) -> None:
    body = httpx.get(f"{bridge.url}/models").json()
    assert set(body) == {"success", "data", "error"}
    assert body["success"] is True and body["error"] == ""
    assert {"shapes_tf2", "shapes_tf1", "broken"} == set(body["data"]["models"])


@pytest.mark.parametrize("by", ["name", "hash"])
def test_detect_with_name_or_hash(
    bridge: BridgeProcess, shapes_images: tuple[Path, Truth], by: str
) -> None:
    name, data, truth = image_with_objects(shapes_images)
    model = "shapes_tf1" if by == "name" else model_hash("shapes_tf1")
    r = httpx.post(
        f"{bridge.url}/detect",
        data={"model": model},
        files={"image": (name, data, "image/jpeg")},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"bounding-boxes"}  # bare, as the old /detect
    for box in body["bounding-boxes"]:
        assert_box_shape(box)
    assert match_truth(body["bounding-boxes"], truth) == []


@pytest.mark.parametrize("by", ["name", "hash"])
def test_get_labels(bridge: BridgeProcess, by: str) -> None:
    model = "shapes_tf2" if by == "name" else model_hash("shapes_tf2")
    body = httpx.post(f"{bridge.url}/get_labels", data={"model": model}).json()
    assert body == {label: label_hash("shapes_tf2", label) for label in SHAPES_LABELS}


def _loads(serving: Serving, model: str) -> int:
    """How many times the process running the models (the worker in Kafka mode) has
    loaded `model`: its "model ready" log records."""
    bridge, worker = serving
    path = worker.log_path if worker is not None else bridge.log_path
    records = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return sum(1 for r in records if r.get("msg") == "model ready" and r.get("model") == model)


def test_model_load_force_and_by_hash(
    serving: Serving,
) -> None:
    bridge = serving[0]
    before = {name: _loads(serving, name) for name in ("shapes_tf2", "shapes_tf1")}
    assert before == {"shapes_tf2": 1, "shapes_tf1": 1}
    for path in ("/models/shapes_tf2/load", f"/models/{model_hash('shapes_tf1')}/load?force=true"):
        r = httpx.get(bridge.url + path, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True, "data": None, "error": ""}
    # Without force a ready model stays as it is; with force (here named by its hash)
    # it is loaded again before the call answers.
    assert _loads(serving, "shapes_tf2") == 1
    assert _loads(serving, "shapes_tf1") == 2


def test_predict_envelope_and_overrides(
    bridge: BridgeProcess, shapes_images: tuple[Path, Truth]
) -> None:
    name, data, truth = image_with_objects(shapes_images, minimum=3)
    url = f"{bridge.url}/models/shapes_tf2/predict"
    body = httpx.post(url, files={"input_data": (name, data, "image/jpeg")}, timeout=60).json()
    assert set(body) == {"success", "data", "error"} and body["success"] is True
    assert set(body["data"]) == {"bounding-boxes"}
    boxes = body["data"]["bounding-boxes"]
    assert match_truth(boxes, truth) == []
    one = httpx.post(
        url, files={"input_data": (name, data)}, data={"predictions": "1"}, timeout=60
    ).json()
    assert one["data"]["bounding-boxes"] == boxes[:1]
    none = httpx.post(
        url, files={"input_data": (name, data)}, data={"confidence": "100"}, timeout=60
    ).json()
    assert none["data"]["bounding-boxes"] == [b for b in boxes if b["confidence"] >= 100]


def test_predict_batch_with_several_files(
    bridge: BridgeProcess, shapes_images: tuple[Path, Truth]
) -> None:
    folder, truth = shapes_images
    names = [n for n in sorted(truth) if truth[n]][:3]
    files = [("input_data", (n, (folder / n).read_bytes())) for n in names]
    r = httpx.post(
        f"{bridge.url}/models/{model_hash('shapes_tf1')}/predict_batch", files=files, timeout=60
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and len(body["data"]) == 3
    for item, n in zip(body["data"], names, strict=True):
        assert set(item) == {"bounding-boxes", "ImageName"} and item["ImageName"] == n
        assert match_truth(item["bounding-boxes"], truth[n]) == []


def test_predict_image_returns_the_image_with_boxes(
    bridge: BridgeProcess, shapes_images: tuple[Path, Truth]
) -> None:
    name, data, truth = image_with_objects(shapes_images, ext=".png")
    r = httpx.post(
        f"{bridge.url}/models/shapes_tf2/predict_image",
        files={"input_data": (name, data)},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    drawn = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert drawn.shape == original.shape
    for obj in truth:  # each object's left edge is drawn over
        left, top, _right, bottom = obj["box"]
        y = (top + bottom) // 2
        assert np.abs(drawn[y, left] - original[y, left]).sum() > 60, obj


def test_labels_and_config(bridge: BridgeProcess) -> None:
    labels = httpx.get(f"{bridge.url}/models/{model_hash('shapes_tf2')}/labels").json()
    assert labels == {"success": True, "data": SHAPES_LABELS, "error": ""}
    config = httpx.get(f"{bridge.url}/models/shapes_tf1/config").json()
    assert config["success"] is True
    assert set(config["data"]) == {"framework", "type", "network"}
    assert config["data"]["framework"] == "tensorflow" and config["data"]["type"] == "detection"


# -- errors ---------------------------------------------------------------------------------


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and body["data"] is None and body["code"] == code
    assert isinstance(body["error"], str) and body["error"]


def test_unknown_model_and_unknown_hash(
    bridge: BridgeProcess, shapes_images: tuple[Path, Truth]
) -> None:
    name, data, _ = image_with_objects(shapes_images)
    assert_error(
        httpx.post(f"{bridge.url}/models/nope/predict", files={"input_data": (name, data)}),
        404,
        "model_not_found",
    )
    assert_error(
        httpx.get(f"{bridge.url}/models/{model_hash('nope')}/labels"), 404, "model_not_found"
    )
    assert_error(
        httpx.post(
            f"{bridge.url}/detect",
            data={"model": model_hash("nope")},
            files={"image": (name, data)},
        ),
        404,
        "model_not_found",
    )
    assert_error(
        httpx.post(f"{bridge.url}/get_labels", data={"model": "../../etc"}), 404, "model_not_found"
    )


def test_bad_uploads(bridge: BridgeProcess) -> None:
    url = f"{bridge.url}/models/shapes_tf2/predict"
    assert_error(
        httpx.post(
            url, files={"input_data": ("x.jpg", b"\xff\xd8 not really", "image/jpeg")}, timeout=60
        ),
        400,
        "invalid_image",
    )
    assert_error(
        httpx.post(url, files={"input_data": ("x.jpg", b"")}, timeout=60), 400, "invalid_image"
    )
    assert_error(httpx.post(url, files={"other": ("x.jpg", b"abc")}), 422, "invalid_request")
    assert_error(
        httpx.post(f"{bridge.url}/detect", files={"image": ("x.jpg", b"abc")}),
        422,
        "invalid_request",
    )
    assert_error(
        httpx.post(url, files={"input_data": ("x.jpg", b"abc")}, data={"confidence": "lots"}),
        422,
        "invalid_request",
    )


def test_oversize_upload_is_refused(bridge: BridgeProcess) -> None:
    big = b"\xff" * (4 * 1024 * 1024)  # over the 3 MiB limit set for this bridge
    r = httpx.post(
        f"{bridge.url}/models/shapes_tf2/predict",
        files={"input_data": ("big.jpg", big)},
        timeout=60,
    )
    assert_error(r, 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        yield b'--b\r\nContent-Disposition: form-data; name="input_data"; filename="x.jpg"\r\n\r\n'
        for _ in range(8):
            yield b"\xff" * (1024 * 1024)

    r = httpx.post(
        f"{bridge.url}/models/shapes_tf2/predict",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b"},
        timeout=60,
    )
    assert_error(r, 413, "request_too_large")


def test_a_model_that_failed_to_load(
    bridge: BridgeProcess, shapes_images: tuple[Path, Truth]
) -> None:
    name, data, _ = image_with_objects(shapes_images)
    r = httpx.post(
        f"{bridge.url}/models/broken/predict", files={"input_data": (name, data)}, timeout=60
    )
    assert_error(r, 503, "model_load_failed")


def test_health_and_metrics(bridge: BridgeProcess) -> None:
    assert httpx.get(f"{bridge.url}/health/live").json() == {"status": "ok"}
    ready = httpx.get(f"{bridge.url}/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    metrics = httpx.get(f"{bridge.url}/metrics").text
    assert (
        'tfstream_http_requests_total{route="/models/{model_name}/predict",status="200"}' in metrics
    )
    docs = httpx.get(f"{bridge.url}/openapi.json").json()
    assert "/models/{model_name}/predict_batch" in docs["paths"]
