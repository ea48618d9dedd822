"""Tracking against a real broker: exact counts and kept track IDs while workers die (issue 30).

Two cameras of shapes moving on known paths (engines/modelgen/paths.py), rendered
so that the shapes_tf2 demo model finds them, share one request partition (so one
worker at a time serves both); a third, unconfigured camera is not tracked. Three
workers serve them; whenever a quarter more of the frames is answered, the worker
serving the cameras is killed with SIGKILL and a new one is started (a schedule by
progress, not the issue's every 20 s: a worker here needs ~6 s to be declared
dead and ~20 s to start on a loaded 2-core machine, so three moves fit a test of
about two minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from consumer.settings import KafkaClientSettings
from consumer.tracking.cameras import Cameras
from consumer.tracking.config import CameraConfig, LineConfig, TrackerConfig, ZoneConfig
from consumer.tracking.events import Position
from deploy.local.processes import ConsumerProcess
from engines.modelgen.paths import Scene, make_scene
from producer_tools.client import tracking_events
from tests.support.scene_video import render_frames
from tests.support.tracking_metrics import idf1
from tests.support.workers import (
    create_topic,
    headers,
    raw_producer,
    read_to_end,
    unique_prefix,
)

pytestmark = pytest.mark.slow

FPS = 15.0
FRAMES = 200
CAMERA_PARTITION = 1
PLAIN = "plain-cam"
PLAIN_FRAMES = 10
WORKER_ENV = {"TFSTREAM_MODELS": "shapes_tf2", "TFSTREAM_MAX_INFLIGHT": "32"}


def _scene(seed: int) -> Scene:
    return make_scene(seed, movers=7, frames=FRAMES, width=480, height=360, fps=FPS)


def _config(camera: str, scene: Scene) -> CameraConfig:
    return CameraConfig(
        camera=camera,
        tracker=TrackerConfig(frame_rate=FPS),
        lines=[LineConfig(name="door", start=scene.line_start, end=scene.line_end)],
        zones=[ZoneConfig(name="bay", polygon=scene.zone_polygon)],
    )


def _capture_ms(index: int) -> int:
    return round(index / FPS * 1000)


def _truth(scene: Scene, index: int) -> list[tuple[int, tuple[float, float, float, float]]]:
    return [(m.id, m.box(index)) for m in scene.movers if m.alive(index)]


def _idf1(scene: Scene, answers: dict[int, list[dict[str, Any]]]) -> float:
    frames = range(scene.frames)
    return idf1([_truth(scene, i) for i in frames], [answers.get(i, []) for i in frames])


class Progress:
    """Follows the results topic: answers per camera frame and who gave them."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        self.last_worker: dict[str, str] = {}
        self.workers: dict[str, set[str]] = {}

    async def poll(self) -> None:
        for recs in (await self.consumer.getmany(timeout_ms=300)).values():
            for rec in recs:
                body = json.loads(rec.value)
                cid = str(body["correlation_id"])
                self.bodies.setdefault(cid, []).append(body)
                camera = cid.rsplit("-", 1)[0]
                self.last_worker[camera] = body["worker"]
                self.workers.setdefault(camera, set()).add(body["worker"])

    def answered(self, camera: str) -> int:
        return sum(1 for cid in self.bodies if cid.rsplit("-", 1)[0] == camera)


