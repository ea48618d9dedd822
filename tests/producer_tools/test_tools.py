"""tfstream-replay, tfstream-stream and tfstream-results against a real broker and worker.

One worker (shapes_tf2) serves the whole module. The CLIs run as child
processes where their command line is the point, in-process otherwise.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deploy.local.processes import ConsumerProcess
from producer_tools.replay import ReplaySettings, run_replay
from producer_tools.replay import main as replay_main
from producer_tools.results import ResultsSettings, follow
from producer_tools.stream import StreamSettings, parse_correlation_id, run_stream
from tests.support.models import REPO_ROOT
from tests.support.workers import read_topic, unique_prefix

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

Truth = dict[str, list[dict[str, Any]]]
MODEL = "shapes_tf2"


@pytest.fixture(scope="module")
def folder(
    shapes_images: tuple[Path, Truth], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Truth]:
    """20 JPEGs of the generated images (with their ground truth), and a stray non-image file."""
    source, truth = shapes_images
    dest = tmp_path_factory.mktemp("replay_images")
    names = sorted(n for n in truth if n.endswith(".jpg"))[:20]
    for name in names:
        shutil.copy(source / name, dest / name)
    (dest / "notes.txt").write_text("not an image")
    return dest, {n: truth[n] for n in names}


def cli(module: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def check_adds_up(report: dict[str, Any]) -> None:
    assert (
        report["answered"] + sum(report["errors"].values()) + report["timeouts"] == report["sent"]
    )
    assert sum(report["batch_sizes"].values()) == report["answered"]
    assert len(report["requests"]["rows"]) == report["sent"]
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report["throughput"] == pytest.approx(
        report["answered"] / report["duration_s"], rel=0.01
    )


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    columns = report["requests"]["columns"]
    return [dict(zip(columns, row, strict=True)) for row in report["requests"]["rows"]]


def test_replay_max_reports_numbers_that_add_up_and_right_answers(
    worker: ConsumerProcess, folder: tuple[Path, Truth], tmp_path: Path
) -> None:
    images, truth = folder
    result = cli(
        "producer_tools.replay",
        "--bootstrap",
        worker.bootstrap,
        "--topic-prefix",
        worker.prefix,
        "--model",
        MODEL,
        "--source",
        str(images),
        "--max",
        "--concurrency",
        "8",
        "--count",
        "40",
        "--report",
        str(tmp_path / "run.json"),
        "--plot",
        str(tmp_path / "run.png"),
    )
    assert result.returncode == 0, result.stderr
    assert "sent 40, answered 40, errors 0, timeouts 0" in result.stdout
    assert "latency ms: p50" in result.stdout and "batch sizes:" in result.stdout
    assert "answered 40" in result.stderr  # the progress line
    report = json.loads((tmp_path / "run.json").read_text())
    check_adds_up(report)
    assert report["sent"] == 40 and report["answered"] == 40 and report["errors"] == {}
    # Sizes of the engine calls the answers were in: one call per image size, so with
    # the folder's mixed sizes a call may well hold one image (batching itself is
    # tested in tests/consumer/test_pipeline.py and test_model_batching.py).
    assert all(1 <= int(size) <= 8 for size in report["batch_sizes"])
    names = [r["name"] for r in rows(report)]
    assert sorted(names) == sorted(
        list(truth) * 2
    )  # the folder, sorted and looped; notes.txt skipped
    assert all(r["boxes"] == len(truth[r["name"]]) for r in rows(report))
    with Image.open(tmp_path / "run.png") as plot:
        assert plot.format == "PNG" and plot.size == (1200, 480)


def test_replay_rate_keeps_the_schedule_and_keys_by_source(
    worker: ConsumerProcess,
    folder: tuple[Path, Truth],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images, _ = folder
    code = replay_main(
        [
            "--bootstrap",
            worker.bootstrap,
            "--topic-prefix",
            worker.prefix,
            "--model",
            MODEL,
            "--source",
            str(images),
            "--rate",
            "20",
            "--concurrency",
            "8",
            "--key-by",
            "source",
            "--report",
            str(tmp_path / "rate.json"),
        ]
    )
    assert code == 0
    assert "sent 20, answered 20" in capsys.readouterr().out
    report = json.loads((tmp_path / "rate.json").read_text())
    check_adds_up(report)
    assert report["settings"]["mode"] == "rate" and report["answered"] == 20
    sent = [r["sent_s"] for r in rows(report)]
    # Open loop: never ahead of the schedule, spread over it (not bunched), and
    # mostly on time. How late a send may be is load, not behaviour: only the
    # median lag is bounded, so a busy test machine does not fail the test.
    assert all(t >= i / 20 - 0.01 for i, t in enumerate(sent)), sent
    assert sent[-1] - sent[0] >= 0.9 * 19 / 20
    assert report["duration_s"] >= 19 / 20
    assert report["schedule_lag_ms"]["p50"] < 100
    records = asyncio.run(
        read_topic(
            worker.bootstrap,
            f"{worker.prefix}.requests.{MODEL}",
            expect=1,
            until=lambda recs: any(r.key == b"shapes_0000.jpg" for r in recs),
        )
    )
    assert any(r.key == b"shapes_0000.jpg" for r in records)


def write_video(path: Path, images: Path, truth: Truth) -> list[str]:
    """An MJPG AVI of the 640x480 images (10 frames); returns the image of each frame."""
    import cv2

    def size(name: str) -> tuple[int, int]:
        with Image.open(images / name) as image:
            return image.size

    names = [n for n in sorted(truth) if n.endswith(".jpg") and size(n) == (640, 480)][:10]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    assert writer.isOpened()
    for name in names:
        with Image.open(images / name) as image:
            writer.write(np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]))
    writer.release()
    return names


@pytest.mark.asyncio
async def test_replay_from_a_video_sends_each_frame_as_jpeg(
    worker: ConsumerProcess, shapes_images: tuple[Path, Truth], tmp_path: Path
) -> None:
    images, truth = shapes_images
    frames = write_video(tmp_path / "clip.avi", images, truth)
    assert len(frames) >= 5
    settings = ReplaySettings(
        bootstrap=worker.bootstrap,
        topic_prefix=worker.prefix,
        model=MODEL,
        source=str(tmp_path / "clip.avi"),
        max=True,
        concurrency=4,
        progress=False,
    )
    report = (await run_replay(settings, progress=None)).to_dict()
    check_adds_up(report)
    assert report["sent"] == report["answered"] == len(frames)
    for row in rows(report):
        index = int(row["name"].removeprefix("clip.avi#"))
        assert row["boxes"] == len(truth[frames[index]]), row


@pytest.mark.asyncio
async def test_stream_answers_land_on_the_results_topic_keyed_by_camera(
    worker: ConsumerProcess, folder: tuple[Path, Truth]
) -> None:
    images, truth = folder
    out = io.StringIO()
    ready = asyncio.Event()
    reader = asyncio.create_task(
        follow(
            ResultsSettings(
                bootstrap=worker.bootstrap,
                topic_prefix=worker.prefix,
                model=MODEL,
                camera="gate-1",
                count=6,
                idle_timeout_s=60,
                output="json",
            ),
            out,
            ready,
        )
    )
    await asyncio.wait_for(ready.wait(), 30)

    def settings(camera: str, count: int) -> StreamSettings:
        return StreamSettings(
            bootstrap=worker.bootstrap,
            topic_prefix=worker.prefix,
            model=MODEL,
            camera=camera,
            source=str(images),
            fps=20,
            count=count,
            deadline_ms=30_000,
        )

    other = await run_stream(settings("gate-2", 2), progress=None)  # filtered out by --camera
    summary = await run_stream(settings("gate-1", 5), progress=None)
    # A camera whose clock is an hour behind: its frames are stale on arrival.
    stale = await run_stream(settings("gate-1", 1), clock=lambda: time.time() - 3600, progress=None)
    assert (other.sent, summary.sent, stale.sent) == (2, 5, 1)
    assert summary.failed == 0 and summary.duration_s >= 4 / 20
    assert await asyncio.wait_for(reader, 90) == 6

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {line["camera"] for line in lines} == {"gate-1"}
    answered = [line for line in lines if line["success"]]
    assert [parse_correlation_id(line["correlation_id"])[1] for line in answered] == [0, 1, 2, 3, 4]  # type: ignore[index]
    names = sorted(truth)
    assert [line["boxes"] for line in answered] == [len(truth[n]) for n in names[:5]]
    assert all(
        line["latency_ms"] is not None and 0 <= line["latency_ms"] < 30_000 for line in answered
    )
    (expired,) = [line for line in lines if not line["success"]]
    assert expired["error"] == "deadline_exceeded" and expired["boxes"] == 0


def test_stream_and_results_command_lines(
    worker: ConsumerProcess, folder: tuple[Path, Truth]
) -> None:
    images, truth = folder
    common = ["--bootstrap", worker.bootstrap, "--topic-prefix", worker.prefix, "--model", MODEL]
    sent = cli(
        "producer_tools.stream",
        *common,
        "--camera",
        "dock-7",
        "--source",
        str(images),
        "--fps",
        "25",
        "--count",
        "3",
    )
    assert sent.returncode == 0, sent.stderr
    assert (
        "camera dock-7: sent 3 frames" in sent.stdout
        and f"{worker.prefix}.results.{MODEL}" in sent.stdout
    )
    shown = cli(
        "producer_tools.results",
        *common,
        "--camera",
        "dock-7",
        "--from-beginning",
        "--count",
        "3",
        "--idle-timeout-s",
        "60",
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 3
    first = sorted(truth)[0]
    labels = ", ".join(sorted(obj["label"] for obj in truth[first]))
    assert lines[0].startswith("camera=dock-7 id=dock-7:0:")
    assert f"boxes={len(truth[first])} " in lines[0] and "latency_ms=" in lines[0]
    shown_labels = lines[0].split("labels=[", 1)[1].split("]", 1)[0]
    assert ", ".join(sorted(shown_labels.split(", "))) == labels


def test_a_model_no_worker_serves_ends_model_not_found_naming_the_served(
    worker: ConsumerProcess, folder: tuple[Path, Truth]
) -> None:
    """Workers serve the prefix, not this model: the tools wait --start-timeout-s for a
    worker that may still come (here 5 s), saying which models are served, then
    exit with model_not_found."""
    images, _ = folder
    common = [
        "--bootstrap", worker.bootstrap, "--topic-prefix", worker.prefix, "--model", "ghost",
        "--start-timeout-s", "5",
    ]  # fmt: skip
    began = time.monotonic()
    replay = cli("producer_tools.replay", *common, "--source", str(images), "--max")
    stream = cli(
        "producer_tools.stream", *common, "--camera", "c1", "--source", str(images), "--count", "1"
    )
    assert time.monotonic() - began < 90
    for run in (replay, stream):
        assert run.returncode == 1, run.stderr
        assert "error: [model_not_found]" in run.stderr and MODEL in run.stderr, run.stderr
        waiting = run.stderr.split("error:")[0]  # the log, before the last line
        assert "waiting for Kafka" in waiting and MODEL in waiting, run.stderr
        assert "not 'ghost' (yet)" in waiting, run.stderr


def test_a_stream_started_before_any_worker_waits_for_its_topic(
    kafka_bootstrap: str, model_repository: Path, folder: tuple[Path, Truth], tmp_path: Path
) -> None:
    """Start from nothing: a camera streamer started before the first worker of its
    prefix waits for the worker to create the model's topic, then sends."""
    images, _ = folder
    prefix = unique_prefix()
    errors = tmp_path / "stream.err"
    with errors.open("w") as sink:
        stream = subprocess.Popen(
            [
                sys.executable, "-m", "producer_tools.stream",
                "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix, "--model", MODEL,
                "--camera", "early", "--source", str(images), "--fps", "25", "--count", "3",
                "--deadline-ms", "120000",  # the worker is still to load its model
            ],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=sink, text=True,
        )  # fmt: skip
    worker = None
    try:
        deadline = time.monotonic() + 60
        while f'step="a worker to create {prefix}.requests.{MODEL}"' not in errors.read_text():
            assert stream.poll() is None, errors.read_text()
            assert time.monotonic() < deadline, errors.read_text()
            time.sleep(0.2)
        worker = ConsumerProcess(
            kafka_bootstrap, model_repository, prefix, tmp_path, extra={"TFSTREAM_MODELS": MODEL}
        ).start()
        out, _ = stream.communicate(timeout=180)
        assert stream.returncode == 0, errors.read_text()
        assert "camera early: sent 3 frames" in out
        records = asyncio.run(read_topic(kafka_bootstrap, f"{prefix}.results.{MODEL}", expect=3))
        answers = [json.loads(r.value) for r in records]
        assert len(answers) == 3 and all(a["success"] for a in answers), answers
    finally:
        if stream.poll() is None:
            stream.kill()
        if worker is not None:
            worker.stop()
