"""Turning request bytes into the RGB pixel arrays the engines take.

Limits are checked from the image header, before the pixels are decoded, so a
small file that would decompress into gigabytes (a decompression bomb) is
refused without allocating it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engines.errors import ImageTooLarge, InvalidImage

#: Formats we decode. Others (TIFF, PSD, EPS...) are refused: more attack surface, no user.
FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF")


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 10 * 1024 * 1024
    """Largest encoded payload accepted (the Kafka default message size we document)."""
    max_pixels: int = 40_000_000
    """Largest width x height accepted, checked from the header before decoding."""


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Decode one image to uint8 [H, W, 3] RGB, EXIF orientation applied.

    Grey, palette and CMYK images become RGB; transparency is flattened onto
    white, which is what a person sees in a viewer. Animated GIF/WebP give
    their first frame.

    Raises:
        InvalidImage: empty, truncated, corrupt or unsupported payload.
        ImageTooLarge: more than `limits.max_bytes` bytes or `limits.max_pixels` pixels.
    """
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns; ours below is stricter and raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width < 1 or height < 1:
                raise InvalidImage(f"the image has no pixels ({width}x{height})")
            if width * height > limits.max_pixels:
                raise ImageTooLarge(
                    f"the image has {width}x{height} pixels; the limit is {limits.max_pixels}"
                )
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(image)
    except (InvalidImage, ImageTooLarge):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image is a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidImage(
            f"the payload is not an image in a supported format ({', '.join(FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"the image is corrupt or truncated: {exc}") from None
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA"} or image.mode.endswith("A"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
