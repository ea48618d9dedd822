"""podman for the container tests: installed when missing, configured by
deploy/podman/containers.conf, and the images built the way a user builds them.

Only the base image is a local stand-in (deploy/podman/base-image.sh) and, for
the compose stack, the Kafka image (deploy/kafka-local/image/): no registry can
be reached where the suite runs. pip inside a build uses this machine's index
settings and CA bundle, mounted for the build only (`podman build -v ...:ro`),
so nothing of this machine ends up in an image.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.apt import AptError, apt_install

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
CONTAINERS_CONF = DEPLOY / "podman" / "containers.conf"
BASE_IMAGE_SCRIPT = DEPLOY / "podman" / "base-image.sh"
KAFKA_IMAGE_DIR = DEPLOY / "kafka-local" / "image"
BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
#: Debian packages `make test` installs for this tier (apt-get, as root or through sudo).
PACKAGES = ("podman", "buildah", "runc", "debootstrap")
#: Where the host's pip settings are mounted during a build: pip's site-wide
#: config folder (XDG), holding pip.conf and the CA bundle. Buildah leaves the
#: mount point in the layers as an empty folder; nothing of what was mounted.
BUILD_PIP_DIR = "/etc/xdg/pip"
#: pip settings carried from this machine into builds; paths are re-pointed at mounts.
PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "timeout", "retries", "proxy")


class PodmanError(RuntimeError):
    """podman, a build or a container did not do what the test needs."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def install_packages() -> None:
    """apt-get as root, else through sudo, like tests/demo's Chromium; a failure fails."""
    missing = [p for p in PACKAGES if shutil.which(p) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise PodmanError(
            f"{', '.join(missing)} missing and no apt-get to install them; install them, "
            "or leave this tier out: make test PYTEST_ARGS='-m \"not containers\"'"
        )
    try:
        apt_install(PACKAGES)
    except AptError as exc:
        raise PodmanError(str(exc)) from exc


def pip_settings() -> dict[str, str]:
    """The pip settings in force on this machine (`pip config list`: files and PIP_* env)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        name, eq, value = line.partition("=")
        if not eq:
            continue
        key = name.rsplit(".", 1)[-1]
        found[key] = value.strip().strip("'\"")
    return found


def pip_build_mounts(workdir: Path) -> list[str]:
    """`-v` options giving a build this machine's pip index and CA bundle, read-only.

    pip.conf carries the index settings; the CA bundle (`cert`, else
    SSL_CERT_FILE) is mounted and named in it, so pip trusts what it trusts here.
    """
    settings = pip_settings()
    conf = configparser.ConfigParser()
    conf["global"] = {k: settings[k] for k in PIP_KEYS if settings.get(k)}
    if "timeout" not in conf["global"] and settings.get("default-timeout"):
        conf["global"]["timeout"] = settings["default-timeout"]
    folder = workdir / "pip"
    folder.mkdir(parents=True, exist_ok=True)
    ca = settings.get("cert") or os.environ.get("SSL_CERT_FILE", "")
    if ca and Path(ca).is_file():
        shutil.copyfile(ca, folder / "ca.pem")
        conf["global"]["cert"] = f"{BUILD_PIP_DIR}/ca.pem"
    with (folder / "pip.conf").open("w") as f:
        conf.write(f)
    for path in (folder, *folder.iterdir()):  # pytest's folders are 0700
        path.chmod(0o755 if path.is_dir() else 0o644)
    return ["-v", f"{folder}:{BUILD_PIP_DIR}:ro"]


@dataclass
class Podman:
    """The podman CLI with the suite's containers.conf (CONTAINERS_CONF)."""

    env: dict[str, str] = field(
        default_factory=lambda: {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    )

    def run(
        self,
        *args: str,
        timeout_s: float = 120,
        check: bool = True,
        cwd: Path | None = None,
        program: Sequence[str] = ("podman",),
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                [*program, *args],
                env=self.env,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PodmanError(f"{' '.join([*program, *args])}: no end in {timeout_s}s") from exc
        if check and result.returncode != 0:
            raise PodmanError(
                f"{' '.join([*program, *args])} exited {result.returncode}:\n"
                f"{_tail(result.stdout)}\n{_tail(result.stderr)}"
            )
        return result

    def compose(self, *args: str, timeout_s: float = 300, check: bool = True) -> Any:
        """podman-compose (the PyPI package, in this virtualenv) from deploy/."""
        program = (str(Path(sys.executable).with_name("podman-compose")),)
        return self.run(*args, timeout_s=timeout_s, check=check, cwd=DEPLOY, program=program)

    def inspect(self, what: str, name: str) -> dict[str, Any]:
        return json.loads(self.run(what, "inspect", name).stdout)[0]

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def ensure_base_image(self) -> None:
        result = subprocess.run(
            ["bash", str(BASE_IMAGE_SCRIPT), BASE_IMAGE],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        if result.returncode != 0:
            raise PodmanError(f"{BASE_IMAGE_SCRIPT} failed:\n{_tail(result.stderr)}")

    def image_id(self, name: str) -> str | None:
        result = self.run("image", "inspect", "--format", "{{.Id}}", name, check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    def build(
        self,
        tag: str,
        context: Path,
        dockerfile: Path,
        workdir: Path,
        builder_stage: str | None = None,
        timeout_s: float = 3000,
    ) -> float:
        """`podman build --format docker` (OCI drops HEALTHCHECK); returns the seconds it took.

        The layers stay in podman's storage, so an unchanged build takes seconds.
        What a new build replaces is removed: the previous image of `tag` and, when
        `builder_stage` names the Dockerfile's build stage, the previous build stage,
        which is tagged `<tag>-<stage>` for that (else each change of the sources
        would leave gigabytes behind; the GPU build stage alone is 7 GB). The logs go
        to workdir/build-*.log, their tail into the error.
        """
        started = time.monotonic()
        targets = [(f"{tag}-{builder_stage}", ["--target", builder_stage])] if builder_stage else []
        targets.append((tag, []))
        replaced = [self.image_id(name) for name, _ in targets]
        for name, extra in targets:
            log = workdir / f"build-{name.rsplit('/', 1)[-1].replace(':', '-')}.log"
            args = [
                "build", "--format", "docker", "--layers", *pip_build_mounts(workdir), *extra,
                "-f", str(dockerfile), "-t", name, str(context),
            ]  # fmt: skip
            result = self.run(*args, timeout_s=timeout_s, check=False)
            log.write_text(result.stdout + result.stderr)
            if result.returncode != 0:
                raise PodmanError(
                    f"podman build of {name} failed (log {log}):\n{_tail(result.stderr)}"
                )
        seconds = time.monotonic() - started
        for (name, _), old in zip(targets, replaced, strict=True):
            if old and old != self.image_id(name):
                # With its untagged parents; kept if a container still uses it.
                self.run("rmi", old, check=False)
        return seconds

    def image_size(self, tag: str) -> int:
        return int(self.inspect("image", tag)["Size"])


def kafka_context(dest: Path, jars: Path) -> Path:
    """The build context of the Kafka stand-in: its files and the suite's broker jars."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(KAFKA_IMAGE_DIR, dest)
    shutil.copy2(DEPLOY / "kafka-local" / "log4j2.properties", dest / "log4j2.properties")
    (dest / "libs").mkdir()
    for jar in sorted(jars.glob("*.jar")):
        shutil.copy2(jar, dest / "libs" / jar.name)
    return dest
