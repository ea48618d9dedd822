"""Choosing the decoder, and the GPU decoder's fallback to the CPU.

No GPU here: nvImageCodec is replaced by a stand-in with its Python API that
decodes with Pillow and hands TensorFlow the pixels through DLPack, as the real
one does from GPU memory. What the stand-in cannot show (speed, the hardware
decoder, GPU memory) is unmeasured.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from engines.decoders import (
    CpuDecoder,
    GpuDecodeUnavailable,
    GpuJpegDecoder,
    select_decoder,
)
from engines.detector import load_detector
from engines.errors import ImageTooLarge, InvalidImage
from engines.images import DecodeLimits, decode_image
from engines.repository import ModelRepository
from engines.resizer import FixedShape


class FakeImage:
    def __init__(self, pixels: np.ndarray) -> None:
        self.shape = pixels.shape
        self.dtype = "uint8"
        self._tensor = tf.constant(pixels)

    def to_dlpack(self) -> Any:
        return tf.experimental.dlpack.to_dlpack(self._tensor)


class FakeNvImgCodec:
    """The part of `nvidia.nvimgcodec` we use; refuses payloads listed in `refuse`."""

    def __init__(self, refuse: tuple[bytes, ...] = (), fail: bool = False) -> None:
        self.calls: list[int] = []
        self.devices: list[int] = []
        self.refuse = refuse
        self.fail = fail
        self.ColorSpec = SimpleNamespace(RGB="rgb")
        codec = self

        class Decoder:
            def __init__(self, device_id: int = 0) -> None:
                codec.devices.append(device_id)

            def decode(self, payloads: list[bytes], params: Any) -> list[FakeImage | None]:
                assert params.apply_exif_orientation and params.color_spec == "rgb"
                codec.calls.append(len(payloads))
                if codec.fail:
                    raise RuntimeError("CUDA error: out of memory")
                return [None if p in codec.refuse else FakeImage(decode_image(p)) for p in payloads]

        self.Decoder = Decoder

    @staticmethod
    def DecodeParams(**kwargs: Any) -> SimpleNamespace:
        return SimpleNamespace(**kwargs)


def encode(size: tuple[int, int], fmt: str, **kwargs: Any) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, size[0] // 2, size[1]))
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


LIMITS = DecodeLimits()


def test_cpu_models_decode_on_the_cpu_without_touching_the_codec() -> None:
    codec = FakeNvImgCodec()
    assert isinstance(select_decoder("auto", "/CPU:0", codec), CpuDecoder)
    assert isinstance(select_decoder("auto", "/SIMULATED:0", codec), CpuDecoder)
    assert isinstance(select_decoder("cpu", "/GPU:0", codec), CpuDecoder)
    assert codec.devices == []


def test_gpu_models_decode_on_their_gpu_when_the_codec_works() -> None:
    codec = FakeNvImgCodec()
    decoder = select_decoder("auto", "/GPU:1", codec)
    assert isinstance(decoder, GpuJpegDecoder) and codec.devices == [1]


def test_without_nvimgcodec_auto_falls_back_and_gpu_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # import fails
    assert isinstance(select_decoder("auto", "/GPU:0"), CpuDecoder)
    with pytest.raises(GpuDecodeUnavailable, match="nvImageCodec"):
        select_decoder("gpu", "/GPU:0")
    with pytest.raises(GpuDecodeUnavailable, match="GPU"):
        select_decoder("gpu", "/CPU:0", FakeNvImgCodec())


def test_jpegs_go_to_the_gpu_in_one_call_and_the_rest_to_the_cpu() -> None:
    refused = encode((64, 48), "JPEG", quality=50)
    codec = FakeNvImgCodec(refuse=(refused,))
    decoder = GpuJpegDecoder(0, codec)
    jpeg = encode((640, 480), "JPEG")
    png = encode((640, 480), "PNG")
    grey = io.BytesIO()
    Image.new("L", (32, 32), 90).save(grey, format="JPEG")
    results = decoder.decode_batch([jpeg, png, refused, grey.getvalue(), jpeg], LIMITS, None)
    assert codec.calls == [3]  # the two RGB JPEGs and the one it refuses; not PNG, not grey
    assert isinstance(results[0].pixels, tf.Tensor) and isinstance(results[4].pixels, tf.Tensor)
    for index in (1, 2, 3):
        assert isinstance(results[index].pixels, np.ndarray)  # the CPU path
    assert (results[0].width, results[0].height) == (640, 480)
    np.testing.assert_array_equal(results[0].pixels.numpy(), decode_image(jpeg))
    assert results[3].pixels.shape == (32, 32, 3)


def test_the_cpu_fallback_keeps_dct_scaling_and_typed_errors() -> None:
    decoder = GpuJpegDecoder(0, FakeNvImgCodec(fail=True))
    big = encode((1920, 1080), "JPEG")
    decoded = decoder.decode(big, LIMITS, FixedShape(300, 300))  # the GPU call raised
    assert decoded.pixels.shape == (540, 960, 3) and (decoded.width, decoded.height) == (1920, 1080)
    with pytest.raises(InvalidImage):
        decoder.decode(big[:500], LIMITS, None)
    codec = FakeNvImgCodec()
    with pytest.raises(ImageTooLarge):
        GpuJpegDecoder(0, codec).decode(big, DecodeLimits(max_pixels=1000), None)
    assert codec.calls == []  # refused from the header, never sent to the GPU


def test_a_codec_that_cannot_start_is_unavailable() -> None:
    codec = FakeNvImgCodec()

    def broken(device_id: int = 0) -> None:
        raise RuntimeError("no CUDA device")

    codec.Decoder = broken  # type: ignore[assignment]
    with pytest.raises(GpuDecodeUnavailable, match="no CUDA device"):
        GpuJpegDecoder(0, codec)


def test_tensors_from_dlpack_detect_like_arrays(model_repository: Path) -> None:
    detector = load_detector(ModelRepository(model_repository).spec("shapes_tf1"))
    from engines.modelgen.images import draw_shapes_image

    image, truth = draw_shapes_image(np.random.default_rng(3), 320, 240, empty_probability=0)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=92)
    on_gpu = GpuJpegDecoder(0, FakeNvImgCodec()).decode_batch([out.getvalue()] * 2, LIMITS, None)
    assert all(isinstance(d.pixels, tf.Tensor) for d in on_gpu)
    tensors = detector.detect([d.pixels for d in on_gpu])
    arrays = detector.detect([decode_image(out.getvalue())] * 2)
    assert tensors == arrays and len(arrays[0]) == len(truth) > 0
