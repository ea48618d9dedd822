"""Test doubles for the pipeline's edges: engines that count their calls, a
detector table, and an outbox whose acknowledgements the test controls.
No TensorFlow and no broker: these run the real pipeline code in milliseconds."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from consumer.protocol import Headers, Request, Topics, header_map
from consumer.records import Record, RecordAdapter
from engines.base import Engine
from engines.config import ModelConfig
from engines.detector import Detector
from engines.errors import ModelNotFound, ReplyUndeliverable
from engines.repository import ModelSpec

if TYPE_CHECKING:
    from consumer.worker import Worker


class CountingEngine(Engine):
    """Finds one 'thing' in the middle of every image; records each call's batch shape.

    `failures` engine calls fail first; `gate`, when given, holds every call until set;
    `fixed_batch` 1 is a graph that takes exactly one image per call. `running` is
    how many calls are inside the engine now, `most_running` the most there ever were.
    """

    fixed_batch = None
    device = "/FAKE:0"

    def __init__(
        self,
        failures: int = 0,
        gate: threading.Event | None = None,
        fixed_batch: int | None = None,
        config: dict[str, object] | None = None,
    ) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.failures = failures
        self.gate = gate
        self.fixed_batch = fixed_batch
        self.config = config or {}
        """Fields of the model's config.json beyond the required ones."""
        self.entered = threading.Event()
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def _call(self, tensor: object) -> object:  # pragma: no cover - _run is replaced
        raise NotImplementedError

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            return self._answer(batch)
        finally:
            with self._lock:
                self.running -= 1

    def _answer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the engine's gate"
        self.calls.append(batch.shape)
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("out of device memory")
        size = batch.shape[0]
        return {
            "detection_boxes": np.tile(np.float32([[[0.25, 0.25, 0.75, 0.75]]]), (size, 1, 1)),
            "detection_scores": np.full((size, 1), 0.9, np.float32),
            "detection_classes": np.ones((size, 1), np.float32),
            "num_detections": np.ones((size,), np.float32),
        }


class EngineAbort(BaseException):
    """What no `except Exception` catches (a library's own control-flow exception)."""


class DyingEngine(CountingEngine):
    """After `spared` calls that answer (a load's warm-up), `deaths` calls raise `kind`,
    out of the inference thread into the runner that awaited them; later calls answer."""

    def __init__(
        self, deaths: int, kind: type[BaseException] = EngineAbort, spared: int = 0
    ) -> None:
        super().__init__()
        self.deaths = deaths
        self.kind = kind
        self.spared = spared

    def _answer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.spared > 0:
            self.spared -= 1
        elif self.deaths > 0:
            self.deaths -= 1
            raise self.kind("device lost")
        return super()._answer(batch)


#: The config.json of a fake model: the required fields, nothing else.
FAKE_CONFIG: dict[str, object] = {
    "inference_engine_name": "tensorflow2_detection",
    "confidence": 50,
    "predictions": 10,
    "number_of_classes": 1,
    "framework": "tensorflow",
    "type": "detection",
    "network": "fake",
}
FAKE_LABELS = 'item { id: 1 name: "thing" }\n'


def fake_spec(name: str, **fields: object) -> ModelSpec:
    config = ModelConfig(**{**FAKE_CONFIG, **fields})  # type: ignore[arg-type]
    return ModelSpec(name, Path(name), config, {1: "thing"}, Path(name))


def write_fake_model(
    root: Path, name: str, config: dict[str, object] | None = None, version: int | None = None
) -> Path:
    """A model folder whose weights no engine could load (a factory stands in for one):
    config.json and labels at the model's top, the weights in `version`'s folder when
    given. Returns the weights' folder."""
    top = root / name
    weights = top / str(version) if version is not None else top
    weights.mkdir(parents=True)
    (top / "config.json").write_text(json.dumps(FAKE_CONFIG if config is None else config))
    (top / "object-detection.pbtxt").write_text(FAKE_LABELS)
    (weights / "saved_model.pb").write_bytes(b"weights")
    return weights


