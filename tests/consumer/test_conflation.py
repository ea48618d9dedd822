"""Latest frame wins: the bookkeeping alone (the worker's behaviour is in
test_conflation_kafka.py against a real broker)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from consumer.conflation import LatestWins, conflation_key
from consumer.pipeline import Pipeline
from consumer.settings import EngineSettings
from engines.errors import Superseded, TfstreamError
from tests.consumer.fakes import CountingEngine, Detectors, jpeg, request, until

IMAGE = jpeg(32, 24)


def test_only_keyed_requests_that_ask_or_whose_topic_is_conflated_take_part() -> None:
    assert conflation_key("t", b"cam", requested=True, whole_model=False) == ("t", b"cam")
    assert conflation_key("t", b"cam", requested=False, whole_model=True) == ("t", b"cam")
    assert conflation_key("t", b"cam", requested=False, whole_model=False) is None
    assert conflation_key("t", None, requested=True, whole_model=True) is None


def test_a_newer_arrival_supersedes_the_waiting_one_of_its_group_only() -> None:
    waiting: LatestWins[str] = LatestWins()
    a, b = ("t", b"a"), ("t", b"b")
    assert waiting.arrive(a, "a1") is None
    assert waiting.arrive(b, "b1") is None
    assert waiting.arrive(None, "plain") is None
    assert waiting.arrive(a, "a2") == "a1"
    assert waiting.arrive(a, "a3") == "a2"
    assert waiting.arrive(None, "plain2") is None  # no group: never supersedes
    assert waiting.arrive(("other-model", b"a"), "x1") is None  # same key, other model
    assert len(waiting) == 3


def test_a_started_job_is_never_superseded() -> None:
    waiting: LatestWins[str] = LatestWins()
    g = ("t", b"cam")
    waiting.arrive(g, "f1")
    waiting.start(g, "f1")
    assert waiting.arrive(g, "f2") is None  # f1 runs anyway
    waiting.start(g, "f1")  # an old start does not drop the newer waiting frame
    assert waiting.arrive(g, "f3") == "f2"


def test_ten_frames_at_once_leave_the_newest() -> None:
    waiting: LatestWins[int] = LatestWins()
    superseded = [waiting.arrive(("t", b"cam"), i) for i in range(10)]
    assert superseded == [None, *range(9)]


def test_worker_setting_for_whole_models() -> None:
    assert not EngineSettings().conflates("m")
    assert EngineSettings(conflate_models="a, m").conflates("m")
    assert not EngineSettings(conflate_models="a").conflates("m")
    assert EngineSettings(conflate_models="all").conflates("m")


def test_superseded_is_a_stable_code_that_skips_the_dlq() -> None:
    error = TfstreamError.from_dict({"code": "superseded", "message": "newer frame"})
    assert isinstance(error, Superseded) and error.code == "superseded"
    assert not error.dead_letter and not error.retriable


# -- in the pipeline: fake engines, no TensorFlow, no broker ------------------------


@pytest.mark.asyncio
async def test_a_burst_runs_each_keys_newest_frame_and_decodes_no_older_one() -> None:
    engine = CountingEngine()
    pipeline = Pipeline(Detectors({"m": engine}), EngineSettings(max_batch=8), "w")
    decoded: list[str] = []
    decode = pipeline.decode
    pipeline.decode = lambda req, det: (decoded.append(req.correlation_id), decode(req, det))[1]  # type: ignore[method-assign]
    pipeline.start()
    try:
        futures = {}
        for frame in range(5):
            for cam, extra in (("a", {"conflate": True}), ("b", {"conflate": True}), ("p", {})):
                cid = f"{cam}{frame}"
                futures[cid] = pipeline.submit(request("m", cid, IMAGE, key=cam.encode(), **extra))
        answers = dict(
            zip(futures, await asyncio.wait_for(asyncio.gather(*futures.values()), 10), strict=True)
        )
    finally:
        await asyncio.wait_for(pipeline.close(), 10)
    kinds = {cid: a.error.code if a.error else "boxes" for cid, a in answers.items()}
    assert kinds == {
        **{f"{cam}{f}": "superseded" for cam in "ab" for f in range(4)},
        "a4": "boxes",
        "b4": "boxes",
        **{f"p{f}": "boxes" for f in range(5)},
    }
    assert sorted(decoded) == sorted(["a4", "b4", *(f"p{f}" for f in range(5))])
    assert not any(answers[f"a{f}"].dead_letter for f in range(4))
    assert sum(shape[0] for shape in engine.calls) == 7


@pytest.mark.asyncio
async def test_a_frame_already_running_is_not_superseded_and_a_whole_model_conflates() -> None:
    gate = threading.Event()
    engine = CountingEngine(gate=gate)
    pipeline = Pipeline(
        Detectors({"m": engine}), EngineSettings(max_batch=1, conflate_models="m"), "w"
    )
    pipeline.start()
    try:
        first = pipeline.submit(request("m", "f0", IMAGE, key=b"cam"))
        assert await asyncio.to_thread(engine.entered.wait, 5)  # f0 is in the engine
        later = [pipeline.submit(request("m", f"f{i}", IMAGE, key=b"cam")) for i in (1, 2, 3)]
        gate.set()
        done = await asyncio.wait_for(asyncio.gather(first, *later), 10)
    finally:
        gate.set()
        await asyncio.wait_for(pipeline.close(), 10)
    assert [a.error.code if a.error else "boxes" for a in done] == [
        "boxes",
        "superseded",
        "superseded",
        "boxes",
    ]


class SlowEngine(CountingEngine):
    def _answer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(0.04)  # inside the call, where `running` counts it
        return super()._answer(batch)


@pytest.mark.asyncio
@pytest.mark.parametrize("instances", [1, 2])
async def test_a_camera_twice_as_fast_as_the_engine_gets_every_other_frame_run(
    instances: int,
) -> None:
    """Frames decoded already when a newer one arrives are superseded too. With two
    instances a camera still has one frame in an engine call at a time: the second
    instance does not take the next frame early (it would be one call older when
    answered, and never superseded)."""
    settings = EngineSettings(max_batch=1, instances=instances)
    engine = SlowEngine()
    pipeline = Pipeline(Detectors({"m": engine}), settings, "w")
    pipeline.start()
    try:
        futures = []
        for i in range(40):
            futures.append(pipeline.submit(request("m", f"f{i}", IMAGE, key=b"c", conflate=True)))
            await asyncio.sleep(0.02)
        done = await asyncio.wait_for(asyncio.gather(*futures), 20)
    finally:
        await asyncio.wait_for(pipeline.close(), 10)
    ran = sum(1 for answer in done if answer.error is None)
    assert done[-1].error is None
    assert 8 <= ran <= 32, ran  # about 20: one run per engine call, not 2 in all
    assert engine.most_running == 1  # the camera's frames never ran side by side


@pytest.mark.asyncio
async def test_two_cameras_use_two_instances_at_once() -> None:
    """One frame per camera at a time, but different cameras run side by side."""
    gate = threading.Event()
    engine = CountingEngine(gate=gate, fixed_batch=1)
    pipeline = Pipeline(Detectors({"m": engine}), EngineSettings(instances=2), "w")
    pipeline.start()
    try:
        futures = [
            pipeline.submit(request("m", cam, IMAGE, key=cam.encode(), conflate=True))
            for cam in ("a", "b")
        ]
        await until(lambda: engine.running == 2)  # both cameras' frames at once
        gate.set()
        done = await asyncio.wait_for(asyncio.gather(*futures), 20)
    finally:
        gate.set()  # a failed wait must not leave the engine threads held
        await asyncio.wait_for(pipeline.close(), 10)
    assert engine.most_running == 2
    assert all(answer.error is None for answer in done)
