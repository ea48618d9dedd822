import io

import numpy as np
import pytest
from PIL import Image

from engines.errors import ImageTooLarge, InvalidImage
from engines.images import DecodeLimits, decode_for_model, decode_image
from engines.resizer import FixedShape, KeepAspectRatio, Resizer


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


# --- Decoding at the model's resolution -------------------------------------------------


def frame(size: tuple[int, int]) -> Image.Image:
    """A camera-sized frame: left half blue, right half red, a green square at the top left."""
    image = sample(size=size)
    image.paste((10, 200, 10), (0, 0, size[0] // 8, size[1] // 8))
    return image


@pytest.mark.parametrize(
    ("size", "resizer", "decoded"),
    [
        ((1920, 1080), FixedShape(300, 300), (960, 540)),  # 1/2: 1/4 would be 480x270 < 300
        ((3840, 2160), FixedShape(300, 300), (960, 540)),  # 1/4
        ((3840, 2160), FixedShape(240, 320), (480, 270)),  # 1/8
        ((640, 480), FixedShape(300, 300), (640, 480)),  # 1/2 would be 320x240 < 300
        ((1920, 1080), KeepAspectRatio(600, 1024), (1920, 1080)),  # needs 1024x576
        ((3840, 2160), KeepAspectRatio(600, 1024), (1920, 1080)),
    ],
)
def test_jpeg_decodes_at_the_smallest_dct_scale_covering_the_model_input(
    size: tuple[int, int], resizer: Resizer, decoded: tuple[int, int]
) -> None:
    data = encode(frame(size), "JPEG", quality=90)
    result = decode_for_model(data, resizer=resizer)
    assert (result.width, result.height) == size  # the client's size, for the boxes
    assert result.pixels.shape == (decoded[1], decoded[0], 3)
    need_w, need_h = resizer.target(*size)
    assert decoded[0] >= need_w and decoded[1] >= need_h
    # The same picture: the green corner and the two halves are where they were.
    full = decode_image(data)
    shrunk = np.asarray(Image.fromarray(full).resize(decoded, Image.Resampling.BOX), np.int16)
    assert np.abs(result.pixels.astype(np.int16) - shrunk).mean() < 6


def test_png_and_models_without_a_resizer_decode_at_full_resolution() -> None:
    png = encode(frame((1920, 1080)), "PNG")
    assert decode_for_model(png, resizer=FixedShape(300, 300)).pixels.shape == (1080, 1920, 3)
    jpeg = encode(frame((1920, 1080)), "JPEG")
    assert decode_for_model(jpeg, resizer=None).pixels.shape == (1080, 1920, 3)
    assert decode_image(jpeg).shape == (1080, 1920, 3)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotation_is_applied_to_scaled_decodes(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(frame((1920, 1080)), "JPEG", exif=exif.tobytes())
    full = decode_image(data)
    scaled = decode_for_model(data, resizer=FixedShape(300, 300))
    turned = orientation in (6, 8)
    assert (scaled.width, scaled.height) == ((1080, 1920) if turned else (1920, 1080))
    assert full.shape[:2] == (scaled.height, scaled.width)
    assert scaled.pixels.shape == ((960, 540, 3) if turned else (540, 960, 3))
    # Green (the stored top-left corner) is where the full-resolution decode has it.
    green = full[:, :, 1].astype(int) - full[:, :, 0] > 100
    rows, cols = np.nonzero(green)
    centre = (rows.mean() / full.shape[0], cols.mean() / full.shape[1])
    green_small = scaled.pixels[:, :, 1].astype(int) - scaled.pixels[:, :, 0] > 100
    rows, cols = np.nonzero(green_small)
    assert abs(rows.mean() / scaled.pixels.shape[0] - centre[0]) < 0.02
    assert abs(cols.mean() / scaled.pixels.shape[1] - centre[1]) < 0.02


def test_scaled_decode_keeps_the_limits() -> None:
    data = encode(frame((1920, 1080)), "JPEG")
    with pytest.raises(ImageTooLarge):
        decode_for_model(data, DecodeLimits(max_pixels=1920 * 1080 - 1), FixedShape(300, 300))
    with pytest.raises(InvalidImage):
        decode_for_model(data[:300], resizer=FixedShape(300, 300))


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 1), (3, 5), (641, 479), (960, 540)])
def test_pixels_are_what_numpy_makes_of_the_image_in_one_packing(
    size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.images import pixels

    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = np.asarray(image)
    with monkeypatch.context() as patched:
        # An RGB image never takes np.asarray's way (Image.tobytes' 64 KB loop).
        patched.setattr(Image.Image, "tobytes", lambda *a, **k: pytest.fail("tobytes called"))
        got = pixels(image)
    assert got.dtype == np.uint8 and got.shape == (size[1], size[0], 3)
    assert np.array_equal(got, expected)
    assert not got.flags.writeable  # as np.asarray's: the engine never writes into them
    grey = image.convert("L")
    assert np.array_equal(pixels(grey), np.asarray(grey))  # other modes: numpy's way


def _pillow_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.images

    monkeypatch.setattr(engines.images, "_turbo_decode", lambda *a: None)


@pytest.mark.parametrize(
    ("size", "resizer", "mode"),
    [
        ((1920, 1080), FixedShape(300, 300), "RGB"),  # 1/2
        ((3840, 2160), FixedShape(300, 300), "RGB"),  # 1/4
        ((1001, 333), FixedShape(60, 40), "RGB"),  # 1/8, odd sizes round up
        ((641, 479), None, "RGB"),  # full size
        ((200, 150), FixedShape(300, 300), "RGB"),  # smaller than the model's input
        ((1920, 1080), FixedShape(300, 300), "L"),  # grey becomes RGB
    ],
)
def test_jpegs_decode_by_libjpeg_turbo_to_pillows_own_pixels(
    size: tuple[int, int], resizer: Resizer | None, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encode(frame(size).convert(mode), "JPEG", quality=90)
    with monkeypatch.context() as patched:
        # The fast path leaves Pillow's decoder alone: the pixels are libjpeg-turbo's own.
        patched.setattr(Image.Image, "load", lambda *a: pytest.fail("Pillow decoded it"))
        fast = decode_for_model(data, resizer=resizer)
    _pillow_only(monkeypatch)
    slow = decode_for_model(data, resizer=resizer)
    assert (fast.width, fast.height) == (slow.width, slow.height) == size
    assert fast.pixels.shape == slow.pixels.shape and fast.pixels.dtype == np.uint8
    assert np.array_equal(fast.pixels, slow.pixels)
    assert not fast.pixels.flags.writeable


def test_jpegs_libjpeg_turbo_refuses_strictly_are_decoded_or_refused_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(frame((640, 480)), "JPEG", quality=90)
    # Stray bytes before the scan: libjpeg warns ("extraneous bytes before marker"),
    # strict libjpeg-turbo refuses, Pillow decodes; so must we.
    scan = data.index(b"\xff\xda")
    stray = data[:scan] + b"\x00\x17\x00" + data[scan:]
    cmyk = encode(frame((64, 48)).convert("CMYK"), "JPEG")  # no RGB from libjpeg-turbo
    fast = [decode_for_model(d, resizer=FixedShape(300, 300)).pixels for d in (stray, cmyk)]
    with pytest.raises(InvalidImage):
        decode_for_model(data[: len(data) // 2], resizer=FixedShape(300, 300))
    _pillow_only(monkeypatch)
    slow = [decode_for_model(d, resizer=FixedShape(300, 300)).pixels for d in (stray, cmyk)]
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
    assert fast[0].shape == (480, 640, 3)
