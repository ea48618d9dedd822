"""Events per second one worker's tracking stage sustains, Kafka writes included.

The worker's own path (`consumer.tracking_stage.TrackingStage` over a
`KafkaOutbox`): each frame's boxes are applied in its camera's order, its
events written and acknowledged, then the camera's state record, as a worker
does before committing. Detection is left out (the answers' boxes come from
the generator, engines/modelgen/paths.py), so this is the tracking stage's own
ceiling; `bench.tracking_cost` gives its per-frame CPU against detection.

To make events dense, the crowded 1920x1080 scene (about 20 objects in view)
has 16 counting lines across the image: most moving objects cross several.
A local broker is started unless --bootstrap names one.

    python -m bench.tracking_events [--bootstrap localhost:9092] [--cameras 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from aiokafka import TopicPartition

from consumer import kafka_io
from consumer.pipeline import Answer
from consumer.protocol import Reply, Topics
from consumer.records import Record
from consumer.settings import ConsumerSettings
from consumer.tracking.config import CameraConfig, LineConfig, TrackerConfig
from consumer.tracking_stage import TrackedAnswer, TrackingStage
from engines.modelgen.paths import Frame, make_scene, noisy_frames

MODEL = "bench"
LINES = 16


def _config(camera: str, width: int, height: int) -> CameraConfig:
    step = height / (LINES + 1)
    return CameraConfig(
        camera=camera,
        tracker=TrackerConfig(frame_rate=15),
        lines=[
            LineConfig(name=f"l{i}", start=(0, step * (i + 1)), end=(width, step * (i + 1)))
            for i in range(LINES)
        ],
    )


def _answered(frame: Frame) -> Awaitable[Answer]:
    future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    data = {"bounding-boxes": frame.boxes, "ImageName": None, "width": 1920, "height": 1080}
    future.set_result(Answer(Reply("c", MODEL, data=data)))
    return future


async def measure(bootstrap: str, cameras: int, inflight: int) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = ConsumerSettings(bootstrap=bootstrap, topic_prefix=prefix)
    topics = Topics(prefix)
    await kafka_io.ensure_topics(
        settings,
        [
            kafka_io.TopicSpec(topics.requests(MODEL), cameras),
            kafka_io.TopicSpec(topics.state(MODEL), cameras, compacted=True),
            kafka_io.TopicSpec(topics.events(MODEL), cameras),
        ],
        1,
    )
    producer = await kafka_io.started(kafka_io.producer(settings, "bench", linger_ms=5))
    stage = TrackingStage(settings, topics, kafka_io.KafkaOutbox(producer), lambda _: False)
    scene = make_scene(seed=2, movers=150, frames=900, width=1920, height=1080, one_per_class=False)
    frames = noisy_frames(scene, seed=1, skip=0.0)
    names = [f"cam-{i}" for i in range(cameras)]
    for name in names:
        stage.configure(*_config(name, scene.width, scene.height).to_record())
    stage.assigned([TopicPartition(topics.requests(MODEL), i) for i in range(cameras)])
    events = states = 0
    pending: set[asyncio.Task[None]] = set()

    async def finish(tracked: Awaitable[Answer]) -> None:
        nonlocal events, states
        answer = await tracked
        if isinstance(answer, TrackedAnswer) and answer.writes is not None:
            try:
                await answer.writes()
            finally:
                answer.settled()  # as the worker's delivery does, written or not
            states += 1

    started = time.perf_counter()
    for frame in frames:
        for partition, name in enumerate(names):
            record = Record(
                topics.requests(MODEL),
                partition,
                frame.index,
                name.encode(),
                None,
                (("capture-ms", str(round(frame.timestamp_s * 1000)).encode()),),
            )
            task = asyncio.ensure_future(finish(stage.tracked(record, MODEL, _answered(frame))))
            pending.add(task)
            task.add_done_callback(pending.discard)
            while len(pending) >= inflight:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - started
    await stage.close()
    await producer.stop()
    end = await _count(settings, topics.events(MODEL), cameras)
    events = end
    return {
        "cameras": cameras,
        "frames": len(frames) * cameras,
        "events": events,
        "state_records": states,
        "seconds": round(elapsed, 2),
        "events_per_s": round(events / elapsed, 1),
        "frames_per_s": round(len(frames) * cameras / elapsed, 1),
    }


async def _count(settings: ConsumerSettings, topic: str, partitions: int) -> int:
    consumer = await kafka_io.started(kafka_io.consumer(settings, "bench", group_id=None))
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=64, help="frames in hand (max-inflight)")
    args = parser.parse_args()
    cluster = None
    if not args.bootstrap:
        from deploy.local.kafka import LocalKafkaCluster

        cluster = LocalKafkaCluster(brokers=1).start()
        args.bootstrap = cluster.bootstrap
    try:
        row = asyncio.run(measure(args.bootstrap, args.cameras, args.inflight))
    finally:
        if cluster is not None:
            cluster.stop()
    print(
        f"{row['cameras']} cameras, {row['frames']} frames, {row['events']} events, "
        f"{row['state_records']} state records in {row['seconds']} s: "
        f"{row['events_per_s']:.0f} events/s, {row['frames_per_s']:.0f} frames/s "
        f"(tracking stage with Kafka writes, no detection)"
    )


if __name__ == "__main__":
    main()
