"""Where images are decoded: on the CPU with Pillow, or JPEGs on the GPU.

On a GPU host the engine is nearly free and CPU decoding sets the throughput
of a camera stream. NVIDIA nvImageCodec (the `gpu` extra,
`nvidia-nvimgcodec-cu12`) decodes JPEGs on the GPU, with the hardware JPEG
decoder of A100/H100 class cards where there is one, and hands the pixels to
TensorFlow through DLPack, so they never come back to host memory. The model
resizes them on the GPU, so there is no point in a DCT-scaled decode there.

Anything nvImageCodec cannot decode (PNG and the other formats are left to
Pillow on purpose; a JPEG it refuses, a CMYK or grey one, a corrupt one)
takes the CPU path, which also produces the typed errors. The limits are
checked from the header before anything is decoded, on either path.

Not measured: no GPU was available when this was written; the selection and
fallback logic is tested with a stand-in for the nvImageCodec module.
"""

from __future__ import annotations

import importlib
import io
import logging
import threading
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from PIL import Image

from engines.images import FORMATS, Decoded, DecodeLimits, decode_for_model
from engines.resizer import Resizer

log = logging.getLogger(__name__)

DecodeDevice = Literal["auto", "cpu", "gpu"]
_JPEG_MAGIC = b"\xff\xd8\xff"


class ImageDecoder(Protocol):
    name: str

    def decode(self, data: bytes, limits: DecodeLimits, resizer: Resizer | None) -> Decoded:
        """One image; raises InvalidImage / ImageTooLarge like `decode_for_model`."""
        ...


class CpuDecoder:
    """libjpeg-turbo for JPEGs, Pillow for the rest, DCT-scaled (`decode_for_model`)."""

    name = "cpu"

    def decode(self, data: bytes, limits: DecodeLimits, resizer: Resizer | None) -> Decoded:
        return decode_for_model(data, limits, resizer)


class GpuDecodeUnavailable(RuntimeError):
    """`--decode-device gpu` asked for, and nvImageCodec cannot be used."""


class GpuJpegDecoder:
    """nvImageCodec batch decoding of JPEGs into GPU tensors; the rest on the CPU.

    nvImageCodec decoders are not documented as thread-safe, so each decode
    thread gets its own (they share the GPU's hardware decoder).
    """

    name = "gpu"

    def __init__(self, device_id: int = 0, codec: Any = None) -> None:
        """`codec`: the `nvidia.nvimgcodec` module (a stand-in in tests).

        Raises:
            GpuDecodeUnavailable: the module is missing or makes no decoder here.
        """
        try:
            self._nv = codec or importlib.import_module("nvidia.nvimgcodec")
            self._params = self._nv.DecodeParams(
                apply_exif_orientation=True, color_spec=self._nv.ColorSpec.RGB
            )
            self._device_id = device_id
            self._local = threading.local()
            self._decoder()  # fail here, at start-up, rather than on the first request
        except Exception as exc:
            raise GpuDecodeUnavailable(
                f"nvImageCodec cannot decode on GPU {device_id}: {exc}"
            ) from exc
        self._cpu = CpuDecoder()

    def _decoder(self) -> Any:
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            decoder = self._nv.Decoder(device_id=self._device_id)
            self._local.decoder = decoder
        return decoder

    def decode(self, data: bytes, limits: DecodeLimits, resizer: Resizer | None) -> Decoded:
        return self.decode_batch([data], limits, resizer)[0]

    def decode_batch(
        self, payloads: Sequence[bytes], limits: DecodeLimits, resizer: Resizer | None
    ) -> list[Decoded]:
        """Decode several images; JPEGs in one nvImageCodec call.

        Raises:
            InvalidImage / ImageTooLarge: from the CPU path, for the first payload
                that neither decoder can take (callers wanting one error per image
                call `decode` per image, as the pipeline does).
        """
        results: list[Decoded | None] = [None] * len(payloads)
        on_gpu = [i for i, data in enumerate(payloads) if _gpu_candidate(data, limits)]
        if on_gpu:
            try:
                images = self._decoder().decode([payloads[i] for i in on_gpu], params=self._params)
            except Exception as exc:  # a GPU failure must not fail the request
                log.warning("GPU decode failed; decoding on the CPU", extra={"error": str(exc)})
                images = [None] * len(on_gpu)
            for index, image in zip(on_gpu, images, strict=True):
                results[index] = self._to_decoded(image)
        return [
            found if found is not None else self._cpu.decode(data, limits, resizer)
            for found, data in zip(results, payloads, strict=True)
        ]

    def _to_decoded(self, image: Any) -> Decoded | None:
        """The decoded image as a TensorFlow GPU tensor, without a copy; None for
        anything that is not 8-bit RGB (left to the CPU path)."""
        if image is None:
            return None
        shape = tuple(image.shape)
        if len(shape) != 3 or shape[2] != 3 or str(getattr(image, "dtype", "uint8")) != "uint8":
            return None
        import tensorflow as tf

        tensor = tf.experimental.dlpack.from_dlpack(image.to_dlpack())
        return Decoded(pixels=tensor, width=int(shape[1]), height=int(shape[0]))


def _gpu_candidate(data: bytes, limits: DecodeLimits) -> bool:
    """A JPEG within the limits, judged from its header (no pixels decoded).

    Everything else goes to the CPU path, which refuses it with the right error.
    """
    if not data.startswith(_JPEG_MAGIC) or len(data) > limits.max_bytes:
        return False
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            return image.mode == "RGB" and 0 < width * height <= limits.max_pixels
    except Exception:
        return False


def select_decoder(requested: DecodeDevice, model_device: str, codec: Any = None) -> ImageDecoder:
    """The decoder for a worker whose models run on `model_device`.

    auto: the GPU decoder when models run on a GPU and nvImageCodec works there,
    else the CPU; gpu: the GPU decoder or an error; cpu: the CPU.

    Raises:
        GpuDecodeUnavailable: `requested` is gpu and it cannot be had.
    """
    on_gpu = model_device.upper().startswith("/GPU:")
    if requested == "cpu" or (requested == "auto" and not on_gpu):
        return CpuDecoder()
    if not on_gpu:
        raise GpuDecodeUnavailable(f"decode device gpu needs models on a GPU, not {model_device}")
    try:
        return GpuJpegDecoder(int(model_device.split(":")[1]), codec)
    except GpuDecodeUnavailable as exc:
        if requested == "gpu":
            raise
        log.info("JPEGs decode on the CPU", extra={"reason": str(exc)})
        return CpuDecoder()