@dataclass
class Detectors:
    """The pipeline's view of a registry: name -> detector, unknown names refused."""

    engines: dict[str, CountingEngine]

    def detector(self, name: str) -> Detector:
        if name not in self.engines:
            raise ModelNotFound(f"no model '{name}'")
        engine = self.engines[name]
        return Detector(fake_spec(name, **engine.config), engine)


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def request(model: str, cid: str, image: bytes, **kwargs: object) -> Request:
    return Request(model=model, correlation_id=cid, image=image, **kwargs)  # type: ignore[arg-type]


@dataclass
class Sent:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: dict[str, str]
    ack: asyncio.Future[None]


@dataclass
class MemoryOutbox:
    """Keeps every record sent. Topics in `refuse` raise `ReplyUndeliverable`; the
    next `broken[topic]` sends to a topic fail with an error no outbox expects
    (a bug, a client in a bad state); with `auto_ack` off, the test acknowledges
    each send itself (`ack`)."""

    refuse: set[str] = field(default_factory=set)
    auto_ack: bool = True
    sent: list[Sent] = field(default_factory=list)
    broken: dict[str, int] = field(default_factory=dict)

    def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> Awaitable[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken.get(topic, 0) > 0:
            self.broken[topic] -= 1
            ack.set_exception(RuntimeError(f"producer broke sending to {topic}"))
        elif topic in self.refuse:
            ack.set_exception(ReplyUndeliverable(f"topic '{topic}' refused the record"))
        elif self.auto_ack:
            ack.set_result(None)
        self.sent.append(Sent(topic, value, key, header_map(headers), ack))
        return ack

    def to(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic and s.ack.done() and not s.ack.exception()]


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for `condition`, checking every few milliseconds; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s}s"
        await asyncio.sleep(0.005)


TOPICS = Topics("t")
IMAGE = jpeg(32, 24)


def record(
    offset: int,
    value: bytes = IMAGE,
    model: str = "a",
    partition: int = 0,
    timestamp_ms: int | None = None,
    **headers: str,
) -> Record:
    """A request record of topic prefix `t`; header names with `-` for `_`."""
    return Record(
        TOPICS.requests(model),
        partition,
        offset,
        b"camera-1",
        value,
        tuple((k.replace("_", "-"), v.encode()) for k, v in headers.items()),
        timestamp_ms=timestamp_ms,
    )


async def handled(adapter: RecordAdapter, *records: Record) -> None:
    await asyncio.wait_for(asyncio.gather(*(adapter.submit(r) for r in records)), 10)


class GatedFactory:
    """An engine factory whose loads wait until the test opens `gate` (`loading` says
    one started): a model held in `loading` for as long as a test needs."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.loading = threading.Event()

    def __call__(self, spec: ModelSpec, device: str) -> Engine:
        self.loading.set()
        assert self.gate.wait(30), "the test never let the load finish"
        return CountingEngine()


def fake_model_worker(
    bootstrap: str, repository: Path, engine: Callable[[], Engine], **settings: object
) -> Worker:
    """A worker in this process serving the fake model 'm' (written to `repository`),
    each load of it built by `engine`: for tests that watch a worker's own state."""
    from consumer.registry import ModelRegistry
    from consumer.settings import ConsumerSettings
    from consumer.worker import Worker
    from engines.repository import ModelRepository
    from tests.support.workers import unique_prefix

    write_fake_model(repository, "m")
    worker = Worker(
        ConsumerSettings(
            bootstrap=bootstrap,
            repository=repository,
            models="m",
            topic_prefix=unique_prefix(),
            group=unique_prefix(),
            poll_interval_s=0,
            **settings,  # type: ignore[arg-type]
        )
    )
    worker.registry = ModelRegistry(
        ModelRepository(repository), ["m"], "cpu", lambda spec, device: engine()
    )
    return worker
