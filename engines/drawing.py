"""The picture `predict_image` answers: boxes and "label NN%" drawn on the image.

Everything stays in memory: the old code wrote to one fixed file path shared
by all requests, so concurrent calls returned each other's images.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engines.boxes import Box

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
]


def draw_boxes(image: np.ndarray, boxes: Sequence[Box], quality: int = 90) -> bytes:
    """JPEG bytes of uint8 [H, W, 3] `image` with `boxes` (wire format) drawn on it."""
    canvas = Image.fromarray(image, mode="RGB")
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(canvas.size) / 200))
    font = ImageFont.load_default(size=max(12, round(min(canvas.size) / 30)))
    for box in boxes:
        c = box["coordinates"]
        colour = _PALETTE[int(box["ObjectClassId"]) % len(_PALETTE)]
        draw.rectangle((c["left"], c["top"], c["right"], c["bottom"]), outline=colour, width=line)
        text = f"{box['ObjectClassName']} {round(float(box['confidence']))}%"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = c["left"]
        y = c["top"] - (bottom - top) - 2 * line
        if y < 0:  # no room above the box: write inside it
            y = c["top"]
        draw.rectangle(
            (x, y, x + right - left + 2 * line, y + bottom - top + 2 * line), fill=colour
        )
        draw.text((x + line - left, y + line - top), text, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=quality)
    return out.getvalue()
