"""Replay reports and frame sources, without a broker."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.settings import parse_cli
from producer_tools.replay import ReplaySettings
from producer_tools.report import OK, TIMEOUT, Outcome, RunReport, percentile
from producer_tools.sources import SourceError, frame_stream, is_camera, open_source
from producer_tools.stream import StreamSettings, correlation_id, parse_correlation_id


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 100) == 100 and percentile([7.0], 90) == 7
    assert math.isnan(percentile([], 50))


def test_report_counts_add_up_and_latency_is_over_successes_only(tmp_path: Path) -> None:
    outcomes = [
        Outcome(i * 0.1, 100.0 + i, OK, batch_size=1 + i % 2, worker="w1", name=f"{i}.jpg", boxes=2)
        for i in range(10)
    ]
    outcomes += [
        Outcome(1.0, 1.0, "deadline_exceeded"),
        Outcome(1.1, 30_000.0, TIMEOUT),
        Outcome(1.2, 2.0, "invalid_image"),
        Outcome(1.3, 3.0, "invalid_image"),
    ]
    report = RunReport(outcomes, duration_s=2.0, duplicates=1)
    body = report.to_dict()
    assert (body["sent"], body["answered"], body["timeouts"]) == (14, 10, 1)
    assert body["errors"] == {"deadline_exceeded": 1, "invalid_image": 2}
    assert body["answered"] + sum(body["errors"].values()) + body["timeouts"] == body["sent"]
    assert body["throughput"] == 5.0 and body["duplicates"] == 1
    assert body["latency_ms"]["max"] == 109.0 and body["latency_ms"]["p50"] == 104.5
    assert body["batch_sizes"] == {"1": 5, "2": 5} and body["workers"] == {"w1": 10}
    assert len(body["requests"]["rows"]) == 14
    text = report.summary()
    assert "sent 14, answered 10, errors 3, timeouts 1, duplicates dropped 1" in text
    assert "errors: deadline_exceeded 1, invalid_image 2" in text and "1: 5 (50%)" in text
    report.write_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["sent"] == 14
    report.plot(tmp_path / "r.png")
    with Image.open(tmp_path / "r.png") as image:
        assert image.size == (1200, 480)


def test_an_empty_report_still_renders(tmp_path: Path) -> None:
    report = RunReport([], duration_s=0.0)
    assert report.to_dict()["latency_ms"]["p50"] is None and report.throughput == 0
    assert "throughput 0.00" in report.summary()
    report.plot(tmp_path / "empty.png")


def test_replay_needs_exactly_one_mode(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--bootstrap", "b:9092", "--model", "m", "--source", "dir"]
    for extra in ([], ["--rate", "5", "--max"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_cli(ReplaySettings, base + extra)
        assert exit_info.value.code == 2
    assert "exactly one of --rate R or --max" in capsys.readouterr().err
    settings = parse_cli(ReplaySettings, [*base, "--max", "--key-by", "source", "--count", "7"])
    assert settings.max and settings.key_by == "source" and settings.count == 7


def test_stream_budget_defaults_to_two_frame_intervals() -> None:
    base = ["--model", "m", "--camera", "c", "--source", "0"]
    assert parse_cli(StreamSettings, [*base, "--fps", "4"]).budget_ms == 500
    assert parse_cli(StreamSettings, [*base, "--deadline-ms", "80"]).budget_ms == 80
    cid = correlation_id("site:gate-1", 12, 1_700_000_000_123)
    assert parse_correlation_id(cid) == ("site:gate-1", 12, 1_700_000_000_123)
    assert parse_correlation_id("4f1c0d") is None and parse_correlation_id(None) is None


def write_images(folder: Path, count: int) -> None:
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (32, 24), (i * 20, 0, 0)).save(folder / f"img_{i:02d}.jpg")


def test_folder_is_read_in_name_order_and_looped(tmp_path: Path) -> None:
    write_images(tmp_path / "f", 3)
    (tmp_path / "f" / "readme.md").write_text("skip me")
    (tmp_path / "f" / "sub").mkdir()
    source = open_source(str(tmp_path / "f"))
    assert source.size == 3 and not source.blocking
    names = [f.name for f in frame_stream(source, 7)]
    assert names == ["img_00.jpg", "img_01.jpg", "img_02.jpg"] * 2 + ["img_00.jpg"]
    assert [f.name for f in frame_stream(source)] == names[:3]  # count 0: one pass
    assert [f.name for f in frame_stream(source, 5, loop=False)] == names[:3]
    frame = next(frame_stream(source))
    assert frame.source == frame.name and frame.data == (tmp_path / "f" / "img_00.jpg").read_bytes()


def test_video_frames_are_sent_as_jpeg(tmp_path: Path) -> None:
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    source = open_source(str(path))
    assert source.blocking and source.size == 4
    frames = list(frame_stream(source, 6))
    assert [f.name for f in frames] == [
        "clip.avi#0",
        "clip.avi#1",
        "clip.avi#2",
        "clip.avi#3",
        "clip.avi#0",
        "clip.avi#1",
    ]
    assert {f.source for f in frames} == {"clip.avi"}
    assert all(f.data[:3] == b"\xff\xd8\xff" for f in frames)  # JPEG
    with Image.open(io.BytesIO(frames[2].data)) as image:
        assert image.size == (64, 48)


def test_bad_sources_are_refused_with_a_code(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.avi").write_bytes(b"not a video at all")
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    for spec in (
        tmp_path / "missing",
        tmp_path / "empty",
        tmp_path / "junk.avi",
        tmp_path / "one.png",
    ):
        with pytest.raises(SourceError) as error:
            open_source(str(spec))
        assert error.value.code == "invalid_source"
    assert is_camera("0") and is_camera("/dev/video2") and not is_camera("clip0.avi")
