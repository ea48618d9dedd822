"""A served model: its spec, its loaded engine, and the old API's answer format.

This is the one entry point the consumer uses: `load_detector` picks the
engine from `inference_engine_name` and `Detector.detect` turns decoded images
into box lists. TensorFlow is imported only when a model is actually loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engines.base import Engine
from engines.boxes import Box, Options, to_boxes
from engines.config import EngineName
from engines.errors import (
    InvalidModelConfig,
    InvalidModelOutput,
    ModelLoadFailed,
    TfstreamError,
)
from engines.repository import ModelSpec

#: The warm-up image: big enough for any export's resize op, small enough to be instant.
_WARMUP_SHAPE = (64, 64, 3)


def _tf2(spec: ModelSpec, device: str) -> Engine:
    from engines.tf2 import TF2Engine

    return TF2Engine(spec, device)


def _tf1(spec: ModelSpec, device: str) -> Engine:
    from engines.tf1 import TF1Engine

    return TF1Engine(spec, device)


ENGINES: dict[EngineName, Callable[[ModelSpec, str], Engine]] = {
    EngineName.TF2: _tf2,
    EngineName.TF1: _tf1,
}


@dataclass
class Detector:
    spec: ModelSpec
    engine: Engine
    load_s: float = 0.0

    @property
    def device(self) -> str:
        return self.engine.device

    def default_options(self) -> Options:
        return Options(
            confidence=self.spec.config.confidence, predictions=self.spec.config.predictions
        )

    def options(self, confidence: float | None = None, predictions: int | None = None) -> Options:
        """The model's defaults with a request's overrides applied."""
        default = self.default_options()
        return Options(
            confidence=default.confidence if confidence is None else confidence,
            predictions=default.predictions if predictions is None else predictions,
        )

    def detect(
        self, images: Sequence[np.ndarray], options: Sequence[Options] | None = None
    ) -> list[list[Box]]:
        """Boxes for each uint8 [H, W, 3] image, in input order.

        Raises:
            InferenceFailed: the model raised on the batch.
            InvalidModelOutput: the outputs of an image break the model's
                convention; the whole call fails, as no box of a model read
                wrongly can be trusted.
        """
        if not images:
            return []
        per_image = options or [self.default_options()] * len(images)
        raws = self.engine.infer(images)
        convention = self.engine.convention
        try:
            return [
                to_boxes(raw, image.shape[1], image.shape[0], self.spec.labels, opts, convention)
                for raw, image, opts in zip(raws, images, per_image, strict=True)
            ]
        except InvalidModelOutput as exc:
            raise InvalidModelOutput(f"{self.spec.name}: {exc.message}") from None


def load_detector(
    spec: ModelSpec, device: str = "/CPU:0", warm_up: bool = True, simulate_batch_ms: float = 0
) -> Detector:
    """Load the weights and run one warm-up image through them.

    The warm-up moves graph tracing and kernel selection off the first request,
    and finds a graph that loads but cannot run before any client does.
    `simulate_batch_ms` > 0 replaces the weights by `SimulatedEngine` (benchmarks).

    Raises:
        ModelLoadFailed: TensorFlow could not load or run the model.
        InvalidModelConfig: its signature matches no output convention we
            can read (engines/conventions.py), and config.json does not map it.
    """
    started = time.perf_counter()
    if simulate_batch_ms > 0:
        from engines.simulated import SimulatedEngine

        return Detector(spec=spec, engine=SimulatedEngine(simulate_batch_ms))
    try:
        engine = ENGINES[spec.engine](spec, device)
        if warm_up:
            engine.infer([np.zeros(_WARMUP_SHAPE, dtype=np.uint8)])
    except (ModelLoadFailed, InvalidModelConfig):
        raise
    except TfstreamError as exc:
        raise ModelLoadFailed(
            f"{spec.name}: the model loads but does not run: {exc.message}"
        ) from exc
    except Exception as exc:  # TensorFlow raises many unrelated types
        raise ModelLoadFailed(f"{spec.name}: {type(exc).__name__}: {exc}") from exc
    return Detector(spec=spec, engine=engine, load_s=time.perf_counter() - started)
