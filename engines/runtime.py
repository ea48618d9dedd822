"""TensorFlow process set-up: which device models run on, and GPU memory growth.

One consumer process per GPU is the unit of scale, so a process picks one
device for all its models. Memory growth is switched on before anything
touches the GPU: without it TensorFlow takes the whole card at start-up.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)
_lock = threading.Lock()
_configured: str | None = None


def configure(device: str | None = None) -> str:
    """Set TensorFlow up once per process and return the device models run on.

    `device` is a TensorFlow device name ("GPU:1", "/CPU:0", "cpu"); None picks
    the first visible GPU, else the CPU. `CUDA_VISIBLE_DEVICES` still decides
    which GPUs are visible at all. Later calls return the first answer.
    """
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised by someone else: keep going
                log.warning("could not enable memory growth on %s", gpu.name)
        _configured = _device_name(device, len(gpus))
        log.info("tensorflow %s; models run on %s", tf.__version__, _configured)
        return _configured


def _device_name(device: str | None, gpu_count: int) -> str:
    if device is None or device.strip().lower() in {"", "auto"}:
        return "/GPU:0" if gpu_count else "/CPU:0"
    name = device.strip().upper().lstrip("/")
    if name.isdigit():
        name = f"GPU:{name}"
    if ":" not in name:
        name = f"{name}:0"
    kind, _, index = name.partition(":")
    if kind == "GPU" and int(index or 0) >= gpu_count:
        raise ValueError(f"device {device!r} requested but only {gpu_count} GPU(s) are visible")
    return f"/{kind}:{index}"
