"""Image sizes agree end to end: what is too large is 413 `image_too_large` in
both modes, never a retryable 503 (a Kafka record that could not be sent)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from consumer.settings import HEADER_ROOM_BYTES, KafkaClientSettings
from engines.errors import ImageTooLarge
from producer_tools.client import DetectClient
from tests.support.bridge import BridgeProcess, running_bridge
from tests.support.bridge import predict as served_predict

MIB = 1024 * 1024


@pytest.fixture(scope="module", params=["embedded", "kafka"])
def bridge(
    request: pytest.FixtureRequest,
    serving_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BridgeProcess]:
    """A bridge with the default size limits (32 MiB bodies, 16 MiB records, 10 MiB images)."""
    logs = tmp_path_factory.mktemp("bridge-logs")
    with running_bridge(request, serving_repository, logs, {}) as (proc, _):
        yield proc


def jpeg_padded_to(size: int) -> bytes:
    """A valid JPEG grown to `size` bytes by a trailing comment-free tail."""
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(out, "JPEG")
    data = out.getvalue()
    return data + b"\x00" * (size - len(data))


def predict(bridge: BridgeProcess, data: bytes) -> httpx.Response:
    return served_predict(bridge, "shapes_tf1", data, filename="big.jpg")


@pytest.mark.slow
@pytest.mark.parametrize("size_mib", [20, 12])
def test_an_image_over_the_limits_is_413_image_too_large(
    bridge: BridgeProcess, size_mib: int
) -> None:
    """20 MiB: over the 16 MiB records of Kafka mode and over the 10 MiB images of
    both; 12 MiB: fits a record, refused by the worker's 10 MiB image limit."""
    r = predict(bridge, jpeg_padded_to(size_mib * MIB))
    assert r.status_code == 413, r.text
    assert "retry-after" not in r.headers
    body = r.json()
    assert body["code"] == "image_too_large" and body["success"] is False
    assert str(size_mib * MIB) in body["error"]  # the message names the size it refused
    ok = predict(bridge, jpeg_padded_to(1000))  # the bridge and its worker keep serving
    assert ok.status_code == 200, ok.text


def test_the_client_refuses_an_image_no_record_can_carry_before_sending() -> None:
    """No broker is needed: the size is checked before anything is produced."""
    settings = KafkaClientSettings(bootstrap="127.0.0.1:1", max_message_bytes=2 * MIB)
    client = DetectClient(settings)
    limit = settings.max_record_image_bytes()
    assert limit == 2 * MIB - HEADER_ROOM_BYTES
    with pytest.raises(ImageTooLarge, match=f"limit is {limit}"):
        asyncio.run(client.detect("m", b"\xff" * (limit + 1)))
