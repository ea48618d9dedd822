"""Fixtures of the container tier (marker `containers`): podman, installed and
configured on first use, and the images, built once per session.

podman keeps its images and layers in its storage (/var/lib/containers for
root) and the pip cache of the builds in buildah's cache-mount folder, so a
second run on one machine reuses them: the stand-in base image is made once,
and a build whose sources did not change takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from deploy.local.kafka import ensure_jars, kafka_version
from tests.containers.podman import (
    DEPLOY,
    KAFKA_IMAGE_DIR,
    Podman,
    install_packages,
    kafka_context,
)

CPU_IMAGE = "localhost/tfstream:latest"  # `tfstream:latest` of deploy/compose.yaml
GPU_IMAGE = "localhost/tfstream-gpu:latest"

#: What this session measured, printed at its end (build seconds, sizes, load figures).
FIGURES: dict[str, Any] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("container figures")
        for key, value in FIGURES.items():
            terminalreporter.write_line(f"{key}: {value}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout_s: float = 5.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except (OSError, ValueError):
        return None


def wait_http(url: str, timeout_s: float, what: str, logs: Any = None) -> None:
    """Until `url` answers 200; on timeout, fail with `logs()` (container logs) attached."""
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = http_status(url)
        if status == 200:
            return
        time.sleep(1)
    tail = logs() if logs else ""
    pytest.fail(f"{what}: {url} not 200 after {timeout_s}s (last {status})\n{tail}")


@pytest.fixture(scope="session")
def podman() -> Podman:
    """podman with deploy/podman/containers.conf, its packages installed if missing.

    CONTAINERS_CONF is set for the whole session, so podman-compose and the
    HEALTHCHECK commands it runs use the same configuration.
    """
    install_packages()
    tool = Podman()
    os.environ["CONTAINERS_CONF"] = tool.env["CONTAINERS_CONF"]
    info = json.loads(tool.run("info", "--format", "json").stdout)
    assert info["host"]["ociRuntime"]["name"] == "runc", info["host"]["ociRuntime"]
    return tool


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build logs and the pip.conf mounted into builds."""
    return tmp_path_factory.mktemp("container-builds")


@pytest.fixture(scope="session")
def base_image(podman: Podman) -> None:
    """The stand-in python:3.11-slim-bookworm (deploy/podman/base-image.sh), made once."""
    started = time.monotonic()
    existed = podman.image_exists("docker.io/library/python:3.11-slim-bookworm")
    podman.ensure_base_image()
    if not existed:
        FIGURES["base image made (s)"] = round(time.monotonic() - started, 1)


def _build(
    podman: Podman,
    tag: str,
    dockerfile: Path,
    build_dir: Path,
    context: Path,
    builder_stage: str | None = None,
) -> str:
    seconds = podman.build(tag, context, dockerfile, build_dir, builder_stage)
    size = podman.image_size(tag)
    FIGURES[f"{tag} build (s)"] = round(seconds, 1)
    FIGURES[f"{tag} size (MB)"] = round(size / 1e6)
    return tag


@pytest.fixture(scope="session")
def cpu_image(podman: Podman, base_image: None, build_dir: Path) -> str:
    """deploy/Dockerfile, built from the repository root as docs/deploy.md says."""
    return _build(podman, CPU_IMAGE, DEPLOY / "Dockerfile", build_dir, DEPLOY.parent, "builder")


@pytest.fixture(scope="session")
def gpu_image(podman: Podman, base_image: None, build_dir: Path) -> str:
    return _build(podman, GPU_IMAGE, DEPLOY / "Dockerfile.gpu", build_dir, DEPLOY.parent, "builder")


@pytest.fixture(scope="session")
def kafka_image(podman: Podman, base_image: None, build_dir: Path) -> str:
    """The Kafka stand-in, tagged as deploy/compose.yaml's apache/kafka image."""
    tag = f"docker.io/apache/kafka:{kafka_version()}"
    context = kafka_context(build_dir / "kafka-context", ensure_jars())
    return _build(podman, tag, KAFKA_IMAGE_DIR / "Dockerfile", build_dir, context)


@pytest.fixture(scope="session")
def readable_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated models, readable by the image's user (pytest's folders are 0700)."""
    root = tmp_path_factory.mktemp("container-models")
    for name in ("shapes_tf2", "shapes_tf1"):
        shutil.copytree(model_repository / name, root / name)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root
