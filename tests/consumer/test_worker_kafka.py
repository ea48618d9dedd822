"""The consumer against a real Apache Kafka broker, as separate processes.

One worker serves most tests (module scope); the crash and shutdown tests
start their own workers in their own consumer groups and topic prefixes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.processes import ConsumerProcess
from engines.repository import label_hash, model_hash
from tests.support.models import match_truth
from tests.support.workers import (
    create_topic,
    header_dict,
    headers,
    raw_producer,
    read_to_end,
    read_topic,
    replies_by_id,
    unique_prefix,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

Truth = dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, serving_repository: Path, tmp_path_factory: pytest.TempPathFactory
):  # type: ignore[no-untyped-def]
    proc = ConsumerProcess(
        kafka_bootstrap,
        serving_repository,
        unique_prefix(),
        tmp_path_factory.mktemp("logs"),
        extra={"TFSTREAM_MODELS": "all", "TFSTREAM_MAX_BATCH": "8", "TFSTREAM_MAX_DELAY_MS": "5"},
    ).start()
    proc.wait_ready()
    yield proc
    proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0, proc.log_tail()


async def ask(
    bootstrap: str,
    prefix: str,
    model: str,
    items: list[tuple[str, bytes, dict[str, object]]],
    timeout_s: float = 120,
) -> tuple[str, dict[str, list[dict[str, Any]]], list[Any]]:
    """Send (correlation id, image, headers) requests with a fresh reply topic; collect replies."""
    reply_to = f"{prefix}.replies.{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, reply_to)
    async with raw_producer(bootstrap) as producer:
        for correlation_id, image, extra in items:
            await producer.send(
                f"{prefix}.requests.{model}",
                image,
                headers=headers(correlation_id=correlation_id, reply_to=reply_to, **extra),
            )
        await producer.flush()
    records = await read_topic(bootstrap, reply_to, expect=len(items), timeout_s=timeout_s)
    return reply_to, replies_by_id(records), records


@pytest.mark.asyncio
async def test_request_in_answer_out_with_every_protocol_field(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth]
) -> None:
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if n.endswith(".jpg") and len(truth[n]) >= 2)
    image = (folder / name).read_bytes()
    _, replies, records = await ask(
        worker.bootstrap, worker.prefix, "shapes_tf2", [("req-1", image, {"image_name": name})]
    )
    (body,) = replies["req-1"]
    assert header_dict(records[0])["correlation-id"] == "req-1"
    assert body["success"] is True and body["error"] is None
    assert body["model"] == "shapes_tf2" and body["correlation_id"] == "req-1"
    assert body["model_version"] == 1 and header_dict(records[0])["model-version"] == "1"
    data = body["data"]
    assert data["ImageName"] == name
    with Image.open(folder / name) as original:
        assert (data["width"], data["height"]) == original.size
    assert match_truth(data["bounding-boxes"], truth[name]) == []
    for box in data["bounding-boxes"]:
        assert set(box) == {"ObjectClassName", "ObjectClassId", "confidence", "coordinates"}
        assert set(box["coordinates"]) == {"left", "top", "right", "bottom"}
    timing = body["timing"]
    assert set(timing) == {"queue_ms", "decode_ms", "inference_ms", "batch_size"}
    assert timing["batch_size"] >= 1 and timing["inference_ms"] > 0 and timing["decode_ms"] > 0


@pytest.mark.asyncio
async def test_camera_frames_decode_scaled_and_answer_in_their_own_pixels(
    worker: ConsumerProcess, tmp_path: Path
) -> None:
    from engines.modelgen.images import write_test_images

    truth = write_test_images(
        tmp_path, count=4, seed=5, formats=("jpg",), sizes=((1920, 1080), (3840, 2160))
    )
    items = [(name, (tmp_path / name).read_bytes(), {"image_name": name}) for name in truth]
    _, replies, _ = await ask(worker.bootstrap, worker.prefix, "shapes_tf1", items)
    for name in truth:
        (body,) = replies[name]
        data = body["data"]
        with Image.open(tmp_path / name) as original:
            assert (data["width"], data["height"]) == original.size
        assert match_truth(data["bounding-boxes"], truth[name]) == [], name
    assert sum(len(objects) for objects in truth.values()) >= 4


@pytest.mark.asyncio
async def test_burst_of_200_is_batched_and_every_answer_is_for_its_own_image(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth]
) -> None:
    folder, truth = shapes_images
    names = sorted(truth)
    items = []
    expected: dict[str, str] = {}
    for i in range(200):
        name = names[i % len(names)]
        cid = f"burst-{i}"
        expected[cid] = name
        items.append((cid, (folder / name).read_bytes(), {}))
    _, replies, _ = await ask(worker.bootstrap, worker.prefix, "shapes_tf1", items, timeout_s=240)
    assert set(replies) == set(expected)
    wrong = {}
    for cid, name in expected.items():
        body = replies[cid][0]
        assert body["success"], body
        problems = match_truth(body["data"]["bounding-boxes"], truth[name])
        if problems:
            wrong[cid] = (name, problems)
    assert wrong == {}
    sizes = [replies[cid][0]["timing"]["batch_size"] for cid in expected]
    assert max(sizes) > 1, sizes


@pytest.mark.asyncio
async def test_no_reply_to_answers_on_the_results_topic_with_the_key(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth]
) -> None:
    """A kcat-style client: bytes and headers by hand, exactly as docs/protocol.md says."""
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if n.endswith(".png") and truth[n])
    results = f"{worker.prefix}.results.shapes_tf1"
    async with raw_producer(worker.bootstrap) as producer:
        await producer.send_and_wait(
            f"{worker.prefix}.requests.shapes_tf1",
            (folder / name).read_bytes(),
            key=b"camera-7",
            headers=[
                ("correlation-id", b"frame-0001"),
                ("content-type", b"image/png"),
                ("confidence", b"50"),
                ("predictions", b"10"),
            ],
        )

    def mine(records: list[Any]) -> list[Any]:
        return [r for r in records if header_dict(r).get("correlation-id") == "frame-0001"]

    records = mine(
        await read_topic(
            worker.bootstrap, results, expect=1, timeout_s=60, until=lambda rs: bool(mine(rs))
        )
    )
    assert len(records) == 1
    assert records[0].key == b"camera-7"
    body = json.loads(records[0].value)
    assert body["success"] and match_truth(body["data"]["bounding-boxes"], truth[name]) == []


@dataclass(frozen=True)
class BadRequest:
    """One row of the error table: what is sent, and what must come back."""

    correlation_id: str | None
    model: str
    """The request topic's model part."""
    payload: str
    """'garbage', 'good' (a real image) or 'empty'."""
    code: str
    dead_letter: bool
    headers: dict[str, object] = field(default_factory=dict)


