"""Rolling out a model on a real broker: the serving group's answer log, shadow groups
on a candidate, and tfstream-diff between them, all as separate processes.

The candidate is shapes_tf2 with weights blind to one class (yellow discs), so
the difference it makes is known and countable: the shadow finds every box the
serving model finds except the yellow discs. A second shadow runs the very same
model and must agree fully.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumer.answer_log import LoggedAnswer, Role
from consumer.settings import KafkaClientSettings
from deploy.local.processes import ConsumerProcess
from producer_tools.client import DetectClient
from tests.support.models import REPO_ROOT, candidate_repository, match_truth, serving_copy
from tests.support.workers import (
    create_topic,
    header_dict,
    headers,
    raw_producer,
    read_to_end,
    read_topic,
    unique_prefix,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

Truth = dict[str, list[dict[str, Any]]]
MODEL = "shapes_tf2"
CLIENTS = 4
PER_CLIENT = 45
CAMERA_FRAMES = 20
TOTAL = CLIENTS * PER_CLIENT + CAMERA_FRAMES
BLIND = "yellow disc"


@dataclass
class Rollout:
    prefix: str
    serving: ConsumerProcess
    candidate: ConsumerProcess
    same: ConsumerProcess

    def topic(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}.{kind}.{name + '.' if name else ''}{MODEL}"


@pytest.fixture(scope="module")
def rollout(
    kafka_bootstrap: str, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rollout]:
    root = tmp_path_factory.mktemp("rollout")
    logs = tmp_path_factory.mktemp("rollout_logs")
    serving_repo = serving_copy(model_repository, root / "serving")
    blind_repo = candidate_repository(root / "blind", BLIND)
    prefix = unique_prefix()
    common = {"TFSTREAM_MODELS": MODEL, "TFSTREAM_MAX_BATCH": "8", "TFSTREAM_MAX_DELAY_MS": "5"}
    serving = ConsumerProcess(
        kafka_bootstrap, serving_repo, prefix, logs, extra={**common, "TFSTREAM_ANSWER_LOG": "1"}
    )
    candidate = ConsumerProcess(
        kafka_bootstrap, blind_repo, prefix, logs, extra={**common, "TFSTREAM_SHADOW": "v2"}
    )
    same = ConsumerProcess(
        kafka_bootstrap, serving_repo, prefix, logs, extra={**common, "TFSTREAM_SHADOW": "same"}
    )
    procs = [serving.start(), candidate.start(), same.start()]
    try:
        for proc in procs:
            proc.wait_ready(timeout_s=300)
        yield Rollout(prefix, serving, candidate, same)
    finally:
        for proc in procs:
            proc.stop()
    for proc in procs:
        assert proc.proc is not None and proc.proc.returncode == 0, proc.log_tail()


def run_diff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer_tools.diff", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def send_all(
    rollout: Rollout, folder: Path, names: list[str]
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """CLIENTS clients (own reply topics) and one camera (no reply-to): TOTAL frames, one
    of them garbage. Returns, per reply topic, correlation id -> image name, and the
    camera's."""
    bootstrap = rollout.serving.bootstrap
    sent: dict[str, dict[str, str]] = {}
    camera: dict[str, str] = {}
    for c in range(CLIENTS):
        reply_to = f"{rollout.prefix}.replies.client{c}"
        await create_topic(bootstrap, reply_to)
        sent[reply_to] = {}
    requests = rollout.topic("requests")
    async with raw_producer(bootstrap) as producer:
        for i in range(CLIENTS * PER_CLIENT + CAMERA_FRAMES):
            name = names[i % len(names)]
            image = (folder / name).read_bytes()
            if i < CLIENTS * PER_CLIENT:
                reply_to = f"{rollout.prefix}.replies.client{i % CLIENTS}"
                cid = f"c{i % CLIENTS}-{i}"
                if i == 0:
                    image, name = b"not an image", "garbage"
                sent[reply_to][cid] = name
                h = headers(correlation_id=cid, reply_to=reply_to, image_name=name)
            else:
                cid = f"cam-{i}"
                camera[cid] = name
                h = headers(correlation_id=cid, image_name=name)
            await producer.send(requests, image, key=name.encode(), headers=h)
        await producer.flush()
    return sent, camera