def _best(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answer that carries the frame's track IDs: a frame answered again after a
    move, which its camera's state covered already, carries None."""
    ok = [b for b in bodies if b["success"]]
    assert ok, bodies
    return max(
        (b["data"]["bounding-boxes"] for b in ok),
        key=lambda boxes: sum(x.get("track_id") is not None for x in boxes),
    )


@pytest.mark.asyncio
async def test_counts_are_exact_and_ids_kept_while_workers_are_killed(
    kafka_bootstrap: str, serving_repository: Path, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    scenes = {"cam-a": _scene(9), "cam-b": _scene(13)}
    frames = {camera: render_frames(scene, seed=1) for camera, scene in scenes.items()}
    for scene in scenes.values():  # both cameras see crossings and zone stays
        assert scene.true_crossings() and scene.true_zone_entries()

    cameras_topic = f"{prefix}.zones"
    await create_topic(kafka_bootstrap, cameras_topic)
    async with raw_producer(kafka_bootstrap) as producer:
        for camera, scene in scenes.items():
            key, value = _config(camera, scene).to_record()
            await producer.send_and_wait(cameras_topic, value, key=key)

    def worker() -> ConsumerProcess:
        return ConsumerProcess(
            kafka_bootstrap, serving_repository, prefix, tmp_path, extra=WORKER_ENV
        ).start()

    workers = [worker() for _ in range(3)]
    requests = f"{prefix}.requests.shapes_tf2"
    progress = Progress(kafka_bootstrap, f"{prefix}.results.shapes_tf2")
    kills: list[tuple[str, int]] = []
    offsets: dict[str, dict[int, int]] = {camera: {} for camera in scenes}
    try:
        for w in workers:
            w.wait_ready()
        async with raw_producer(kafka_bootstrap) as producer:
            for index in range(FRAMES):
                for camera in scenes:
                    meta = await producer.send_and_wait(
                        requests,
                        frames[camera][index],
                        key=camera.encode(),
                        partition=CAMERA_PARTITION,
                        headers=headers(
                            correlation_id=f"{camera}-{index}", capture_ms=_capture_ms(index)
                        ),
                    )
                    offsets[camera][index] = meta.offset
            plain = frames["cam-a"][:PLAIN_FRAMES]
            for index, image in enumerate(plain):
                await producer.send(
                    requests,
                    image,
                    key=PLAIN.encode(),
                    partition=CAMERA_PARTITION + 1,
                    headers=headers(correlation_id=f"{PLAIN}-{index}"),
                )
            await producer.flush()

        await progress.consumer.start()
        total = 2 * FRAMES + PLAIN_FRAMES
        marks = [int(0.25 * 2 * FRAMES), int(0.5 * 2 * FRAMES), int(0.75 * 2 * FRAMES)]
        deadline = time.monotonic() + 300
        while len(progress.bodies) < total:
            assert time.monotonic() < deadline, f"answered {len(progress.bodies)} of {total}"
            await progress.poll()
            done = progress.answered("cam-a") + progress.answered("cam-b")
            if marks and done >= marks[0]:
                marks.pop(0)
                serving = progress.last_worker["cam-a"]
                victim = next(w for w in workers if f"w-{w.name}" == serving)
                if victim.proc is not None and victim.proc.poll() is None:
                    victim.proc.kill()  # SIGKILL: no revoke, no commit, no goodbye
                    victim.proc.wait()
                    kills.append((serving, done))
                    workers.append(worker())
    finally:
        await progress.consumer.stop()
        for w in workers:
            w.stop()

    assert len(kills) == 3, kills
    for camera in scenes:  # the cameras moved: answered by at least three workers
        assert len(progress.workers[camera]) >= 3, progress.workers

    # Counts in each camera's last state record equal the truth exactly.
    states: dict[str, dict[str, Any]] = {}
    for rec in await read_to_end(kafka_bootstrap, f"{prefix}.state.shapes_tf2"):
        assert rec.partition == CAMERA_PARTITION  # beside the camera's requests
        states[rec.key.decode()] = json.loads(rec.value)
    assert set(states) == set(scenes)  # the untracked camera keeps no state
    table = []
    for camera, scene in scenes.items():
        state = states[camera]
        assert state["position"]["offset"] == offsets[camera][FRAMES - 1]
        counts = state["counts"]
        line = {(c, k): n for c, kinds in counts.get("door", {}).items() for k, n in kinds.items()}
        assert line == scene.true_crossings(), camera
        entries = scene.true_zone_entries()
        enter = {c: kinds.get("enter", 0) for c, kinds in counts.get("bay", {}).items()}
        leave = {c: kinds.get("leave", 0) for c, kinds in counts.get("bay", {}).items()}
        assert enter == entries and leave == entries, camera
        table.append((camera, line, entries))

    # Every true crossing and zone entry appears once after dropping repeated ids.
    events = [
        json.loads(r.value)
        for r in await read_to_end(kafka_bootstrap, f"{prefix}.events.shapes_tf2")
    ]
    unique = {e["id"]: e for e in events}
    repeats = len(events) - len(unique)
    first: dict[str, dict[str, Any]] = {}
    for event in events:  # a repeat is the same event again, never another under its id
        assert first.setdefault(event["id"], event) == event, event
    for camera, scene in scenes.items():
        mine = [e for e in unique.values() if e["camera"] == camera]
        crossings = Counter(
            (e["class"], e["kind"]) for e in mine if e["kind"] in ("crossed_in", "crossed_out")
        )
        assert dict(crossings) == scene.true_crossings(), camera
        enters = Counter(e["class"] for e in mine if e["kind"] == "enter")
        assert dict(enters) == scene.true_zone_entries(), camera
        leaves = Counter(e["class"] for e in mine if e["kind"] == "leave")
        assert dict(leaves) == scene.true_zone_entries(), camera
        # Nothing counted twice nor lost: the state counts exactly the unique events.
        counted = sum(
            n
            for classes in states[camera]["counts"].values()
            for kinds in classes.values()
            for n in kinds.values()
        )
        assert counted == len(mine), (camera, counted, len(mine))
    assert not [e for e in events if e["camera"] == PLAIN]
    # The client library gives each event once.
    client_events: list[dict[str, Any]] = []
    settings = KafkaClientSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix)
    stream = tracking_events(settings, "shapes_tf2")
    async with contextlib.aclosing(stream), asyncio.timeout(60):
        async for event in stream:
            client_events.append(event)
            if len(client_events) == len(unique):
                break
    assert sorted(e["id"] for e in client_events) == sorted(unique)

    # Track IDs: the same as one uninterrupted run over the same detections, where a
    # camera has its own tracker (so the cameras never share IDs), and IDF1 within 95%.
    continuity = {}
    for camera, scene in scenes.items():
        answers = {
            int(cid.rsplit("-", 1)[1]): _best(bodies)
            for cid, bodies in progress.bodies.items()
            if cid.rsplit("-", 1)[0] == camera
        }
        alone = Cameras()
        alone.configure(*_config(camera, scene).to_record())
        same = compared = 0
        reference: dict[int, list[dict[str, Any]]] = {}
        for index in range(FRAMES):
            boxes = [{k: v for k, v in b.items() if k != "track_id"} for b in answers[index]]
            position = Position(requests, CAMERA_PARTITION, offsets[camera][index])
            outcome = alone.apply(camera, position, boxes, _capture_ms(index) / 1000)
            reference[index] = list(outcome.boxes)  # type: ignore[arg-type]
            got = [b.get("track_id") for b in answers[index]]
            if all(t is None for t in got) and any(
                b.get("track_id") is not None for b in reference[index]
            ):
                continue  # applied by a worker killed before its answer left
            compared += 1
            same += got == [b.get("track_id") for b in reference[index]]
        # Skipped frames were in flight in a killed worker: at most its in-flight bound.
        assert compared >= FRAMES - len(kills) * int(WORKER_ENV["TFSTREAM_MAX_INFLIGHT"])
        kept = same / compared
        idf1_kill, idf1_ref = _idf1(scene, answers), _idf1(scene, reference)
        continuity[camera] = (kept, idf1_kill, idf1_ref)
        assert kept >= 0.95, continuity
        assert idf1_kill >= 0.95 * idf1_ref, continuity

    # The untracked camera answers as without tracking: no track_id on its boxes.
    for index in range(PLAIN_FRAMES):
        for body in progress.bodies[f"{PLAIN}-{index}"]:
            for box in body["data"]["bounding-boxes"]:
                assert set(box) == {"ObjectClassName", "ObjectClassId", "confidence", "coordinates"}

    # Restoring a partition's camera states after its assignment: p95 within 2 s.
    restores = [
        r for w in workers for r in w.log_records() if r.get("msg") == "tracking state restored"
    ]
    moved = [r["seconds"] for r in restores if r["records"] > 0]
    assert moved, "a camera state was restored by another worker"
    seconds = sorted(r["seconds"] for r in restores)
    p95 = seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))]
    print(
        f"\nkills {kills}\ncounts {table}\nevents {len(events)}, unique {len(unique)}, "
        f"repeats {repeats}\ncontinuity (ids kept, idf1 kill, idf1 ref) {continuity}\n"
        f"restores {len(seconds)} (with records {len(moved)}), p95 {p95:.3f}s, "
        f"max {seconds[-1]:.3f}s"
    )
    assert p95 <= 2.0
    # And of the restores that read camera states (the rest read empty partitions).
    moved.sort()
    assert moved[min(len(moved) - 1, int(0.95 * len(moved)))] <= 2.0, moved
