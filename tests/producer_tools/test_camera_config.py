"""The cameras file, its credentials and the encoder that fits frames to the limit."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest

from producer_tools.camera_config import (
    CameraConfig,
    CameraConfigError,
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
    with pytest.raises(CameraConfigError, match="CAM_PW is not set"):
        by_env.resolved_url()
    no_user = CameraConfig(id="c", url="rtsp://h/x", model="m", password_file=secret)
    with pytest.raises(CameraConfigError, match="names no user"):
        no_user.resolved_url()


def test_a_bad_file_is_refused_with_the_camera_and_field_and_no_password(tmp_path: Path) -> None:
    path = tmp_path / "cameras.yaml"
    path.write_text(
        "cameras:\n"
        "  - {id: a, url: 'rtsp://u:topsecret@h/x', model: m, fps: 0}\n"
        "  - {id: a, url: 'rtsp://h/y', model: m}\n"
    )
    with pytest.raises(CameraConfigError) as caught:
        load_cameras(path)
    assert caught.value.code == "invalid_camera_config"
    assert "cameras.0.fps" in caught.value.message and "topsecret" not in caught.value.message
    path.write_text(
        "cameras:\n  - {id: a, url: 'rtsp://h/x', model: m}\n  - {id: a, url: u, model: m}\n"
    )
    with pytest.raises(CameraConfigError, match="appears twice"):
        load_cameras(path)
    path.write_text("cameras:\n  - {id: a, url: 'rtsp://h/x', model: m, colour: red}\n")
    with pytest.raises(CameraConfigError, match="colour"):
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
