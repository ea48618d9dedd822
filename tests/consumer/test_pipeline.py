"""The pipeline on its own: fake engines, no TensorFlow, no broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np
import pytest

from consumer.batching import Batching
from consumer.pipeline import RUNNER_RESTARTS, Answer, Decoded, Pipeline, Verdict, verdict
from consumer.protocol import Request
from consumer.settings import EngineSettings
from consumer.supervision import Supervisor
from engines import errors
from engines.detector import Detector
from tests.consumer.fakes import (
    CountingEngine,
    Detectors,
    DyingEngine,
    EngineAbort,
    jpeg,
    request,
    until,
)

SMALL, LARGE = jpeg(32, 24), jpeg(48, 40)


def settings(**overrides: object) -> EngineSettings:
    """One instance unless a test says otherwise: most tests here count engine calls
    made one after the other."""
    fields = {"max_batch": 8, "max_delay_ms": 0, "instances": 1, **overrides}
    return EngineSettings(**fields)  # type: ignore[arg-type]


@pytest.fixture
def engines() -> dict[str, CountingEngine]:
    return {"a": CountingEngine(), "b": CountingEngine()}


@contextlib.asynccontextmanager
async def running(pipeline: Pipeline) -> AsyncIterator[Pipeline]:
    pipeline.start()
    try:
        yield pipeline
    finally:
        await asyncio.wait_for(pipeline.close(), 10)


async def answers(futures: list[asyncio.Future[Answer]]) -> list[Answer]:
    return list(await asyncio.wait_for(asyncio.gather(*futures), 10))


@pytest.mark.parametrize(
    ("error", "retries_left", "expected"),
    [
        (None, 1, Verdict.ANSWER),
        (errors.InferenceFailed("x"), 1, Verdict.RETRY),
        (errors.InferenceFailed("x"), 0, Verdict.DEAD_LETTER),
        (errors.ModelLoadFailed("x"), 0, Verdict.DEAD_LETTER),
        (errors.InvalidImage("x"), 1, Verdict.DEAD_LETTER),  # the request's fault: never retried
        (errors.InvalidRequest("x"), 1, Verdict.DEAD_LETTER),
        (errors.ModelNotFound("x"), 0, Verdict.DEAD_LETTER),
        (errors.DeadlineExceeded("x"), 1, Verdict.ANSWER),  # expected, not a fault
        (errors.ReplyUndeliverable("x"), 1, Verdict.DEAD_LETTER),
    ],
)
def test_the_verdict_comes_from_the_error_s_attributes(
    error: errors.TfstreamError | None, retries_left: int, expected: Verdict
) -> None:
    assert verdict(error, retries_left) is expected


@pytest.mark.asyncio
async def test_queued_requests_share_engine_calls_up_to_max_batch(
    engines: dict[str, CountingEngine],
) -> None:
    async with running(Pipeline(Detectors(engines), settings(max_batch=4), "w")) as pipeline:
        done = await answers([pipeline.submit(request("a", f"r{i}", SMALL)) for i in range(6)])
    assert [shape[0] for shape in engines["a"].calls] == [4, 2]
    assert [a.reply.timing.batch_size for a in done] == [4, 4, 4, 4, 2, 2]
    assert all(a.reply.success and not a.dead_letter for a in done)
    box = done[0].reply.data["bounding-boxes"][0]  # type: ignore[index]
    assert (box["ObjectClassName"], box["coordinates"]) == (
        "thing",
        {"left": 8, "top": 6, "right": 24, "bottom": 18},
    )
    assert pipeline.inflight == 0


@pytest.mark.asyncio
async def test_a_batch_is_split_by_model_and_image_size(
    engines: dict[str, CountingEngine],
) -> None:
    mixed = [("a", SMALL), ("b", SMALL), ("a", LARGE), ("a", SMALL), ("b", LARGE), ("b", SMALL)]
    async with running(Pipeline(Detectors(engines), settings(), "w")) as pipeline:
        done = await answers(
            [pipeline.submit(request(m, f"r{i}", image)) for i, (m, image) in enumerate(mixed)]
        )
    assert sorted(engines["a"].calls) == [(1, 40, 48, 3), (2, 24, 32, 3)]
    assert sorted(engines["b"].calls) == [(1, 40, 48, 3), (2, 24, 32, 3)]
    sizes = [(a.reply.model, a.reply.data["width"], a.reply.data["height"]) for a in done]  # type: ignore[index]
    assert sizes == [
        ("a", 32, 24),
        ("b", 32, 24),
        ("a", 48, 40),
        ("a", 32, 24),
        ("b", 48, 40),
        ("b", 32, 24),
    ]
    assert [a.reply.correlation_id for a in done] == [f"r{i}" for i in range(6)]


@pytest.mark.asyncio
async def test_a_failed_engine_call_fails_only_its_group_after_one_retry() -> None:
    engines = {"a": CountingEngine(failures=99), "b": CountingEngine()}
    async with running(Pipeline(Detectors(engines), settings(), "w")) as pipeline:
        done = await answers(
            [pipeline.submit(request(m, f"{m}{i}", SMALL)) for i in range(2) for m in "ab"]
        )
    by_id = {a.reply.correlation_id: a for a in done}
    assert len(engines["a"].calls) == 2  # the call and its one retry
    for cid in ("a0", "a1"):
        assert by_id[cid].error is not None and by_id[cid].error.code == "inference_failed"
        assert by_id[cid].dead_letter
    assert by_id["b0"].reply.success and by_id["b1"].reply.success


@pytest.mark.asyncio
async def test_a_retried_engine_call_that_succeeds_answers_normally() -> None:
    engines = {"a": CountingEngine(failures=1)}
    async with running(Pipeline(Detectors(engines), settings(), "w")) as pipeline:
        (done,) = await answers([pipeline.submit(request("a", "r", SMALL))])
    assert done.reply.success and len(engines["a"].calls) == 2


@pytest.mark.asyncio
async def test_without_retries_the_first_failure_answers() -> None:
    engines = {"a": CountingEngine(failures=1)}
    only_once = Pipeline(Detectors(engines), settings(inference_retries=0), "w")
    async with running(only_once) as pipeline:
        (done,) = await answers([pipeline.submit(request("a", "r", SMALL))])
    assert done.error is not None and done.error.code == "inference_failed"
    assert len(engines["a"].calls) == 1


@pytest.mark.asyncio
async def test_requests_that_cannot_run_are_answered_without_an_engine_call(
    engines: dict[str, CountingEngine],
) -> None:
    past_ms = int(time.time() * 1000) - 1000
    async with running(Pipeline(Detectors(engines), settings(), "w")) as pipeline:
        done = await answers(
            [
                pipeline.submit(request("ghost", "unknown", SMALL)),
                pipeline.submit(request("a", "expired", SMALL, deadline_ms=past_ms)),
                pipeline.submit(request("a", "corrupt", b"\xff\xd8\xff not a jpeg")),
                pipeline.submit(request("a", "empty", b"")),
            ]
        )
    codes = {a.reply.correlation_id: (a.error.code, a.dead_letter) for a in done if a.error}
    assert codes == {
        "unknown": ("model_not_found", True),
        "expired": ("deadline_exceeded", False),
        "corrupt": ("invalid_image", True),
        "empty": ("invalid_image", True),
    }
    assert engines["a"].calls == []


@pytest.mark.asyncio
async def test_a_deadline_that_passes_in_the_queue_is_answered_without_running() -> None:
    gate = threading.Event()
    engines = {"a": CountingEngine(gate=gate)}
    async with running(Pipeline(Detectors(engines), settings(max_batch=1), "w")) as pipeline:
        first = pipeline.submit(request("a", "first", SMALL))
        assert await asyncio.to_thread(engines["a"].entered.wait, 10)  # the engine is busy
        deadline_ms = int(time.time() * 1000) + 30
        late = pipeline.submit(request("a", "late", SMALL, deadline_ms=deadline_ms))
        while time.time() * 1000 <= deadline_ms:  # let the clock pass the deadline
            await asyncio.sleep(0.01)
        gate.set()
        done = await answers([first, late])
    assert done[0].reply.success
    assert done[1].error is not None and done[1].error.code == "deadline_exceeded"
    assert len(engines["a"].calls) == 1


@pytest.mark.asyncio
async def test_close_answers_everything_submitted(engines: dict[str, CountingEngine]) -> None:
    pipeline = Pipeline(Detectors(engines), settings(max_batch=2), "w")
    pipeline.start()
    futures = [pipeline.submit(request("a", f"r{i}", SMALL)) for i in range(5)]
    await asyncio.wait_for(pipeline.close(), 10)
    assert all(f.done() and f.result().reply.success for f in futures)
    assert [shape[0] for shape in engines["a"].calls] == [2, 2, 1]


def histogram(pipeline: Pipeline, model: str) -> tuple[float, float]:
    """(observations, sum) of the batch-size histogram of `model`."""
    registry = pipeline.metrics.registry
    count = registry.get_sample_value("tfstream_batch_size_count", {"model": model})
    total = registry.get_sample_value("tfstream_batch_size_sum", {"model": model})
    return count or 0.0, total or 0.0


@pytest.mark.asyncio
async def test_a_fixed_batch_1_model_gets_one_image_per_call_and_says_so() -> None:
    engines = {"one": CountingEngine(fixed_batch=1)}
    async with running(Pipeline(Detectors(engines), settings(max_batch=8), "w")) as pipeline:
        done = await answers([pipeline.submit(request("one", f"r{i}", SMALL)) for i in range(8)])
    assert engines["one"].calls == [(1, 24, 32, 3)] * 8
    assert [a.reply.timing.batch_size for a in done] == [1] * 8  # type: ignore[union-attr]
    assert all(a.reply.success for a in done)
    assert histogram(pipeline, "one") == (8, 8)


@pytest.mark.asyncio
async def test_a_model_s_config_overrides_the_command_line_batching() -> None:
    engines = {
        "own": CountingEngine(config={"max_batch": 3, "max_delay_ms": 40, "instances": 2}),
        "default": CountingEngine(),
    }
    pipeline = Pipeline(Detectors(engines), settings(max_batch=8, max_delay_ms=0), "w")
    async with running(pipeline):
        done = await answers(
            [pipeline.submit(request(m, f"{m}{i}", SMALL)) for i in range(7) for m in engines]
        )
        assert pipeline.batching("own") == Batching(max_batch=3, max_delay_s=0.04, instances=2)
        assert pipeline.batching("default") == Batching(max_batch=8, max_delay_s=0, instances=1)
    assert sorted(shape[0] for shape in engines["own"].calls) == [1, 3, 3]
    assert [shape[0] for shape in engines["default"].calls] == [7]
    assert all(a.reply.success for a in done)
    assert histogram(pipeline, "own") == (3, 7)


@pytest.mark.asyncio
async def test_instances_run_that_many_engine_calls_of_a_model_at_once() -> None:
    gate = threading.Event()
    engines = {"m": CountingEngine(gate=gate, fixed_batch=1, config={"instances": 3})}
    async with running(Pipeline(Detectors(engines), settings(), "w")) as pipeline:
        futures = [pipeline.submit(request("m", f"r{i}", SMALL)) for i in range(5)]
        await until(lambda: engines["m"].running == 3)
        await asyncio.sleep(0.05)  # a fourth call would have entered by now
        assert engines["m"].running == 3
        gate.set()
        done = await answers(futures)
    assert engines["m"].most_running == 3
    assert len(engines["m"].calls) == 5 and all(a.reply.success for a in done)


@pytest.mark.asyncio
async def test_one_instance_runs_one_call_at_a_time() -> None:
    gate = threading.Event()
    engines = {"m": CountingEngine(gate=gate, fixed_batch=1)}
    async with running(Pipeline(Detectors(engines), settings(), "w")) as pipeline:
        futures = [pipeline.submit(request("m", f"r{i}", SMALL)) for i in range(3)]
        await until(lambda: engines["m"].running == 1)
        await asyncio.sleep(0.05)
        assert engines["m"].running == 1
        gate.set()
        await answers(futures)
    assert engines["m"].most_running == 1


class FirstCallHeld(CountingEngine):
    """Holds its first call until `hold` is set; later calls run at once."""

    def __init__(self, hold: threading.Event, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.hold = hold
        self.held = False

    def _answer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            first, self.held = not self.held, True
        if first:
            assert self.hold.wait(10), "the test never let the first call go"
        return super()._answer(batch)


@pytest.mark.asyncio
async def test_answers_of_one_key_keep_their_order_across_instances() -> None:
    """With two instances the second frame of a camera finishes first; its answer
    waits for the first frame's. Another camera's frame does not wait."""
    gate = threading.Event()
    engines = {"m": FirstCallHeld(gate, fixed_batch=1)}
    finished: list[str] = []
    async with running(Pipeline(Detectors(engines), settings(instances=2), "w")) as pipeline:
        first = pipeline.submit(request("m", "cam1-frame1", SMALL, key=b"cam1"))
        await until(lambda: engines["m"].held)  # frame 1 holds instance 1
        later = [
            pipeline.submit(request("m", "cam1-frame2", SMALL, key=b"cam1")),
            pipeline.submit(request("m", "cam2-frame1", SMALL, key=b"cam2")),
        ]
        for future in (first, *later):
            future.add_done_callback(lambda f: finished.append(f.result().reply.correlation_id))
        await until(lambda: len(engines["m"].calls) == 2)  # both ran on instance 2 meanwhile
        await until(lambda: "cam2-frame1" in finished)
        await asyncio.sleep(0.05)  # room for cam1's second answer to come out, were it free
        assert finished == ["cam2-frame1"]  # cam1's second frame waits for its first
        gate.set()
        done = await answers([first, *later])
    assert finished == ["cam2-frame1", "cam1-frame1", "cam1-frame2"]
    assert all(a.reply.success for a in done)


class ThreadNoting(Pipeline):
    """Notes the thread each decode ran in."""

    decode_threads: list[str]

    def decode(self, request, detector):  # type: ignore[no-untyped-def]
        self.decode_threads = [
            *getattr(self, "decode_threads", []),
            threading.current_thread().name,
        ]
        return super().decode(request, detector)


@pytest.mark.asyncio
async def test_a_lone_request_decodes_in_its_engine_call_s_thread() -> None:
    """One hand-off to the inference thread and back, not a detour through the decode pool."""
    engines = {"a": CountingEngine()}
    async with running(ThreadNoting(Detectors(engines), settings(), "w")) as pipeline:
        # The model's first request makes its lane: its runner is not waiting yet.
        await answers([pipeline.submit(request("a", "first", SMALL))])
        pipeline.decode_threads = []
        for i in range(3):  # one at a time: each finds the runner idle
            (done,) = await answers([pipeline.submit(request("a", f"r{i}", SMALL))])
            assert done.reply.success and done.reply.timing.batch_size == 1  # type: ignore[union-attr]
            assert done.reply.timing.decode_ms > 0  # type: ignore[union-attr]
        (bad,) = await answers([pipeline.submit(request("a", "bad", b"\xff\xd8\xff not a jpeg"))])
    assert all(name.startswith("infer-a") for name in pipeline.decode_threads)
    assert len(pipeline.decode_threads) == 4
    assert bad.error is not None and bad.error.code == "invalid_image" and bad.dead_letter
    assert len(engines["a"].calls) == 4


@pytest.mark.asyncio
async def test_requests_arriving_together_decode_side_by_side_in_the_pool() -> None:
    engines = {"a": CountingEngine()}
    async with running(ThreadNoting(Detectors(engines), settings(), "w")) as pipeline:
        await answers([pipeline.submit(request("a", "first", SMALL))])
        pipeline.decode_threads = []
        done = await answers([pipeline.submit(request("a", f"r{i}", SMALL)) for i in range(4)])
    assert all(a.reply.success for a in done)
    assert all(name.startswith("decode") for name in pipeline.decode_threads)
    assert [shape[0] for shape in engines["a"].calls] == [1, 4]


@pytest.mark.asyncio
async def test_a_lone_request_whose_engine_call_fails_is_retried_once() -> None:
    engines = {"a": CountingEngine(failures=1)}
    async with running(Pipeline(Detectors(engines), settings(), "w")) as pipeline:
        (done,) = await answers([pipeline.submit(request("a", "r", SMALL))])
    assert done.reply.success and len(engines["a"].calls) == 2


@pytest.mark.asyncio
async def test_a_burst_beyond_one_batch_decodes_while_the_first_batch_runs() -> None:
    gate = threading.Event()
    gate.set()
    engines = {"a": CountingEngine(gate=gate)}
    pipeline = ThreadNoting(Detectors(engines), settings(max_batch=2), "w")
    async with running(pipeline):
        await answers([pipeline.submit(request("a", "first", SMALL))])
        gate.clear()
        engines["a"].entered.clear()
        futures = [pipeline.submit(request("a", f"r{i}", SMALL)) for i in range(6)]
        assert await asyncio.to_thread(engines["a"].entered.wait, 10)
        # While the engine holds the first batch of 2, the other 4 decode in the pool.
        await until(lambda: len(pipeline.decode_threads) == 7)
        gate.set()
        done = await answers(futures)
    assert all(a.reply.success for a in done)
    assert [shape[0] for shape in engines["a"].calls] == [1, 2, 2, 2]


@pytest.mark.asyncio
async def test_error_answers_carry_the_model_version_once_one_was_resolved() -> None:
    """An undecodable image, an expired deadline, a failed engine call and a superseded
    frame were all given to version 3: their answers say so. An unknown model had none."""

    class Version3(Detectors):
        def detector(self, name: str) -> Detector:
            found = super().detector(name)
            return replace(found, spec=replace(found.spec, version=3))

    engines = {"a": CountingEngine(), "broken": CountingEngine(failures=10)}
    pipeline = Pipeline(Version3(engines), settings(inference_retries=0), "w1")
    async with running(pipeline):
        results = await answers(
            [
                pipeline.submit(request("a", "bad", b"not an image")),
                pipeline.submit(request("a", "late", SMALL, deadline_ms=1)),
                pipeline.submit(request("broken", "engine", SMALL)),
                pipeline.submit(request("a", "old", SMALL, key=b"cam", conflate=True)),
                pipeline.submit(request("a", "new", SMALL, key=b"cam", conflate=True)),
                pipeline.submit(request("nope", "unknown", SMALL)),
            ]
        )
    codes = [(a.reply.correlation_id, a.error and a.error.code) for a in results]
    assert codes == [
        ("bad", "invalid_image"),
        ("late", "deadline_exceeded"),
        ("engine", "inference_failed"),
        ("old", "superseded"),
        ("new", None),
        ("unknown", "model_not_found"),
    ]
    assert [a.reply.model_version for a in results] == [3, 3, 3, 3, 3, None]


# -- supervised runners: a runner that dies neither jams its lane nor hides ----------


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", [EngineAbort, asyncio.CancelledError])
async def test_a_runner_that_dies_is_restarted_and_what_it_held_is_answered(
    kind: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """Also a `CancelledError` nobody asked for: it ended the runner just as silently."""
    supervisor = Supervisor()
    pipeline = Pipeline(
        Detectors({"a": DyingEngine(1, kind)}), settings(), "w1", supervisor=supervisor
    )
    with caplog.at_level(logging.ERROR, logger="consumer.supervision"):
        async with running(pipeline):
            (died,) = await answers([pipeline.submit(request("a", "1", SMALL))])
            (after,) = await answers([pipeline.submit(request("a", "2", SMALL))])
    assert died.error is not None and died.error.code == "inference_failed"
    assert "runner died" in died.error.message and died.reply.model_version == 1
    assert after.error is None and after.reply.data is not None
    assert supervisor.healthy  # restarted: the lane serves, the process stays live
    assert supervisor.failures.labels("pipeline-a-0")._value.get() == 1
    (logged,) = [r for r in caplog.records if r.getMessage().startswith("background task")]
    assert logged.exc_info is not None and logged.getMessage().endswith("restarted")


@pytest.mark.asyncio
async def test_a_runner_that_keeps_dying_is_failed_and_its_lane_answers_instead_of_jamming() -> (
    None
):
    supervisor = Supervisor()
    pipeline = Pipeline(
        Detectors({"a": DyingEngine(100)}), settings(max_batch=1), "w1", supervisor=supervisor
    )
    async with running(pipeline):
        queued = [pipeline.submit(request("a", str(i), SMALL)) for i in range(6)]
        results = await answers(queued)
        later = await answers([pipeline.submit(request("a", "later", SMALL))])
    died = RUNNER_RESTARTS.limit + 1  # the deaths allowed, and the one too many
    assert [a.error and a.error.code for a in results] == ["inference_failed"] * died + [
        "model_unavailable"
    ] * (6 - died)
    assert later[0].error is not None and later[0].error.code == "model_unavailable"
    assert all(a.reply.model_version == 1 for a in results + later)
    assert not supervisor.healthy and "pipeline-a-0" in supervisor.failed
    assert supervisor.failures.labels("pipeline-a-0")._value.get() == died


@pytest.mark.asyncio
async def test_a_runner_that_died_in_a_cameras_round_leaves_the_camera_free_to_run() -> None:
    """The conflation group of the round it died in is released: the camera's next
    frame runs (it would be parked behind a round that never ends)."""
    engine = DyingEngine(1)
    pipeline = Pipeline(Detectors({"a": engine}), settings(), "w1")
    async with running(pipeline):
        (died,) = await answers(
            [pipeline.submit(request("a", "1", SMALL, key=b"cam", conflate=True))]
        )
        (after,) = await answers(
            [pipeline.submit(request("a", "2", SMALL, key=b"cam", conflate=True))]
        )
    assert died.error is not None and died.error.code == "inference_failed"
    assert after.error is None and len(engine.calls) == 1


@pytest.mark.asyncio
async def test_a_decode_that_raises_stopiteration_is_answered_and_holds_up_nobody() -> None:
    """An asyncio future refuses StopIteration (PEP 479): set as a decode's outcome it
    raised in the loop's callback instead, and that request, with every other one
    decoded in the same burst, was never answered (a decode bug once raised one)."""
    gate = threading.Event()
    engine = CountingEngine(gate=gate)
    pipeline = Pipeline(Detectors({"a": engine}), settings(), "w1")
    real = pipeline.decode
    decoding: list[str] = []

    def decode(request: Request, detector: Detector) -> Decoded:
        decoding.append(request.correlation_id)
        if request.correlation_id.startswith("bad"):
            raise StopIteration
        return real(request, detector)

    pipeline.decode = decode  # type: ignore[method-assign]
    async with running(pipeline):
        first = pipeline.submit(request("a", "first", SMALL))
        await until(lambda: engine.entered.is_set())  # the runner is busy: the rest queue
        queued = [pipeline.submit(request("a", cid, SMALL)) for cid in ("bad1", "ok", "bad2")]
        await until(lambda: len(decoding) == 4)  # decoded while they wait, in the pool
        await asyncio.sleep(0.1)  # their outcomes handed to the loop
        gate.set()
        results = await answers([first, *queued])
    codes = [(a.reply.correlation_id, a.error and a.error.code) for a in results]
    assert codes == [
        ("first", None),
        ("bad1", "inference_failed"),
        ("ok", None),
        ("bad2", "inference_failed"),
    ]