BAD_REQUESTS = [
    BadRequest("corrupt", "shapes_tf2", "garbage", "invalid_image", True),
    BadRequest("unknown-model", "ghost", "good", "model_not_found", True),
    BadRequest(None, "shapes_tf2", "good", "invalid_request", True),
    BadRequest("expired", "shapes_tf2", "good", "deadline_exceeded", False, {"deadline_ms": 1}),
    BadRequest("bad-header", "shapes_tf2", "good", "invalid_request", True, {"confidence": "lots"}),
    BadRequest("broken-model", "broken", "good", "model_load_failed", True),
    BadRequest("empty", "shapes_tf2", "empty", "invalid_image", True),
]


@pytest.mark.asyncio
async def test_bad_requests_get_their_error_code_and_the_worker_keeps_serving(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth]
) -> None:
    folder, truth = shapes_images
    good = (folder / next(n for n in sorted(truth) if n.endswith(".jpg") and truth[n])).read_bytes()
    payloads = {"garbage": b"\xff\xd8\xff garbage, not a jpeg", "good": good, "empty": b""}
    prefix, bootstrap = worker.prefix, worker.bootstrap
    reply_to = f"{prefix}.replies.errors"
    await create_topic(bootstrap, reply_to)
    await create_topic(bootstrap, f"{prefix}.requests.ghost", 1)
    async with raw_producer(bootstrap) as producer:
        for case in BAD_REQUESTS:
            await producer.send_and_wait(
                f"{prefix}.requests.{case.model}",
                payloads[case.payload],
                headers=headers(
                    correlation_id=case.correlation_id, reply_to=reply_to, **case.headers
                ),
            )
        # and after all that, a good request is still served
        await producer.send_and_wait(
            f"{prefix}.requests.shapes_tf2",
            good,
            headers=headers(correlation_id="still-alive", reply_to=reply_to),
        )
    expected = {str(case.correlation_id): case.code for case in BAD_REQUESTS}
    # At-least-once: a rebalance (the new 'ghost' topic causes one) may repeat an answer,
    # so wait for every id rather than for a number of records.
    records = await read_topic(
        bootstrap,
        reply_to,
        expect=len(BAD_REQUESTS) + 1,
        timeout_s=90,
        until=lambda recs: set(replies_by_id(recs)) >= {*expected, "still-alive"},
    )
    by_id = replies_by_id(records)
    codes = {cid: bodies[0]["error"]["code"] for cid, bodies in by_id.items() if bodies[0]["error"]}
    assert codes == expected  # None's reply is the one to the request without a correlation id
    assert by_id["still-alive"][0]["success"] is True
    for bodies in by_id.values():
        if bodies[0]["error"]:
            assert bodies[0]["error"]["message"] and bodies[0]["success"] is False
    error_headers = {
        header_dict(r).get("correlation-id"): header_dict(r).get("error-code") for r in records
    }
    assert error_headers["corrupt"] == "invalid_image"

    dead = {case.correlation_id: case.code for case in BAD_REQUESTS if case.dead_letter}

    def dlq_reasons(recs: list[Any]) -> dict[str | None, str]:
        return {
            header_dict(r).get("correlation-id"): header_dict(r)["dlq-reason-code"] for r in recs
        }

    dlq = await read_topic(
        bootstrap,
        f"{prefix}.dlq",
        expect=len(dead),
        timeout_s=60,
        until=lambda recs: set(dlq_reasons(recs)) >= set(dead),
    )
    assert dlq_reasons(dlq) == dead  # the expired request is not a dead letter
    corrupt = next(r for r in dlq if header_dict(r).get("correlation-id") == "corrupt")
    h = header_dict(corrupt)
    assert corrupt.value == payloads["garbage"]  # the original payload, unchanged
    assert (
        h["dlq-source-topic"] == f"{prefix}.requests.shapes_tf2"
        and int(h["dlq-source-offset"]) >= 0
    )
    assert h["reply-to"] == reply_to
    assert h["dlq-reason-code"] == "invalid_image" and "image" in h["dlq-reason"]
    assert not any(header_dict(r).get("correlation-id") == "expired" for r in dlq)
    assert worker.proc is not None and worker.proc.poll() is None