def answers(records: list[Any]) -> dict[str, LoggedAnswer]:
    """Logged answers by ident; an ident logged twice fails the test (keyed by ident
    alone, a duplicate would vanish)."""
    out: dict[str, LoggedAnswer] = {}
    for rec in records:
        logged = LoggedAnswer.from_json(rec.value)
        assert logged.ident not in out, f"{logged.ident} logged twice"
        out[logged.ident] = logged
    return out


async def everything(bootstrap: str, topic: str, expect: int, timeout_s: float) -> list[Any]:
    """Every record of `topic` once `expect` arrived: whatever came twice is there too."""
    await read_topic(bootstrap, topic, expect, timeout_s)
    return await read_to_end(bootstrap, topic)


@pytest.mark.asyncio
async def test_clients_get_only_serving_answers_and_the_diff_counts_what_the_candidate_misses(
    rollout: Rollout, shapes_images: tuple[Path, Truth], tmp_path: Path
) -> None:
    folder, truth = shapes_images
    bootstrap = rollout.serving.bootstrap
    names = sorted(n for n in truth if n.endswith(".jpg"))
    sent, camera = await send_all(rollout, folder, names)

    # Every answer is logged, once per request, by the serving group and by each shadow.
    logged = answers(await everything(bootstrap, rollout.topic("answers"), TOTAL, 300))
    shadow_v2 = answers(await everything(bootstrap, rollout.topic("shadow", "v2"), TOTAL, 300))
    shadow_same = answers(await everything(bootstrap, rollout.topic("shadow", "same"), TOTAL, 300))
    all_ids = {cid for ids in sent.values() for cid in ids} | set(camera)
    assert set(logged) == set(shadow_v2) == set(shadow_same) == all_ids
    assert len(all_ids) == TOTAL == 200

    # Each client got exactly its own answers, all from the serving worker and model.
    serving_worker = f"w-{rollout.serving.name}"
    for reply_to, ids in sent.items():
        records = await read_topic(bootstrap, reply_to, expect=len(ids) + 1, timeout_s=5)
        bodies = [json.loads(r.value) for r in records]
        assert sorted(b["correlation_id"] for b in bodies) == sorted(ids)
        for body in bodies:
            assert body["worker"] == serving_worker
            name = ids[body["correlation_id"]]
            if name == "garbage":
                assert body["error"]["code"] == "invalid_image"
                continue
            assert match_truth(body["data"]["bounding-boxes"], truth[name]) == []
            entry = logged[body["correlation_id"]]
            assert entry.role is Role.SERVING and entry.reply_to == reply_to
            assert entry.reply.data == body["data"]  # the log holds what the client got
    results = await read_topic(
        bootstrap, rollout.topic("results"), expect=CAMERA_FRAMES + 1, timeout_s=5
    )
    assert sorted(header_dict(r)["correlation-id"] for r in results) == sorted(camera)
    assert {json.loads(r.value)["worker"] for r in results} == {serving_worker}
    dlq = await read_topic(bootstrap, f"{rollout.prefix}.dlq", expect=2, timeout_s=5)
    assert [header_dict(r)["dlq-worker"] for r in dlq] == [serving_worker]
    # Shadows announce nothing.
    models = await read_topic(bootstrap, f"{rollout.prefix}.models", expect=100, timeout_s=5)
    announcers = {r.key.decode().split("|")[1] for r in models}
    assert announcers == {serving_worker}
    assert {a.shadow for a in shadow_v2.values()} == {"v2"}
    assert {a.worker for a in (x.reply for x in shadow_v2.values())} == {
        f"w-{rollout.candidate.name}"
    }

    # What the serving model found that the candidate cannot see.
    served = [b for a in logged.values() if a.reply.success for b in a.reply.data["bounding-boxes"]]
    blind = sum(1 for b in served if b["ObjectClassName"] == BLIND)
    assert blind > 0

    diff = run_diff(
        "--bootstrap", bootstrap,
        "--baseline", rollout.topic("answers"),
        "--candidate", rollout.topic("shadow", "v2"),
        "--count", str(TOTAL),
        "--json",
    )  # fmt: skip
    assert diff.returncode == 0, diff.stderr
    report = json.loads(diff.stdout)
    assert report["frames"] == {
        "paired": TOTAL,
        "compared": TOTAL - 1,
        "only_baseline": 0,
        "only_candidate": 0,
    }
    missing = report["classes"][BLIND]
    assert (missing["baseline"], missing["candidate"], missing["only_baseline"]) == (
        blind,
        0,
        blind,
    )
    for name, stats in report["classes"].items():
        if name != BLIND:
            assert stats["matched"] == stats["baseline"] == stats["candidate"] > 0
            assert stats["mean_iou"] == 1.0
    assert report["overall"]["baseline"] == len(served)
    assert report["agreement"] == round((len(served) - blind) / len(served), 4)
    assert report["errors"] == {
        "baseline": {"invalid_image": 1},
        "candidate": {"invalid_image": 1},
    }
    for side in ("baseline", "candidate"):
        latency = report["latency_ms"][side]
        assert latency["count"] == TOTAL and 0 < latency["p50"] <= latency["p99"]

    # The same figures as a table, and a page; the identical shadow agrees fully.
    shown = run_diff(
        "--bootstrap", bootstrap,
        "--baseline", rollout.topic("answers"),
        "--candidate", rollout.topic("shadow", "v2"),
        "--report", str(tmp_path / "report"),
        "--min-agreement", "0.99",
    )  # fmt: skip
    assert shown.returncode == 1 and "below --min-agreement" in shown.stderr
    print(shown.stdout)  # the table the closing note quotes
    assert f"{BLIND:<22} {blind:>8} {0:>9} {0:>7} {blind:>9}" in shown.stdout
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'data-label="yellow disc" data-matched="no"' in page
    assert list((tmp_path / "report" / "frames").glob("*.jpg"))  # frames read back from Kafka
    same = run_diff(
        "--bootstrap", bootstrap,
        "--baseline", rollout.topic("answers"),
        "--candidate", rollout.topic("shadow", "same"),
        "--min-agreement", "1.0",
        "--json",
    )  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["agreement"] == 1.0

    metrics = rollout.candidate.metrics()
    assert f'tfstream_requests_total{{model="{MODEL}",role="shadow",shadow="v2"}}' in metrics
    assert "role=" not in rollout.serving.metrics()


