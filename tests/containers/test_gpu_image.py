"""deploy/Dockerfile.gpu, built to the end. No GPU here, so it is not run as a
worker: the test checks what the build installed, from the image itself."""

from __future__ import annotations

import json

import pytest

from tests.containers.podman import Podman

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(3600)]

# What the `gpu` extra of pyproject.toml must have brought, and what it must not.
PROBE = """
import json
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
names = ["tensorflow", "tensorflow-cpu", "nvidia-cudnn-cu12", "nvidia-cublas-cu12",
         "nvidia-nvimgcodec-cu12", "nvidia-nvjpeg-cu12", "tfstream"]
print(json.dumps({n: version(n) for n in names}))
"""


def test_gpu_image_installs_gpu_tensorflow_and_nvimagecodec(podman: Podman, gpu_image: str) -> None:
    image = podman.inspect("image", gpu_image)
    config = image["Config"]
    assert config["Cmd"] == ["tfstream-consumer"]
    assert config["User"] == "10001:10001" and image["Healthcheck"]["Test"][0] == "CMD"
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in config["Env"]
    found = json.loads(podman.run("run", "--rm", gpu_image, "python", "-c", PROBE).stdout)
    assert found["tensorflow"] and found["tensorflow-cpu"] is None, found
    assert found["nvidia-cudnn-cu12"] and found["nvidia-cublas-cu12"], found  # [and-cuda]
    assert found["nvidia-nvimgcodec-cu12"] and found["nvidia-nvjpeg-cu12"], found  # [nvjpeg]
    # The code paths the GPU worker takes import cleanly on a machine without a GPU.
    code = (
        "import tensorflow as tf, nvidia.nvimgcodec, engines.decoders; "
        "print(tf.sysconfig.get_build_info()['is_cuda_build'])"
    )
    imported = podman.run("run", "--rm", gpu_image, "python", "-c", code, timeout_s=300)
    assert imported.stdout.strip().splitlines()[-1] == "True", imported.stdout + imported.stderr