@pytest.mark.asyncio
async def test_models_are_announced_and_can_be_reloaded(worker: ConsumerProcess) -> None:
    def latest(records: list[Any]) -> dict[str, dict[str, Any]]:
        bodies = {r.key.decode(): json.loads(r.value) for r in records if r.value is not None}
        return {body["model"]: body for body in bodies.values()}

    records = await read_topic(
        worker.bootstrap,
        f"{worker.prefix}.models",
        expect=0,
        timeout_s=30,
        until=lambda rs: (
            len(latest(rs)) == 3 and all(b["state"] != "loading" for b in latest(rs).values())
        ),
    )
    # `loading` first (before any model loaded), then each model's outcome.
    states = [json.loads(r.value)["state"] for r in records[:3]]
    assert states == ["loading"] * 3
    by_model = latest(records)
    assert set(by_model) == {"shapes_tf2", "shapes_tf1", "broken"}
    tf2 = by_model["shapes_tf2"]
    assert tf2["state"] == "ready" and tf2["hash"] == model_hash("shapes_tf2")
    assert tf2["version"] == 1 and len(tf2["fingerprint"]) == 16
    assert tf2["versions"] == [{"version": 1, "state": "ready", "fingerprint": tf2["fingerprint"]}]
    assert tf2["engine"] == "tensorflow2_detection" and tf2["device"] == "/CPU:0"
    assert tf2["labels"] == ["red rectangle", "green disc", "blue rectangle", "yellow disc"]
    assert tf2["label_hashes"]["green disc"] == label_hash("shapes_tf2", "green disc")
    assert {"framework", "type", "network", "confidence", "predictions"} <= set(tf2["config"])
    assert by_model["broken"]["state"] == "failed"
    assert by_model["broken"]["error"]["code"] == "model_load_failed"

    reply_to = f"{worker.prefix}.replies.control"
    await create_topic(worker.bootstrap, reply_to)
    async with raw_producer(worker.bootstrap) as producer:
        command = {
            "command": "load",
            "model": "shapes_tf1",
            "force": True,
            "correlation_id": "reload-1",
            "reply_to": reply_to,
        }
        await producer.send_and_wait(f"{worker.prefix}.control", json.dumps(command).encode())
        missing = {
            "command": "load",
            "model": "ghost",
            "correlation_id": "reload-2",
            "reply_to": reply_to,
        }
        await producer.send_and_wait(f"{worker.prefix}.control", json.dumps(missing).encode())
    answers = replies_by_id(await read_topic(worker.bootstrap, reply_to, expect=2, timeout_s=60))
    assert answers["reload-1"][0]["success"] is True
    assert answers["reload-2"][0]["error"]["code"] == "model_not_found"
    # The success is the model loaded again, not just an answer: a second "model ready".
    ready = [
        r["model"]
        for r in worker.log_records()
        if r.get("msg") == "model ready" and r.get("model") in ("shapes_tf1", "shapes_tf2")
    ]
    assert sorted(ready) == ["shapes_tf1", "shapes_tf1", "shapes_tf2"]


