"""A simulated accelerator, for scaling benchmarks only.

Every engine call takes `batch_ms` whatever its batch size (as a GPU does
well below saturation) and sleeps instead of computing, so that several
worker processes on this 2-core machine scale as they would on several GPUs.
It finds nothing: its answers have no boxes. Never used unless asked for
with `--simulate-batch-ms` (see `engines.detector.engine_factory`).

One device runs one call at a time: with `--instances 2` a second call waits
for the first, and only what happens around the calls (decoding, answers)
overlaps, as on a real accelerator. Without that lock two sleeping calls
would double a worker's throughput, which no device does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engines.base import Engine
from engines.repository import ModelSpec


class SimulatedEngine(Engine):
    fixed_batch = None

    def __init__(self, batch_ms: float, busy: threading.Lock | None = None) -> None:
        """`busy`: the simulated device's lock, shared by every model on it."""
        self.batch_ms = batch_ms
        self.device = "/SIMULATED:0"
        self._busy = busy or threading.Lock()

    def _call(self, tensor: Any) -> Any:  # pragma: no cover - _run is overridden
        raise NotImplementedError

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._busy:
            time.sleep(self.batch_ms / 1000)
        size = batch.shape[0]
        return {
            "detection_boxes": np.zeros((size, 1, 4), np.float32),
            "detection_scores": np.zeros((size, 1), np.float32),
            "detection_classes": np.ones((size, 1), np.float32),
            "num_detections": np.zeros((size,), np.float32),
        }


def simulated_engines(batch_ms: float) -> Callable[[ModelSpec, str], Engine]:
    """An `EngineFactory` that puts every model of the process on one simulated
    accelerator (the requested device is ignored): their calls take turns."""
    device = threading.Lock()

    def build(spec: ModelSpec, device_name: str) -> Engine:
        return SimulatedEngine(batch_ms, device)

    return build
