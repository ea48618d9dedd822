"""The cameras file, its credentials and the encoder that fits frames to the limit."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest

from engines.errors import InvalidCameraConfig
from producer_tools.camera_config import (
    CameraConfig,
    load_cameras,
    mask_secrets,
    mask_url,
)
from producer_tools.camera_encode import FrameTooLarge, encode
from producer_tools.camera_reader import Decoded


def test_mask_url_hides_every_password_and_keeps_the_rest() -> None:
    assert mask_url("rtsp://admin:pa:ss@10.0.0.1:554/s1") == "rtsp://admin:***@10.0.0.1:554/s1"
    assert mask_url("rtsp://10.0.0.1/s1") == "rtsp://10.0.0.1/s1"
    text = "failed 'rtsps://u:x@h/a' then http://v:y%40z@h2/b"
    assert mask_url(text) == "failed 'rtsps://u:***@h/a' then http://v:***@h2/b"
    assert mask_secrets("the password hunter2 or hunter%232", ["hunter2", "hunter#2"]) == (
        "the password *** or ***"
    )


def test_the_password_comes_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAM_PW", "p@ss/word")
    by_env = CameraConfig(id="a", url="rtsp://admin@h:8554/x", model="m", password_env="CAM_PW")
    assert by_env.resolved_url() == "rtsp://admin:p%40ss%2Fword@h:8554/x"
    assert by_env.masked_url == "rtsp://admin:***@h:8554/x"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    by_file = CameraConfig(id="b", url="rtsp://u@h/x", model="m", password_file=secret)
    assert by_file.resolved_url() == "rtsp://u:from-file@h/x"
    monkeypatch.delenv("CAM_PW")
    with pytest.raises(InvalidCameraConfig, match="CAM_PW is not set"):
        by_env.resolved_url()
    no_user = CameraConfig(id="c", url="rtsp://h/x", model="m", password_file=secret)
    with pytest.raises(InvalidCameraConfig, match="names no user"):
        no_user.resolved_url()


def test_a_bad_file_is_refused_with_the_camera_and_field_and_no_password(tmp_path: Path) -> None:
    path = tmp_path / "cameras.yaml"
    path.write_text(
        "cameras:\n"
        "  - {id: a, url: 'rtsp://u:topsecret@h/x', model: m, fps: 0}\n"
        "  - {id: a, url: 'rtsp://h/y', model: m}\n"
    )
    with pytest.raises(InvalidCameraConfig) as caught:
        load_cameras(path)
    assert caught.value.code == "invalid_camera_config"
    assert "cameras.0.fps" in caught.value.message and "topsecret" not in caught.value.message
    path.write_text(
        "cameras:\n  - {id: a, url: 'rtsp://h/x', model: m}\n  - {id: a, url: u, model: m}\n"
    )
    with pytest.raises(InvalidCameraConfig, match="appears twice"):
        load_cameras(path)
    path.write_text("cameras:\n  - {id: a, url: 'rtsp://h/x', model: m, colour: red}\n")
    with pytest.raises(InvalidCameraConfig, match="colour"):
        load_cameras(path)
    path.write_text("cameras:\n  - {id: a, url: 'rtsp://h/x', model: m, max_width: 640}\n")
    assert load_cameras(path)["a"].max_width == 640


def _noisy_frame(width: int, height: int) -> Decoded:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(pixels, format="bgr24")
    now = time.monotonic()
    return Decoded(seq=1, captured=now, captured_wall=time.time(), decode_s=0.0, frame=frame)


def test_frames_over_the_limit_are_re_encoded_or_scaled_to_fit() -> None:
    frame = _noisy_frame(640, 480)  # noise: the worst case for JPEG (~400 kB at q90)
    plain = encode(frame, 90, None, 10_000_000)
    assert (plain.width, plain.height, plain.shrunk) == (640, 480, False)
    scaled = encode(frame, 90, 320, 10_000_000)
    assert (scaled.width, scaled.height, scaled.shrunk) == (320, 240, False)
    fitted = encode(frame, 90, None, 60_000)
    assert fitted.shrunk and len(fitted.jpeg) <= 60_000 and fitted.width < 640
    with pytest.raises(FrameTooLarge) as caught:
        encode(frame, 90, None, 500)
    assert caught.value.code == "image_too_large"


class _Watched:
    """A decoded frame that records the conversions the encoder asks of it."""

    def __init__(self, frame: av.VideoFrame) -> None:
        self._frame = frame
        self.conversions: list[str] = []

    def __getattr__(self, name: str) -> object:
        if name in ("reformat", "to_ndarray", "to_image", "to_rgb"):
            self.conversions.append(name)
        return getattr(self._frame, name)


def _scene(width: int, height: int) -> np.ndarray:
    """Smooth gradients and saturated blocks: colour and contrast errors show, noise does not."""
    y, x = np.mgrid[0:height, 0:width]
    bgr = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    bgr = bgr.astype(np.uint8)
    bgr[height // 4 : height // 2, width // 8 : width // 3] = (30, 30, 220)
    bgr[height // 2 : 3 * height // 4, width // 2 : 3 * width // 4] = (40, 200, 40)
    bgr[: height // 8] = 0
    bgr[-height // 8 :] = 255
    return bgr


def _quant_tables(jpeg: bytes) -> list[bytes]:
    """The DQT segments: what a JPEG's quality setting becomes."""
    tables, at = [], 2
    while at < len(jpeg) and jpeg[at] == 0xFF and jpeg[at + 1] != 0xDA:
        length = int.from_bytes(jpeg[at + 2 : at + 4], "big")
        if jpeg[at + 1] == 0xDB:
            tables.append(jpeg[at + 4 : at + 2 + length])
        at += 2 + length
    return tables