@pytest.mark.asyncio
async def test_metrics_and_health(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth]
) -> None:
    # Its own traffic, whatever ran before: one answer, one invalid_image error.
    folder, truth = shapes_images
    image = (folder / next(n for n in sorted(truth) if n.endswith(".jpg"))).read_bytes()
    before = worker.metrics()
    _, replies, _ = await ask(
        worker.bootstrap,
        worker.prefix,
        "shapes_tf2",
        [("metrics-ok", image, {}), ("metrics-bad", b"not an image at all", {})],
    )
    assert replies["metrics-ok"][0]["success"] is True
    assert replies["metrics-bad"][0]["error"]["code"] == "invalid_image"
    status, body = worker.health("/health/ready")
    assert (
        status == 200
        and body["models"]["shapes_tf2"] == "ready"
        and body["models"]["broken"] == "failed"
    )
    assert worker.health("/health/live")[0] == 200
    await wait_for(lambda: "tfstream_lag{" in worker.metrics(), timeout_s=30)  # one lag update
    text = worker.metrics()
    for metric in (
        "tfstream_requests_total",
        "tfstream_errors_total",
        "tfstream_batch_size_bucket",
        "tfstream_queue_seconds_bucket",
        "tfstream_inference_seconds_bucket",
        "tfstream_lag",
        "tfstream_backlog_seconds",
        "tfstream_model_info",
    ):
        assert metric in text, metric
    assert (
        'tfstream_model_info{device="/CPU:0",engine="tensorflow2_detection",'
        'model="shapes_tf2",state="ready",version="1"} 1.0'
    ) in text
    # One label set per model: the loading one was removed when the model became ready.
    assert 'model="shapes_tf2",state="loading"' not in text
    assert 'tfstream_errors_total{code="invalid_image",model="shapes_tf2"}' in text
    # And the counters moved by this test's two requests, not only by earlier tests'.
    requests = ("tfstream_requests_total", {"model": "shapes_tf2"})
    invalid = ("tfstream_errors_total", {"model": "shapes_tf2", "code": "invalid_image"})
    assert sample(text, *requests) >= sample(before, *requests) + 2
    assert sample(text, *invalid) >= sample(before, *invalid) + 1


