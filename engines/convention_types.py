"""What a convention is: the leaf that conventions.py and the exporters' readers
(yolo.py, keras_hub.py) share, so that the resolver can import the readers and
the readers need nothing back from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from engines.config import OUTPUT_NAMES, BoxFormat, OutputConvention

#: The outputs every convention needs (Model Garden adds image_info).
REQUIRED_OUTPUTS = OUTPUT_NAMES[:4]
IMAGE_INFO = "image_info"
#: How far past the model input an exporter's regressed box may reach, in input
#: sizes, before it is taken for a model read with the wrong convention:
#: Ultralytics and KerasHub decoders do not clip (boxes are clipped to the image
#: afterwards, as their own predict clips them).
EXPORTER_MARGIN = 1.0


@dataclass(frozen=True)
class Convention:
    """How to read one model's outputs: whose layout, which box unit, which names."""

    family: OutputConvention = OutputConvention.OD_API
    box_format: BoxFormat = BoxFormat.NORMALIZED
    outputs: Mapping[str, str] = field(default_factory=lambda: {k: k for k in REQUIRED_OUTPUTS})
    """Our output name -> the signature's output name."""
    variant: str = ""
    """Which of an exporter's layouts (Ultralytics: raw, nms, end2end)."""
    margin: float = 0.0
    """How far past the model input a box may reach, in input sizes (regressed
    boxes that the export does not clip: Ultralytics)."""
    source_output: str = ""
    """The signature output an exporter's adapter reads (Ultralytics' only one)."""
    normalized: bool | None = False
    """Ultralytics: boxes in fractions of the input (what the tflite / edgetpu
    exports leave in their saved_model); None: decided from the first outputs'
    range (engines/yolo.py)."""

    def describe(self) -> str:
        if self.variant:
            return f"{self.family.value}, {self.variant} outputs"
        return f"{self.family.value}, {self.box_format.value} boxes"

    @property
    def uses_image_info(self) -> bool:
        return IMAGE_INFO in self.outputs


#: What a model gets when nothing else is known (the Object Detection API).
OD_API = Convention()

#: What a signature output is, for messages: name -> "dtype[shape]".
Signature = Mapping[str, str]


def parse_spec(text: str) -> tuple[str, tuple[int | None, ...]]:
    """ "float32[1, 84, 8400]" -> ("float32", (1, 84, 8400)); "?" is None."""
    dtype, _, rest = text.partition("[")
    dims = rest.rstrip("]").strip()
    if not dims or dims == "?":
        return dtype, ()
    return dtype, tuple(None if d.strip() == "?" else int(d) for d in dims.split(","))


def xyxy_to_yxyx(boxes: np.ndarray) -> np.ndarray:
    """[..., 4] x1, y1, x2, y2 -> ymin, xmin, ymax, xmax (our order), float32."""
    return np.asarray(boxes, np.float32)[..., [1, 0, 3, 2]]
