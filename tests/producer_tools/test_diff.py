"""tfstream-diff without Kafka: the box matching and its figures, and the offline
diff of two generated model repositories as a CI gate (`--min-agreement`).

The live diff against a real broker: tests/consumer/test_shadow_kafka.py; the
report page in a browser: tests/demo/test_diff_report.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from consumer.answer_log import LoggedAnswer
from deploy.local.processes import free_port
from engines.errors import ServiceUnavailable
from producer_tools.diff import DiffSettings, first_paired, in_window, parse_time, read_answers
from producer_tools.diff_match import FrameAnswer, compare, match_boxes, table
from tests.support.models import REPO_ROOT, candidate_repository, serving_copy


def box(name: str, left: float, top: float, right: float, bottom: float, conf: float = 90) -> dict:
    return {
        "ObjectClassName": name,
        "ObjectClassId": 1,
        "confidence": conf,
        "coordinates": {"left": left, "top": top, "right": right, "bottom": bottom},
    }


def test_boxes_pair_within_their_class_best_overlap_first() -> None:
    baseline = [box("car", 0, 0, 10, 10), box("car", 20, 0, 30, 10), box("dog", 0, 0, 10, 10)]
    candidate = [box("car", 21, 0, 31, 10), box("car", 0, 0, 10, 10), box("cat", 0, 0, 10, 10)]
    pairs = match_boxes(baseline, candidate, 0.5)
    assert sorted((p.baseline, p.candidate) for p in pairs) == [(0, 1), (1, 0)]
    assert max(p.iou for p in pairs) == 1.0
    assert min(p.iou for p in pairs) == pytest.approx(90 / 110)
    # Below the IoU threshold: no pair.
    assert match_boxes([box("car", 0, 0, 10, 10)], [box("car", 6, 0, 16, 10)], 0.5) == []


def test_boxes_pair_by_optimal_assignment_not_greedily() -> None:
    """Greedy best-first pairs b0 with c0 (IoU 0.82) and leaves b1 alone (b1-c1: 0.33);
    the optimal assignment pairs both (b0-c1 and b1-c0, each 0.67)."""
    baseline = [box("car", 0, 0, 10, 10), box("car", 3, 0, 13, 10)]
    candidate = [box("car", 1, 0, 11, 10), box("car", -2, 0, 8, 10)]
    pairs = match_boxes(baseline, candidate, 0.5)
    assert [(p.baseline, p.candidate) for p in pairs] == [(0, 1), (1, 0)]
    assert result_agreement(baseline, candidate) == 1.0
    # Among equally many pairs, the highest IoU sum.
    near = [box("car", 0, 0, 10, 10), box("car", 1, 0, 11, 10)]
    swapped = [near[1], near[0]]
    assert [(p.baseline, p.candidate) for p in match_boxes(near, swapped)] == [(0, 1), (1, 0)]


def result_agreement(baseline: list[dict], candidate: list[dict]) -> float:
    return compare([FrameAnswer("f", baseline)], [FrameAnswer("f", candidate)]).agreement


def test_the_figures_per_class_overall_errors_and_latency() -> None:
    base = [
        FrameAnswer(
            "f1", [box("car", 0, 0, 10, 10, 80), box("dog", 50, 50, 60, 60)], latency_ms=10
        ),
        FrameAnswer("f2", [box("car", 0, 0, 10, 10)], latency_ms=20),
        FrameAnswer("f3", [], error="invalid_image", latency_ms=5),
        FrameAnswer("f4", [box("car", 0, 0, 10, 10)], latency_ms=30),
        FrameAnswer("only-base", [box("car", 0, 0, 10, 10)]),
    ]
    cand = [
        FrameAnswer("f1", [box("car", 0, 0, 10, 11, 85)], latency_ms=100),
        FrameAnswer("f2", [box("car", 0, 0, 10, 10), box("cat", 5, 5, 9, 9)], latency_ms=200),
        FrameAnswer("f3", [], error="invalid_image", latency_ms=6),
        FrameAnswer("f4", [], error="deadline_exceeded", latency_ms=300),
    ]
    result = compare(base, cand)
    assert (result.paired, result.compared) == (4, 2)
    assert (result.only_baseline_frames, result.only_candidate_frames) == (1, 0)
    car, dog, cat = result.classes["car"], result.classes["dog"], result.classes["cat"]
    # f4 (the candidate failed) and only-base (no candidate answer): the baseline's car
    # boxes there have no partner.
    assert (car.baseline, car.candidate, car.matched, car.only_baseline) == (4, 2, 2, 2)
    assert car.mean_iou == pytest.approx((100 / 110 + 1) / 2)
    assert car.mean_confidence_change == pytest.approx(2.5)  # (+5 + 0) / 2
    assert (dog.only_baseline, dog.only_candidate, cat.only_candidate) == (1, 0, 1)
    overall = result.overall
    assert (overall.matched, overall.only_baseline, overall.only_candidate) == (2, 3, 1)
    assert result.agreement == pytest.approx(2 / 6)
    assert result.errors["baseline"] == {"invalid_image": 1}
    assert result.errors["candidate"] == {"invalid_image": 1, "deadline_exceeded": 1}
    cov_b, cov_c = result.coverage["baseline"], result.coverage["candidate"]
    assert (cov_b.frames, cov_b.answered, cov_b.errors, cov_b.missing) == (5, 4, 1, 0)
    assert (cov_c.frames, cov_c.answered, cov_c.errors, cov_c.missing) == (5, 2, 2, 1)
    assert result.answered_share == pytest.approx(2 / 4)
    assert result.latency("baseline") == {"p50": 10.0, "p99": 30.0, "count": 4}
    assert result.latency("candidate")["p50"] == 100.0
    # One side failing or missing ranks first; both failing alike is no disagreement.
    ranked = [f.baseline.ident for f in result.most_disagreeing(10)]
    assert ranked == ["f4", "only-base", "f1", "f2"]
    text = table(result)
    assert "agreement: 0.333" in text and "deadline_exceeded 1" in text
    assert "candidate  answered 2 of 5 frames, 2 errors, 1 without an answer" in text
    assert "answered: 0.500" in text
    shown = json.loads(result.to_json(3))
    assert shown["most_disagreeing"][0]["candidate_error"] == "deadline_exceeded"
    assert shown["most_disagreeing"][1]["candidate_missing"] is True
    assert shown["coverage"]["candidate"]["missing"] == 1
    assert shown["answered_share"] == 0.5


def test_a_one_sided_frame_counts_the_answering_side_s_boxes_in_table_and_page(
    tmp_path: Path,
) -> None:
    """Per frame, as in the figures: the boxes of the side that answered have no partner
    where the other erred or has no answer; the page says which side failed and how."""
    from producer_tools.diff_report import write_report

    two_cars = [box("car", 0, 0, 10, 10), box("car", 50, 50, 60, 60)]
    base = [
        FrameAnswer("erred", two_cars),
        FrameAnswer("missing", two_cars[:1]),
        FrameAnswer("both", two_cars),
        FrameAnswer("base-erred", [], error="invalid_image"),
    ]
    cand = [
        FrameAnswer("erred", [], error="invalid_model_output"),
        FrameAnswer("both", [two_cars[0], box("cat", 5, 5, 9, 9)]),
        FrameAnswer("base-erred", two_cars[1:]),
    ]
    result = compare(base, cand)
    frames = {f.baseline.ident: f for f in result.frames}
    only = {ident: (f.only_baseline, f.only_candidate) for ident, f in frames.items()}
    assert only == {"erred": (2, 0), "missing": (1, 0), "both": (1, 1), "base-erred": (0, 1)}
    assert sum(f.unmatched for f in frames.values()) == result.overall.union - 1  # one pair
    page = write_report(tmp_path / "page", result, {}).read_text()
    for ident, (only_b, only_c) in only.items():
        assert (
            f'data-frame="{ident}" data-only-baseline="{only_b}" data-only-candidate="{only_c}"'
        ) in page
    assert "candidate: invalid_model_output" in page and "candidate: no answer" in page
    assert "baseline: invalid_image" in page


def test_a_candidate_that_errs_where_the_baseline_answered_fails_the_gate() -> None:
    """Even on frames where the baseline found nothing: no box is lost, but the
    candidate did not answer. Both failing alike (a broken image) is no reason."""
    base = [FrameAnswer(f"f{i}", []) for i in range(9)] + [FrameAnswer("bad", [], error="x")]
    cand = [FrameAnswer(f"f{i}", [], error="invalid_model_output") for i in range(6)]
    cand += [FrameAnswer(f"f{i}", []) for i in range(6, 9)] + [FrameAnswer("bad", [], error="x")]
    result = compare(base, cand)
    assert result.agreement == 1.0  # no box on either side
    assert result.answered_share == pytest.approx(3 / 9)
    assert result.gate(0.9) == [
        "the candidate answered 0.333 of the frames the baseline answered, below "
        "--min-agreement 0.9"
    ]
    assert compare(base, base).gate(1.0) == []


def logged(
    cid: str | None,
    offset: int,
    boxes: list[dict] | None = None,
    *,
    sent_ms: int = 1_000,
    partition: int = 0,
    error: str | None = None,
) -> LoggedAnswer:
    from consumer.answer_log import RequestPosition, Role
    from consumer.protocol import Reply
    from engines.errors import InvalidImage

    reply = Reply(
        correlation_id=cid,
        model="m",
        data=None if error else {"bounding-boxes": boxes or [], "width": 100, "height": 100},
        error=InvalidImage(error) if error else None,
    )
    position = RequestPosition("req", partition, offset, sent_ms)
    return LoggedAnswer(Role.SERVING, "m", reply, position, answered_ms=sent_ms + 5)


def test_live_answers_pair_by_the_request_not_by_the_correlation_id() -> None:
    """Two clients that both use correlation id "1" sent different frames: they must not
    pair across; the reuse is counted. A redelivered request counts once."""
    car, dog = [box("car", 0, 0, 10, 10)], [box("dog", 50, 50, 60, 60)]
    base = [logged("1", 0, car), logged("1", 1, dog), logged("2", 2, car), logged("2", 2, car)]
    cand = [logged("1", 1, dog), logged("1", 0, car), logged("2", 2, car)]
    result = compare(
        (FrameAnswer.from_logged(a) for a in base),
        (FrameAnswer.from_logged(a) for a in cand),
        live=True,
    )
    assert result.paired == 3 and result.agreement == 1.0
    assert result.coverage["baseline"].duplicate_ids == 1
    assert result.coverage["baseline"].redelivered == 1
    assert "1 duplicate correlation ids, 1 answered twice" in table(result)


def test_a_live_frame_the_other_side_has_not_reached_is_pending_not_missing() -> None:
    """A shadow answered offsets 1 and 3 of partition 0: offset 0 came before it started,
    4 and 5 it has not reached: pending. Offset 2 it passed over and partition 1 it never
    answered: missing, against it."""
    car = [box("car", 0, 0, 10, 10)]
    base = [logged(str(i), i, car) for i in range(6)] + [logged("p1", 0, car, partition=1)]
    cand = [logged(str(i), i, car) for i in (1, 3)]
    result = compare(
        (FrameAnswer.from_logged(a) for a in base),
        (FrameAnswer.from_logged(a) for a in cand),
        live=True,
    )
    assert result.pending == 3
    assert result.only_baseline_frames == 2
    assert result.agreement == pytest.approx(2 / 4)
    assert "3 pending" in table(result)
    # Nothing answered by both: the gate fails, whatever the figures.
    lone = compare([FrameAnswer.from_logged(a) for a in base], [], live=True)
    assert lone.gate(0.0) == ["no frame was answered by both sides: nothing to compare"]


def test_until_filters_on_the_request_time_and_count_keeps_one_sided_frames() -> None:
    late_answer = logged("a", 0, sent_ms=1_000)
    assert in_window(late_answer, record_ms=9_000, since=None, until=2_000)
    assert not in_window(late_answer, record_ms=1_500, since=1_200, until=None)
    car = [box("car", 0, 0, 10, 10)]
    base = [logged(str(i), i, car, sent_ms=1_000 + i) for i in range(6)]
    cand = [logged(str(i), i, car, sent_ms=1_000 + i) for i in (0, 2, 3, 5)]
    kept_base, kept_cand = first_paired(base, cand, 3)
    # Up to the third paired request (offset 3): offset 1, answered only by the baseline,
    # stays in the figures; offsets 4 and 5 come after.
    assert [a.request.offset for a in kept_base] == [0, 1, 2, 3]
    assert [a.request.offset for a in kept_cand] == [0, 2, 3]
    result = compare(
        (FrameAnswer.from_logged(a) for a in kept_base),
        (FrameAnswer.from_logged(a) for a in kept_cand),
        live=True,
    )
    assert result.only_baseline_frames == 1 and result.agreement == pytest.approx(3 / 4)


def test_the_gate_lets_a_lagging_candidate_pass_and_fails_one_that_skips_frames() -> None:
    """gate() itself, live: frames a shadow has not reached are pending, not against it;
    a frame inside the span it answered with no answer fails it, as does the same
    lag read offline (no request positions: nothing can be pending)."""
    car = [box("car", 0, 0, 10, 10)]
    base = [logged(str(i), i, car) for i in range(10)]

    def live(cand: list[LoggedAnswer]) -> Any:
        return compare(
            (FrameAnswer.from_logged(a) for a in base),
            (FrameAnswer.from_logged(a) for a in cand),
            live=True,
        )

    lagging = live(base[:6])
    assert lagging.pending == 4 and lagging.gate(1.0) == []
    skipping = live([a for a in base if a.request.offset != 4])
    assert skipping.pending == 0
    assert skipping.gate(0.95) == [
        "agreement 0.900 is below --min-agreement 0.95",
        "the candidate answered 0.900 of the frames the baseline answered, below "
        "--min-agreement 0.95",
    ]
    offline = compare(
        [FrameAnswer(str(i), car) for i in range(10)], [FrameAnswer(str(i), car) for i in range(6)]
    )
    assert offline.pending == 0 and len(offline.gate(1.0)) == 2


def test_identical_answers_agree_fully_and_empty_frames_count_as_agreeing() -> None:
    answers = [FrameAnswer("a", [box("car", 0, 0, 10, 10)]), FrameAnswer("b", [])]
    result = compare(answers, answers)
    assert result.agreement == 1.0 and result.most_disagreeing(5) == []


def test_times_and_modes_are_checked() -> None:
    assert parse_time("15m", now_ms=1_000_000) == 100_000
    assert parse_time("2026-01-01T00:00:00Z") == 1_767_225_600_000
    assert parse_time("1767225600000") == 1_767_225_600_000
    with pytest.raises(ValueError):
        parse_time("soon")
    for bad in (
        {},
        {"baseline": "a"},
        {"baseline": "a", "candidate": "b"},  # live without a broker
        {"baseline": "a", "candidate": "b", "bootstrap": "k:9092", "images": "x"},
        {"images": "x", "baseline_repo": "a"},
    ):
        with pytest.raises(ValueError):
            DiffSettings(**bad)


def test_a_live_diff_waits_for_the_broker_until_start_timeout_s() -> None:
    """Started with the cluster, it retries as every tool does, then says for how long."""
    settings = DiffSettings(
        baseline="a", candidate="b", bootstrap=f"127.0.0.1:{free_port()}", start_timeout_s=2
    )
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"not ready after 2s \(connecting\)"):
        asyncio.run(read_answers(settings))
    assert time.monotonic() - started >= 1  # it waited, not failed on the first refusal


@pytest.mark.kafka
@pytest.mark.asyncio
async def test_since_and_until_read_the_requests_time_from_the_topics(kafka_bootstrap: str) -> None:
    """Two answer topics on a real broker, each record stamped with its answer's time: the
    window keeps the requests sent in it, whenever they were answered. Offset 1 was sent
    before --since and answered inside the window (its record is read, then left out);
    offset 5 was sent before --until and answered after it (kept); offset 0 lies before
    --since altogether (the read starts past it)."""
    from producer_tools.diff import live_diff
    from tests.support.workers import create_topic, raw_producer, unique_prefix

    start = int(time.time() * 1000) - 600_000
    sent = {i: start + i * 10_000 for i in range(7)}
    answered = {i: t + 100 for i, t in sent.items()} | {1: start + 25_000, 5: start + 65_000}
    car = [box("car", 0, 0, 10, 10)]
    topics = [f"{unique_prefix()}.answers.m", f"{unique_prefix()}.shadow.v2.m"]
    async with raw_producer(kafka_bootstrap) as producer:
        for topic in topics:
            await create_topic(kafka_bootstrap, topic)
            for i in sorted(answered, key=answered.__getitem__):  # in answer order, as logged
                record = logged(str(i), i, car, sent_ms=sent[i])
                await producer.send_and_wait(
                    topic, record.to_json(), partition=0, timestamp_ms=answered[i]
                )
    settings = DiffSettings(
        baseline=topics[0],
        candidate=topics[1],
        bootstrap=kafka_bootstrap,
        since=str(sent[2]),
        until=str(sent[5]),
    )
    result, _ = await live_diff(settings)
    offsets = sorted(f.baseline.request.offset for f in result.frames if f.baseline.request)
    assert offsets == [2, 3, 4, 5]
    assert (result.paired, result.pending, result.agreement) == (4, 0, 1.0)
    assert result.gate(1.0) == []


# -- offline, as a model's CI runs it ----------------------------------------------------


def run_diff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer_tools.diff", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def offline_diff(
    folder: Path, repositories: dict, candidate: str, min_agreement: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """tfstream-diff of `folder` through the baseline repository and `candidate`'s, on the CPU."""
    return run_diff(
        "--images", str(folder),
        "--baseline-repo", str(repositories["baseline"]),
        "--candidate-repo", str(repositories[candidate]),
        "--min-agreement", min_agreement,
        "--device", "cpu",
        *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def repositories(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("diff_repos")
    return {
        "baseline": serving_copy(model_repository, root / "baseline"),
        "same": serving_copy(model_repository, root / "same"),
        "blind": candidate_repository(root / "blind", "yellow disc"),
        "lost_label": lost_label_repository(model_repository, root / "lost_label"),
    }


def lost_label_repository(model_repository: Path, dest: Path) -> Path:
    """The serving model with a label map that lost its last class (yellow disc): every
    frame where the model finds one fails with invalid_model_output."""
    serving_copy(model_repository, dest)
    labels = dest / "shapes_tf2" / "object-detection.pbtxt"
    items = labels.read_text().split("item {")
    labels.write_text("item {".join(i for i in items if "yellow_disc" not in i))
    config = dest / "shapes_tf2" / "config.json"
    config.write_text(
        config.read_text().replace('"number_of_classes": 4', '"number_of_classes": 3')
    )
    return dest


@pytest.fixture(scope="module")
def images(
    shapes_images: tuple[Path, dict[str, list[dict[str, Any]]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    source, truth = shapes_images
    dest = tmp_path_factory.mktemp("diff_images")
    names = sorted(n for n in truth if n.endswith(".jpg"))[:24]
    for name in names:
        shutil.copy(source / name, dest / name)
    return dest, {n: truth[n] for n in names}


@pytest.mark.slow
def test_offline_diff_is_a_ci_gate(repositories: dict, images: tuple, tmp_path: Path) -> None:
    folder, truth = images
    yellow = sum(1 for objs in truth.values() for o in objs if o["label"] == "yellow disc")
    total = sum(len(objs) for objs in truth.values())
    assert yellow > 0

    same = offline_diff(folder, repositories, "same", "1.0")
    assert same.returncode == 0, same.stderr
    assert "agreement: 1.000" in same.stdout

    blind = offline_diff(folder, repositories, "blind", "0.95", "--json")
    assert blind.returncode == 1, blind.stderr
    assert "below --min-agreement 0.95" in blind.stderr
    report = json.loads(blind.stdout)
    assert report["frames"] == {
        "paired": 24,
        "compared": 24,
        "only_baseline": 0,
        "only_candidate": 0,
    }
    missing = report["classes"]["yellow disc"]
    assert missing == {
        "baseline": yellow,
        "candidate": 0,
        "matched": 0,
        "only_baseline": yellow,
        "only_candidate": 0,
        "mean_iou": None,
        "mean_confidence_change": None,
        "agreement": 0.0,
    }
    for name in ("red rectangle", "green disc", "blue rectangle"):
        kept = report["classes"][name]
        assert kept["matched"] == kept["baseline"] == kept["candidate"] > 0
        assert kept["mean_iou"] == 1.0 and kept["mean_confidence_change"] == 0.0
    assert report["overall"]["baseline"] == total
    assert report["agreement"] == round((total - yellow) / total, 4)
    assert report["latency_ms"]["candidate"]["count"] == 24
    # A looser gate passes the same candidate.
    loose = offline_diff(
        folder,
        repositories,
        "blind",
        f"{(total - yellow) / total - 0.01:.3f}",
        "--report",
        str(tmp_path / "report"),
    )
    assert loose.returncode == 0, loose.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    frames_with_yellow = sum(
        1 for objs in truth.values() if any(o["label"] == "yellow disc" for o in objs)
    )
    assert page.count('<figure class="frame"') == min(12, frames_with_yellow)
    assert 'class="baseline" data-label="yellow disc" data-matched="no"' in page
    assert len(list((tmp_path / "report" / "frames").glob("*.jpg"))) == min(12, frames_with_yellow)


@pytest.mark.slow
def test_a_candidate_that_errs_on_most_frames_fails_the_gate(
    repositories: dict, images: tuple
) -> None:
    """The case that passed with agreement 1.000: errors on one side counted nothing."""
    folder, truth = images
    with_yellow = sum(
        1 for objs in truth.values() if any(o["label"] == "yellow disc" for o in objs)
    )
    assert with_yellow > len(truth) / 2
    broken = offline_diff(folder, repositories, "lost_label", "0.9")
    print(broken.stdout)  # the table the closing note quotes
    assert broken.returncode == 1, broken.stderr
    assert "below --min-agreement 0.9" in broken.stderr
    assert f"invalid_model_output {with_yellow}" in broken.stdout
    answered = len(truth) - with_yellow
    assert f"candidate  answered {answered} of {len(truth)} frames, {with_yellow} errors" in (
        broken.stdout
    )
    assert f"answered: {answered / len(truth):.3f}" in broken.stdout
    agreement = float(broken.stdout.split("agreement: ")[1].split()[0])
    assert agreement < 0.9


def test_a_missing_folder_is_a_precise_error(repositories: dict, tmp_path: Path) -> None:
    result = run_diff(
        "--images", str(tmp_path / "nowhere"),
        "--baseline-repo", str(repositories["baseline"]),
        "--candidate-repo", str(repositories["same"]),
    )  # fmt: skip
    assert result.returncode == 2
    assert "[invalid_request]" in result.stderr and "is not a folder" in result.stderr