def sample(text: str, name: str, labels: dict[str, str]) -> float:
    """A sample's value in Prometheus text (0 when absent: a counter not yet counted)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return found.value
    return 0.0


# -- crashes and shutdown ---------------------------------------------------------------


async def send_many(
    bootstrap: str, topic: str, reply_to: str, images: list[bytes], count: int, tag: str
) -> None:
    async with raw_producer(bootstrap) as producer:
        for i in range(count):
            await producer.send(
                topic,
                images[i % len(images)],
                headers=headers(correlation_id=f"{tag}-{i}", reply_to=reply_to),
            )
        await producer.flush()


def _succeeded(records: list[Any]) -> set[str]:
    return {
        cid for cid, bodies in replies_by_id(records).items() if any(b["success"] for b in bodies)
    }


async def answered_ids(bootstrap: str, reply_to: str, expect: int, timeout_s: float) -> set[str]:
    """Correlation ids answered successfully; waits for `expect` distinct ones (duplicates
    are allowed by at-least-once delivery and do not count twice)."""
    records = await read_topic(
        bootstrap,
        reply_to,
        expect=expect,
        timeout_s=timeout_s,
        until=lambda recs: len(_succeeded(recs)) >= expect,
    )
    return _succeeded(records)


@pytest.mark.asyncio
async def test_two_workers_share_partitions_and_survive_a_kill_9(
    kafka_bootstrap: str,
    serving_repository: Path,
    shapes_images: tuple[Path, Truth],
    tmp_path: Path,
) -> None:
    folder, truth = shapes_images
    images = [(folder / n).read_bytes() for n in sorted(truth) if n.endswith(".jpg")]
    prefix = unique_prefix()
    extra = {"TFSTREAM_MODELS": "shapes_tf1", "TFSTREAM_MAX_INFLIGHT": "16"}
    a = ConsumerProcess(kafka_bootstrap, serving_repository, prefix, tmp_path, extra=extra).start()
    b = ConsumerProcess(kafka_bootstrap, serving_repository, prefix, tmp_path, extra=extra).start()
    try:
        a.wait_ready()
        b.wait_ready()
        reply_to = f"{prefix}.replies.kill"
        await create_topic(kafka_bootstrap, reply_to)

        def assigned(p: ConsumerProcess) -> list[str]:
            found = [r for r in p.log_records() if r.get("msg") == "partitions assigned"]
            return found[-1]["partitions"] if found else []

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (assigned(a) and assigned(b)):
            await asyncio.sleep(0.5)
        assert assigned(a) and assigned(b), "both members hold partitions"
        assert not set(assigned(a)) & set(assigned(b))

        await send_many(
            kafka_bootstrap, f"{prefix}.requests.shapes_tf1", reply_to, images, 300, "k"
        )
        await answered_ids(kafka_bootstrap, reply_to, 60, timeout_s=60)  # well under way
        a.proc.kill()  # type: ignore[union-attr]  # SIGKILL: no revoke, no commit, no goodbye
        a.proc.wait()  # type: ignore[union-attr]
        done = await answered_ids(kafka_bootstrap, reply_to, 300, timeout_s=180)
        assert done == {f"k-{i}" for i in range(300)}
    finally:
        a.stop()
        b.stop()


@pytest.mark.asyncio
async def test_sigterm_mid_stream_loses_nothing(
    kafka_bootstrap: str,
    serving_repository: Path,
    shapes_images: tuple[Path, Truth],
    tmp_path: Path,
) -> None:
    folder, truth = shapes_images
    images = [(folder / n).read_bytes() for n in sorted(truth) if n.endswith(".png")]
    prefix = unique_prefix()
    extra = {"TFSTREAM_MODELS": "shapes_tf2"}
    first = ConsumerProcess(
        kafka_bootstrap, serving_repository, prefix, tmp_path, extra=extra
    ).start()
    first.wait_ready()
    # a worker never loads a model it does not serve
    loaded = [
        r["model"]
        for r in first.log_records()
        if r.get("msg") in ("model ready", "model failed to load")
    ]
    assert loaded == ["shapes_tf2"]
    reply_to = f"{prefix}.replies.term"
    await create_topic(kafka_bootstrap, reply_to)
    await send_many(kafka_bootstrap, f"{prefix}.requests.shapes_tf2", reply_to, images, 400, "t")
    await answered_ids(kafka_bootstrap, reply_to, 20, timeout_s=60)  # mid-stream
    first.signal(signal.SIGTERM)
    assert first.wait(60) == 0, first.log_tail()
    stopped = [r["msg"] for r in first.log_records()]
    assert "stopping: finishing the work in hand" in stopped and "worker stopped" in stopped
    # A clean stop says `stopped` (the model still exists), not a tombstone.
    key = f"shapes_tf2|w-{first.name}".encode()
    announced = await read_topic(
        kafka_bootstrap,
        f"{prefix}.models",
        0,
        timeout_s=30,
        until=lambda rs: any(r.key == key and r.value and b'"stopped"' in r.value for r in rs),
    )
    last = [r for r in announced if r.key == key][-1]
    assert last.value is not None and json.loads(last.value)["state"] == "stopped"
    before_restart = await answered_ids(kafka_bootstrap, reply_to, 400, timeout_s=2)
    assert len(before_restart) < 400, "the stream was still running when SIGTERM came"
    second = ConsumerProcess(
        kafka_bootstrap, serving_repository, prefix, tmp_path, extra=extra
    ).start()
    try:
        second.wait_ready()
        assert await answered_ids(kafka_bootstrap, reply_to, 400, timeout_s=180) == {
            f"t-{i}" for i in range(400)
        }
    finally:
        second.stop()
    # Nothing lost is not enough: a worker that skipped its last commit would pass that
    # too, its successor answering the same requests again. A clean SIGTERM commits
    # every answer it sent, so no request is answered twice.
    answers = replies_by_id(await read_to_end(kafka_bootstrap, reply_to))
    twice = sorted(cid for cid, bodies in answers.items() if len(bodies) > 1)
    assert not twice, f"answered again after a clean SIGTERM: {len(twice)}, e.g. {twice[:5]}"


def test_a_worker_that_can_load_no_model_exits_with_an_error(
    kafka_bootstrap: str, serving_repository: Path, tmp_path: Path
) -> None:
    worker = ConsumerProcess(
        kafka_bootstrap,
        serving_repository,
        unique_prefix(),
        tmp_path,
        extra={"TFSTREAM_MODELS": "broken"},
    ).start()
    assert worker.wait(120) == 1, worker.log_tail()
    failures = [r for r in worker.log_records() if r.get("msg", "").startswith("worker failed")]
    assert failures and "no model could be loaded" in failures[0]["error"]
    assert "exc" not in failures[0] and "Traceback" not in worker.log_tail()
    assert "broken" in failures[0]["error"]


@pytest.mark.asyncio
async def test_a_10_mb_image_is_served_and_a_larger_one_is_refused(
    worker: ConsumerProcess, tmp_path: Path
) -> None:
    import io

    import numpy as np

    noise = np.random.default_rng(0).integers(0, 255, (1800, 1800, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    big = buffer.getvalue()
    assert 9_000_000 < len(big) <= 10 * 1024 * 1024  # noise does not compress
    too_big = big + b"\0" * (11 * 1024 * 1024 - len(big))
    _, replies, _ = await ask(
        worker.bootstrap,
        worker.prefix,
        "shapes_tf2",
        [("big", big, {}), ("too-big", too_big, {})],
    )
    assert replies["big"][0]["success"] is True
    assert (replies["big"][0]["data"]["width"], replies["big"][0]["data"]["height"]) == (1800, 1800)
    assert replies["too-big"][0]["error"]["code"] == "image_too_large"


@pytest.mark.asyncio
async def test_a_broker_crash_in_a_three_node_cluster_loses_nothing(
    kafka_cluster3: Any, serving_repository: Path, shapes_images: tuple[Path, Truth], tmp_path: Path
) -> None:
    folder, truth = shapes_images
    images = [(folder / n).read_bytes() for n in sorted(truth) if n.endswith(".jpg")]
    bootstrap = kafka_cluster3.bootstrap
    prefix = unique_prefix()
    worker = ConsumerProcess(
        bootstrap, serving_repository, prefix, tmp_path, extra={"TFSTREAM_MODELS": "shapes_tf1"}
    ).start()
    try:
        worker.wait_ready()
        reply_to = f"{prefix}.replies.crash"
        await create_topic(bootstrap, reply_to, replication=3)
        await send_many(bootstrap, f"{prefix}.requests.shapes_tf1", reply_to, images, 150, "c")
        kafka_cluster3.kill_broker(1)  # SIGKILL, mid-stream
        done = await answered_ids(bootstrap, reply_to, 150, timeout_s=180)
        assert done == {f"c-{i}" for i in range(150)}
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        worker.stop()


@pytest.mark.asyncio
async def test_a_reply_topic_that_is_gone_does_not_block_the_partition(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth]
) -> None:
    """A client deleted its reply topic while its request waited: the answer goes to the
    results topic instead, and the requests behind it are answered and committed."""
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if truth[n])
    data = (folder / name).read_bytes()
    results = f"{worker.prefix}.results.shapes_tf2"
    reply_to = f"{worker.prefix}.replies.alive"
    await create_topic(worker.bootstrap, reply_to)
    async with raw_producer(worker.bootstrap) as producer:
        topic = f"{worker.prefix}.requests.shapes_tf2"
        for i in range(4):  # one partition: the lost reply is in front of the others
            await producer.send_and_wait(
                topic,
                data,
                key=b"same-partition",
                headers=headers(
                    correlation_id="orphan" if i == 0 else f"after-{i}",
                    reply_to=f"{worker.prefix}.replies.deleted" if i == 0 else reply_to,
                ),
            )
    after = await read_topic(worker.bootstrap, reply_to, expect=3, timeout_s=90)
    assert set(replies_by_id(after)) == {"after-1", "after-2", "after-3"}
    redirected = await read_topic(
        worker.bootstrap,
        results,
        expect=10**6,
        timeout_s=60,
        until=lambda recs: "orphan" in replies_by_id(recs),
    )
    assert replies_by_id(redirected)["orphan"][0]["success"] is True