@pytest.mark.asyncio
async def test_a_slow_shadow_changes_nothing_for_the_serving_group(
    kafka_bootstrap: str,
    model_repository: Path,
    shapes_images: tuple[Path, Truth],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Serving latency and answers with and without a shadow that needs 400 ms per frame."""
    folder, truth = shapes_images
    names = sorted(n for n in truth if n.endswith(".jpg"))[:30]
    prefix = unique_prefix()
    logs = tmp_path_factory.mktemp("slow_logs")
    serving = ConsumerProcess(
        kafka_bootstrap, model_repository, prefix, logs, extra={"TFSTREAM_MODELS": MODEL}
    ).start()
    slow = ConsumerProcess(
        kafka_bootstrap,
        model_repository,
        prefix,
        logs,
        extra={
            "TFSTREAM_MODELS": MODEL,
            "TFSTREAM_SHADOW": "slow",
            "TFSTREAM_SIMULATE_BATCH_MS": "400",
            "TFSTREAM_MAX_BATCH": "1",
        },
    )
    settings = KafkaClientSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix)
    asked: list[str] = []

    async def one_pass(client: DetectClient) -> tuple[dict[str, Any], list[float]]:
        found, latencies = {}, []
        asked.clear()
        for name in names:
            started = time.perf_counter()
            reply = await client.detect(MODEL, (folder / name).read_bytes(), key=name.encode())
            latencies.append((time.perf_counter() - started) * 1000)
            assert reply.success and reply.data is not None
            found[name] = reply.data["bounding-boxes"]
            asked.append(reply.correlation_id or "")
        return found, latencies

    try:
        serving.wait_ready(timeout_s=300)
        async with DetectClient(settings, timeout_s=120) as client:
            await one_pass(client)  # warm-up: first calls build the graph
            alone, alone_ms = await one_pass(client)
            slow.start().wait_ready(timeout_s=300)
            shadowed, shadowed_ms = await one_pass(client)
        finished = time.time() * 1000
        assert shadowed == alone
        assert all(match_truth(boxes, truth[name]) == [] for name, boxes in shadowed.items())
        p50_alone, p50_shadowed = statistics.median(alone_ms), statistics.median(shadowed_ms)
        # Generous: this machine is shared; the shadow's group never holds a serving request.
        assert p50_shadowed <= max(3 * p50_alone, p50_alone + 250), (alone_ms, shadowed_ms)

        # The shadow did answer the same frames, much later: it lagged, nobody waited.
        shadow_records = await everything(
            kafka_bootstrap, f"{prefix}.shadow.slow.{MODEL}", len(names), 120
        )
        shadow_answers = [LoggedAnswer.from_json(r.value) for r in shadow_records]
        assert len(shadow_answers) == len(names)
        assert all(a.reply.timing.inference_ms >= 400 for a in shadow_answers)
        assert max(a.answered_ms for a in shadow_answers) > finished
        assert statistics.median(a.latency_ms or 0 for a in shadow_answers) > p50_shadowed
        # It started at the live end: the passes before it were never shadowed.
        assert {a.reply.correlation_id for a in shadow_answers} == set(asked)
    finally:
        slow.stop()
        serving.stop()
    assert slow.proc is not None and slow.proc.returncode == 0, slow.log_tail()


@pytest.mark.asyncio
async def test_a_shadow_can_start_from_a_time_and_applies_deadlines(
    kafka_bootstrap: str,
    model_repository: Path,
    shapes_images: tuple[Path, Truth],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Requests sent before the shadow started are answered when it starts from a time
    before them; those whose deadline has passed are answered `deadline_exceeded`."""
    folder, truth = shapes_images
    name = next(n for n in sorted(truth) if n.endswith(".jpg"))
    prefix = unique_prefix()
    topic = f"{prefix}.requests.{MODEL}"
    await create_topic(kafka_bootstrap, topic, partitions=4)
    before = int(time.time() * 1000) - 1000
    async with raw_producer(kafka_bootstrap) as producer:
        for i in range(6):
            extra = {"deadline_ms": 1} if i % 2 else {}
            await producer.send(
                topic,
                (folder / name).read_bytes(),
                key=f"k{i}".encode(),
                headers=headers(correlation_id=f"early-{i}", **extra),
            )
        await producer.flush()
    shadow = ConsumerProcess(
        kafka_bootstrap,
        model_repository,
        prefix,
        tmp_path_factory.mktemp("from_logs"),
        group=f"g-{uuid.uuid4().hex[:6]}",
        extra={
            "TFSTREAM_MODELS": MODEL,
            "TFSTREAM_SHADOW": "late",
            "TFSTREAM_SHADOW_FROM": str(before),
        },
    ).start()
    try:
        shadow.wait_ready(timeout_s=300)
        records = await everything(kafka_bootstrap, f"{prefix}.shadow.late.{MODEL}", 6, 120)
    finally:
        shadow.stop()
    codes = {
        ident: (a.reply.error.code if a.reply.error else "ok")
        for ident, a in answers(records).items()
    }
    assert codes == {f"early-{i}": "deadline_exceeded" if i % 2 else "ok" for i in range(6)}
