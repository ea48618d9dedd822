"""The CPU image (deploy/Dockerfile), built as a user builds it and run as
docs/deploy.md says: the bridge, embedded, over a model repository mounted
read-only; its HEALTHCHECK, its user and its stop on SIGTERM."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.containers.conftest import FIGURES, wait_http
from tests.containers.podman import BUILD_PIP_DIR, Podman
from tests.support.models import match_truth

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(3600)]

UID = 10001
#: deploy/compose.yaml's stop_grace_period of the bridge.
GRACE_S = 40


def test_image_keeps_its_healthcheck_user_and_no_build_secrets(
    podman: Podman, cpu_image: str
) -> None:
    image = podman.inspect("image", cpu_image)
    config = image["Config"]
    assert config["User"] == f"{UID}:{UID}"
    # Kept by --format docker (an OCI image has no HEALTHCHECK).
    assert image["Healthcheck"]["Test"] == ["CMD", "python", "/opt/tfstream/healthcheck.py"]
    assert config["Cmd"] == ["tfstream-bridge"]
    assert "TFSTREAM_REPOSITORY=/models" in config["Env"]
    # The host's pip settings and CA bundle were mounted for the build only: at most
    # buildah's empty mount point is left; no pip cache, no sources.
    leftovers = podman.run(
        "run", "--rm", "--user", "0", cpu_image, "python", "-c",
        "import os, sys; d, *paths = sys.argv[1:]; "
        "print(os.listdir(d) if os.path.isdir(d) else [], [p for p in paths if os.path.exists(p)])",
        BUILD_PIP_DIR, "/etc/pip.conf", "/root/.cache/pip", "/src",
    )  # fmt: skip
    assert leftovers.stdout.strip() == "[] []"


@pytest.fixture(scope="module")
def bridge(podman: Podman, cpu_image: str, readable_repository: Path) -> Iterator[tuple[str, str]]:
    """`podman run -d -p ... -v models:/models:ro tfstream:latest`: (container, URL)."""
    name = f"tfstream-test-bridge-{os.getpid()}"
    podman.run("rm", "-f", name, check=False)
    podman.run(
        "run", "-d", "--name", name, "-p", "127.0.0.1::4343",
        "-v", f"{readable_repository}:/models:ro", cpu_image,
    )  # fmt: skip
    try:
        port = podman.run("port", name, "4343").stdout.strip().rsplit(":", 1)[-1]
        url = f"http://127.0.0.1:{port}"
        wait_http(
            f"{url}/health/ready", 300, "embedded bridge in the image",
            lambda: podman.run("logs", name, check=False).stderr[-4000:],
        )  # fmt: skip
        yield name, url
    finally:
        podman.run("rm", "-f", "-t", "0", name, check=False)


def test_embedded_bridge_predicts(
    bridge: tuple[str, str], shapes_images: tuple[Path, dict[str, Any]]
) -> None:
    _, url = bridge
    folder, truth = shapes_images
    names = [n for n in sorted(truth) if n.endswith(".png") and truth[n]][:3]
    assert httpx.get(f"{url}/models", timeout=30).json()["data"]["models"] == [
        "shapes_tf1",
        "shapes_tf2",
    ]
    for name in names:
        files = {"input_data": (name, (folder / name).read_bytes(), "image/png")}
        body = httpx.post(f"{url}/models/shapes_tf2/predict", files=files, timeout=60).json()
        assert body["success"] is True, body
        assert match_truth(body["data"]["bounding-boxes"], truth[name]) == [], name


def test_runs_as_the_image_user_on_a_read_only_repository(
    podman: Podman, bridge: tuple[str, str]
) -> None:
    name, _ = bridge
    status = podman.run("exec", name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(UID)] * 4
    write = podman.run("exec", name, "touch", "/models/shapes_tf2/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_healthcheck_runs_and_reports(podman: Podman, bridge: tuple[str, str]) -> None:
    """No systemd here, so podman runs no health timer: run the HEALTHCHECK explicitly."""
    name, _ = bridge
    result = podman.run("healthcheck", "run", name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    state = podman.inspect("container", name)["State"]
    health = state.get("Health") or state.get("Healthcheck")
    assert health["Status"] == "healthy"
    assert "healthy http://127.0.0.1:4343/health/live: 200" in health["Log"][-1]["Output"]
    # The same check, pointed at a port nothing listens on, says unhealthy.
    env = "TFSTREAM_HEALTH_URL=http://127.0.0.1:9/health/live"
    wrong = podman.run(
        "exec", "-e", env, name, "python", "/opt/tfstream/healthcheck.py", check=False
    )
    assert wrong.returncode == 1 and wrong.stdout.startswith("unhealthy"), wrong.stdout


def test_sigterm_stops_within_the_grace_period(podman: Podman, bridge: tuple[str, str]) -> None:
    """Last in this module: it stops the container the other tests share."""
    name, _ = bridge
    started = time.monotonic()
    podman.run("stop", "-t", str(GRACE_S), name, timeout_s=GRACE_S + 30)
    elapsed = time.monotonic() - started
    state = podman.inspect("container", name)["State"]
    FIGURES["embedded bridge stop on SIGTERM (s)"] = round(elapsed, 1)
    assert state["ExitCode"] == 0, state  # 137 would be podman's SIGKILL after the grace
    assert elapsed < GRACE_S / 2, elapsed
