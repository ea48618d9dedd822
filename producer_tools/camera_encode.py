"""A camera frame as the JPEG a request carries, always within the message limit.

Encoding happens for the frames that are sent only (a 25 fps camera sampled
at 5 fps encodes 5 frames a second, not 25). A frame wider than the camera's
`max_width` is scaled down first; one whose JPEG is still larger than the
record limit is re-encoded at lower quality, then scaled down further, and
counted: it is never sent only to be refused by the broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.errors import TfstreamError
from producer_tools.camera_reader import Decoded

QUALITY_STEPS = (75, 60, 45, 30)
SCALE_STEP = 0.7
MIN_WIDTH = 64


class FrameTooLarge(TfstreamError):
    """Even scaled to the smallest width at the lowest quality, the frame does not fit."""

    code = "image_too_large"
    http_status = 413
    client_error = True


@dataclass(frozen=True)
class Encoded:
    jpeg: bytes
    width: int
    height: int
    shrunk: bool
    """Re-encoded at lower quality or scaled beyond max_width to fit the limit."""


def _cv2() -> Any:
    import cv2

    return cv2


def _pixels(decoded: Decoded, width: int | None) -> np.ndarray:
    """BGR pixels, scaled to `width` (aspect kept) in the same pass when given."""
    frame = decoded.frame
    if frame is not None:
        if width and width < frame.width:
            height = max(2, round(frame.height * width / frame.width))
            return frame.reformat(width=width, height=height, format="bgr24").to_ndarray()
        return frame.to_ndarray(format="bgr24")
    cv2 = _cv2()
    pixels = cv2.imdecode(np.frombuffer(decoded.jpeg or b"", np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise FrameTooLarge("the frame is not a readable image")
    if width and width < pixels.shape[1]:
        height = max(2, round(pixels.shape[0] * width / pixels.shape[1]))
        pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    return pixels


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    cv2 = _cv2()
    ok, buffer = cv2.imencode(".jpg", pixels, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise FrameTooLarge("the frame cannot be encoded as JPEG")
    return buffer.tobytes()


def _size(decoded: Decoded) -> tuple[int, int] | None:
    if decoded.frame is not None:
        return decoded.frame.width, decoded.frame.height
    return None


def encode(decoded: Decoded, quality: int, max_width: int | None, limit_bytes: int) -> Encoded:
    """The frame as JPEG of at most `limit_bytes`.

    Raises:
        FrameTooLarge: it cannot be made to fit (or is not an image).
    """
    size = _size(decoded)
    if decoded.jpeg is not None and len(decoded.jpeg) <= limit_bytes:
        width, height = _jpeg_size(decoded.jpeg)
        if not max_width or width <= max_width:
            return Encoded(decoded.jpeg, width, height, shrunk=False)
    pixels = _pixels(decoded, max_width)
    data = _jpeg(pixels, quality)
    shrunk = False
    for lower in (q for q in QUALITY_STEPS if q < quality):
        if len(data) <= limit_bytes:
            break
        data, shrunk = _jpeg(pixels, lower), True
    width = pixels.shape[1]
    while len(data) > limit_bytes:
        width = int(width * SCALE_STEP)
        if width < MIN_WIDTH:
            raise FrameTooLarge(
                f"a frame of {size or pixels.shape[1::-1]} does not fit {limit_bytes} bytes"
            )
        pixels = _pixels(decoded, width)
        data, shrunk = _jpeg(pixels, min(quality, QUALITY_STEPS[-1])), True
    return Encoded(data, pixels.shape[1], pixels.shape[0], shrunk)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size
