"""A served model: its spec, its loaded engine, and the old API's answer format.

This is the one entry point the consumer uses: `load_detector` builds the
engine with an `EngineFactory` (by default the one `inference_engine_name`
names; `engine_factory` is where a process chooses) and `Detector.detect` turns decoded images
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
from engines.export_folder import decode_resizer
from engines.repository import ModelSpec
from engines.resizer import Resizer

#: The warm-up image: big enough for any export's resize op, small enough to be instant.
_WARMUP_SHAPE = (64, 64, 3)


#: Builds a model's engine from its spec and the requested device ("auto", "cpu", "GPU:1").
EngineFactory = Callable[[ModelSpec, str], Engine]


def tensorflow_device(requested: str) -> str:
    """TensorFlow set up (once per process) and the device models run on, for a
    requested "auto", "cpu" or "GPU:1".

    Raises:
        ValueError: the requested device is not there.
    """
    from engines import runtime

    return runtime.configure(None if requested == "auto" else requested)


def _tf2(spec: ModelSpec, device: str) -> Engine:
    from engines.tf2 import TF2Engine

    return TF2Engine(spec, tensorflow_device(device))


def _tf1(spec: ModelSpec, device: str) -> Engine:
    from engines.tf1 import TF1Engine

    return TF1Engine(spec, tensorflow_device(device))


ENGINES: dict[EngineName, EngineFactory] = {
    EngineName.TF2: _tf2,
    EngineName.TF1: _tf1,
}


def configured_engine(spec: ModelSpec, device: str) -> Engine:
    """The engine the model's config.json names (`inference_engine_name`)."""
    return ENGINES[spec.engine](spec, device)


def engine_factory(simulate_batch_ms: float = 0) -> EngineFactory:
    """How a process builds its engines: the ones the models name, or, for the
    scaling benchmarks, the simulated accelerator in place of every model."""
    if simulate_batch_ms > 0:
        from engines.simulated import simulated_engines

        return simulated_engines(simulate_batch_ms)
    return configured_engine


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

    @property
    def resizer(self) -> Resizer | None:
        """What images are decoded for (`decode_for_model`): the model's own resize,
        or None (full resolution) where tfstream promises the exporter's own pixels
        (`engines.export_folder.decode_resizer`)."""
        return decode_resizer(self.spec.resizer, self.engine.convention)

    def detect(
        self,
        images: Sequence[np.ndarray],
        options: Sequence[Options] | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[list[Box]]:
        """Boxes for each uint8 [H, W, 3] image, in input order.

        `sizes` are the (width, height) of the images the clients sent, where
        `images` were decoded smaller (`Decoded`); boxes are in those pixels.

        Raises:
            InferenceFailed: the model raised on the batch.
            InvalidModelOutput: the outputs of an image break the model's
                convention; the whole call fails, as no box of a model read
                wrongly can be trusted.
        """
        if not images:
            return []
        per_image = options or [self.default_options()] * len(images)
        shown = sizes or [(image.shape[1], image.shape[0]) for image in images]
        raws = self.engine.infer(images)
        convention = self.engine.convention
        try:
            return [
                to_boxes(
                    raw,
                    image.shape[1],
                    image.shape[0],
                    self.spec.labels,
                    opts,
                    convention,
                    shown=size,
                )
                for raw, image, size, opts in zip(raws, images, shown, per_image, strict=True)
            ]
        except InvalidModelOutput as exc:
            raise InvalidModelOutput(f"{self.spec.name}: {exc.message}") from None


def load_detector(
    spec: ModelSpec,
    device: str = "auto",
    warm_up: bool = True,
    factory: EngineFactory = configured_engine,
) -> Detector:
    """Load the weights and run one warm-up image through them.

    The warm-up moves graph tracing and kernel selection off the first request,
    and finds a graph that loads but cannot run before any client does.

    Raises:
        ModelLoadFailed: the engine could not load or run the model.
        InvalidModelConfig: its signature matches no output convention we
            can read (engines/conventions.py), and config.json does not map it.
    """
    started = time.perf_counter()
    try:
        engine = factory(spec, device)
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
