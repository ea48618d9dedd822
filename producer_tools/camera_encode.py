"""A camera frame as the JPEG a request carries, always within the message limit.

Encoding happens for the frames that are sent only (a 25 fps camera sampled
at 5 fps encodes 5 frames a second, not 25). A frame wider than the camera's
`max_width` is scaled down first; one whose JPEG is still larger than the
record limit is re-encoded at lower quality, then scaled down further, and
counted: it is never sent only to be refused by the broker.

A decoded video frame is encoded from its own YUV planes (libjpeg-turbo's raw
data input, through simplejpeg): the decoder already holds the Y, Cb and Cr
planes a JPEG stores, so converting them to BGR only for the JPEG encoder to
convert them back (and resample the chroma twice) was half the CPU of a sent
1080p frame. Planes are passed as they are when they already are what JFIF
means (full range, BT.601 matrix); otherwise (a limited-range or BT.709
stream, a frame to scale down to max_width, any other pixel format) one
swscale pass makes them so, scaling in the same pass. The picture a decoder
shows is the same as through BGR; only the rounding differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.errors import ImageTooLarge
from producer_tools.camera_reader import Decoded

QUALITY_STEPS = (75, 60, 45, 30)
SCALE_STEP = 0.7
MIN_WIDTH = 64


class FrameTooLarge(ImageTooLarge):
    """Even scaled to the smallest width at the lowest quality, the frame does not fit
    (a variant of image_too_large: it crosses the wire as that code)."""


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


JFIF_FORMATS = frozenset({"yuvj420p", "yuvj422p", "yuvj444p"})
YUV_FORMATS = frozenset({"yuv420p", "yuv422p", "yuv444p"})
BT601 = frozenset({2, 5, 6})
"""AVColorSpace values a JPEG decoder's matrix matches: unspecified (swscale takes
BT.601 for it too), BT470BG and SMPTE170M."""
JPEG_RANGE = 2


def _yuv_ready(frame: Any) -> bool:
    """Planar YUV with JPEG's own matrix: its planes can go to the encoder (a range pass at most).

    Another matrix (BT.709, the usual HD tag) goes through BGR instead: swscale's
    YUV-to-YUV matrix conversion costs more (4.4 ms a 1080p frame) than the
    BGR round trip it would replace.
    """
    return frame.colorspace in BT601 and frame.format.name in JFIF_FORMATS | YUV_FORMATS


def _planes(frame: Any, width: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-range Y, Cb, Cr planes of a BT.601 YUV frame, scaled to `width` when given."""
    name = frame.format.name
    smaller = bool(width and width < frame.width)
    full_range = name in JFIF_FORMATS or frame.color_range == JPEG_RANGE
    if smaller or not full_range:
        target = width if width and smaller else frame.width
        frame = frame.reformat(
            width=target,
            height=max(2, round(frame.height * target / frame.width)),
            format="yuv420p",
            src_color_range=frame.color_range,
            dst_color_range="JPEG",
        )
    y, u, v = (
        np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
        for p in frame.planes
    )
    return y, u, v


def _bgr(frame: Any, width: int | None) -> np.ndarray:
    """BGR pixels of any other frame, scaled to `width` (aspect kept) in the same pass."""
    if width and width < frame.width:
        height = max(2, round(frame.height * width / frame.width))
        return frame.reformat(width=width, height=height, format="bgr24").to_ndarray()
    return frame.to_ndarray(format="bgr24")


def _decoded_image(decoded: Decoded) -> np.ndarray:
    """BGR pixels of an already encoded image (an image folder's file)."""
    cv2 = _cv2()
    pixels = cv2.imdecode(np.frombuffer(decoded.jpeg or b"", np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise FrameTooLarge("the frame is not a readable image")
    return pixels


def _scaled(pixels: np.ndarray, width: int | None) -> np.ndarray:
    """`pixels` scaled to `width` (aspect kept) when narrower."""
    cv2 = _cv2()
    if width and width < pixels.shape[1]:
        height = max(2, round(pixels.shape[0] * width / pixels.shape[1]))
        pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    return pixels


def _jpeg(pixels: np.ndarray | tuple[np.ndarray, ...], quality: int) -> bytes:
    if isinstance(pixels, tuple):
        import simplejpeg

        return simplejpeg.encode_jpeg_yuv_planes(*pixels, quality=quality)
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
    frame = decoded.frame
    image: np.ndarray | None = None
    """An image file's pixels, decoded once however many sizes are tried."""

    def pixels_at(width: int | None) -> np.ndarray | tuple[np.ndarray, ...]:
        nonlocal image
        if frame is None:
            image = _decoded_image(decoded) if image is None else image
            return _scaled(image, width)
        return _planes(frame, width) if _yuv_ready(frame) else _bgr(frame, width)

    pixels = pixels_at(max_width)
    data = _jpeg(pixels, quality)
    shrunk = False
    for lower in (q for q in QUALITY_STEPS if q < quality):
        if len(data) <= limit_bytes:
            break
        data, shrunk = _jpeg(pixels, lower), True
    height, width = _shape(pixels)
    while len(data) > limit_bytes:
        wider = width
        width = int(width * SCALE_STEP)
        if width < MIN_WIDTH:
            raise FrameTooLarge(
                f"a frame of {size or (wider, height)} does not fit {limit_bytes} bytes"
            )
        pixels = pixels_at(width)
        data, shrunk = _jpeg(pixels, min(quality, QUALITY_STEPS[-1])), True
        height, width = _shape(pixels)
    return Encoded(data, width, height, shrunk)


def _shape(pixels: np.ndarray | tuple[np.ndarray, ...]) -> tuple[int, int]:
    luma = pixels[0] if isinstance(pixels, tuple) else pixels
    return luma.shape[0], luma.shape[1]


def _jpeg_size(data: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size
