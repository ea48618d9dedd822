import io

import numpy as np
import pytest
from PIL import Image

from engines.errors import ImageTooLarge, InvalidImage
from engines.images import DecodeLimits, decode_image


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def sample(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    rgb = Image.new("RGB", size, (200, 10, 10))
    rgb.paste((10, 10, 200), (0, 0, size[0] // 2, size[1]))
    return rgb.convert(mode)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP", "GIF"])
def test_supported_formats_decode_to_rgb_uint8(fmt: str) -> None:
    pixels = decode_image(encode(sample(), fmt))
    assert pixels.shape == (30, 40, 3)
    assert pixels.dtype == np.uint8
    left, right = pixels[15, 5], pixels[15, 35]
    assert left[2] > 150 and left[0] < 60  # blue half
    assert right[0] > 150 and right[2] < 60  # red half


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_other_colour_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    pixels = decode_image(encode(sample(mode), fmt))
    assert pixels.shape == (30, 40, 3)


def test_transparency_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    pixels = decode_image(encode(image, "PNG"))
    assert (pixels == 255).all()


def test_exif_orientation_is_applied() -> None:
    image = sample(size=(40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    pixels = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert pixels.shape == (40, 30, 3)


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixels = decode_image(data)
    assert pixels[5, 5, 0] > 200 and pixels[5, 5, 2] < 50


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"hello, not an image at all", "not an image"),
        (encode(sample(), "JPEG")[:200], "corrupt or truncated"),
        (encode(sample(), "TIFF"), "not an image in a supported format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not an image"),
    ],
)
def test_bad_payloads_are_invalid_image(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidImage) as info:
        decode_image(data)
    assert info.value.code == "invalid_image"
    assert fragment in info.value.message


def test_byte_limit() -> None:
    data = encode(sample(), "PNG")
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
    assert info.value.code == "image_too_large"
    assert decode_image(data, DecodeLimits(max_bytes=len(data))).shape == (30, 40, 3)


def test_pixel_limit_is_checked_before_decoding() -> None:
    # A 12000 x 12000 PNG of one colour is ~140 kB but 432 MB once decoded to RGB.
    bomb = encode(Image.new("L", (12000, 12000)), "PNG", optimize=True)
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageTooLarge) as info:
        decode_image(bomb)
    assert "12000x12000" in info.value.message


def test_pillow_bomb_guard_is_reported_as_image_too_large() -> None:
    bomb = encode(Image.new("1", (20000, 20000)), "PNG", optimize=True)
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        decode_image(bomb, DecodeLimits(max_pixels=10**12))


def test_pixel_limit_is_configurable() -> None:
    data = encode(sample(), "PNG")
    with pytest.raises(ImageTooLarge):
        decode_image(data, DecodeLimits(max_pixels=40 * 30 - 1))