@pytest.mark.parametrize(
    ("pix_fmt", "color_range", "colorspace", "conversions"),
    [
        ("yuvj420p", "JPEG", "ITU601", []),  # the test server's H.264, most IP cameras'
        ("yuv420p", "JPEG", "ITU601", []),
        ("yuv422p", "JPEG", "ITU601", []),
        ("yuv420p", "MPEG", "ITU601", ["reformat"]),  # limited range: one pass expands it
        # Another matrix: through BGR, as before (swscale's YUV matrix conversion costs more).
        ("yuv420p", "MPEG", "ITU709", ["to_ndarray"]),
        ("bgr24", "JPEG", "ITU601", ["to_ndarray"]),
    ],
)
def test_video_frames_are_encoded_from_their_yuv_planes_showing_the_same_picture(
    pix_fmt: str, color_range: str, colorspace: str, conversions: list[str]
) -> None:
    import cv2

    source = av.VideoFrame.from_ndarray(_scene(320, 240), format="bgr24")
    if pix_fmt != "bgr24":
        source = source.reformat(
            format=pix_fmt, dst_colorspace=colorspace, dst_color_range=color_range
        )
    shown = source.to_ndarray(format="bgr24")  # the picture the frame means
    watched = _Watched(source)
    decoded = Decoded(seq=1, captured=0.0, captured_wall=0.0, decode_s=0.0, frame=watched)
    encoded = encode(decoded, 90, None, 10_000_000)
    # BT.601 YUV: no round trip through BGR, the planes as they are or one range pass.
    assert watched.conversions == conversions
    assert (encoded.width, encoded.height, encoded.shrunk) == (320, 240, False)
    pixels = cv2.imdecode(np.frombuffer(encoded.jpeg, np.uint8), cv2.IMREAD_COLOR)
    error = np.abs(pixels.astype(np.int16) - shown.astype(np.int16))
    assert error.mean() < 2.5 and np.percentile(error, 99) < 24, (error.mean(), error.max())
    # Scaled to max_width in the same pass.
    watched.conversions.clear()
    half = encode(decoded, 90, 160, 10_000_000)
    assert (half.width, half.height) == (160, 120) and len(watched.conversions) == 1
    small = cv2.imdecode(np.frombuffer(half.jpeg, np.uint8), cv2.IMREAD_COLOR)
    expected = cv2.resize(shown, (160, 120), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(np.int16) - expected.astype(np.int16)).mean() < 4
    # The camera's jpeg_quality means what it meant with OpenCV (libjpeg's tables).
    for quality in (90, 40):
        ours = encode(decoded, quality, None, 10_000_000).jpeg
        _, theirs = cv2.imencode(".jpg", shown, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        assert _quant_tables(ours) == _quant_tables(theirs.tobytes())


def test_an_image_files_frame_is_decoded_once_however_many_sizes_are_tried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An image folder's file over the limit is re-encoded at lower qualities, then
    scaled down step by step: each step starts from the pixels decoded once."""
    import cv2

    noise = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", noise, [int(cv2.IMWRITE_JPEG_QUALITY), 95])[1].tobytes()
    decoded = Decoded(seq=1, captured=0.0, captured_wall=0.0, decode_s=0.0, jpeg=jpeg)
    calls: list[int] = []
    imdecode = cv2.imdecode

    def counted(*args: object) -> object:
        calls.append(1)
        return imdecode(*args)

    monkeypatch.setattr(cv2, "imdecode", counted)
    fitted = encode(decoded, 90, None, 12_000)
    # Four qualities and at least two sizes (640 -> 448 -> 313) were tried.
    assert fitted.shrunk and len(fitted.jpeg) <= 12_000 and fitted.width <= 313
    assert len(calls) == 1
