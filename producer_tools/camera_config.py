"""The cameras of `tfstream-cameras`: the YAML file, its credentials, masked URLs.

    cameras:
      - id: gate-1
        url: rtsp://admin@10.0.0.11/stream1
        password_env: GATE_PASSWORD      # or password_file: /run/secrets/gate
        model: shapes_tf2
        fps: 5

A password lives in the environment or a file, never in the YAML itself (a
password written in the URL is accepted but masked like the others). Every
URL that reaches a log line, a metric label, an error or the page goes through
`mask_url` first: a camera's credentials never leave the process.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engines.errors import InvalidCameraConfig

NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "srt", "udp", "tcp")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*)(?::[^/@\s]*)?@")


class CameraConfig(BaseModel):
    """One camera; changing any field restarts that camera alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/-]+$")
    """The Kafka key of every frame and the start of its correlation id."""
    url: str = Field(min_length=1)
    """rtsp(s)://, http(s):// (MJPEG, HLS), a video file, a device (/dev/video0, 0) or a folder."""
    model: str = Field(min_length=1)
    fps: float = Field(default=5.0, gt=0, le=120)
    """Frames sent per second: the newest decoded frame at each tick."""
    deadline_ms: float = Field(default=0, ge=0)
    """A frame's budget at the workers; 0: two frame intervals."""
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    max_width: int | None = Field(default=None, ge=16)
    """Frames wider than this are scaled down (aspect kept) before encoding."""
    transport: Literal["tcp", "udp"] = "tcp"
    """RTSP transport: TCP (default, no loss behind NAT and firewalls) or UDP."""
    loop: bool = False
    """Video files only: start again at the end instead of ending the camera."""
    decode: Literal["all", "keyframes"] = "all"
    """`keyframes`: decode key frames only (far cheaper when fps is at or under the
    stream's key-frame rate); `all`: every frame, the newest is sent."""
    hwaccel: Literal["auto", "off"] = "auto"
    """`auto`: decode on the GPU (NVDEC through FFmpeg) when one is usable, else on the CPU."""
    password_env: str | None = None
    """Environment variable holding the URL's password."""
    password_file: Path | None = None
    """File holding the URL's password (a mounted secret); trailing newline ignored."""

    @field_validator("url")
    @classmethod
    def _no_spaces(cls, value: str) -> str:
        return value.strip()

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def resolved_url(self) -> str:
        """The URL with its password filled in from the environment or file.

        Raises:
            InvalidCameraConfig: the variable is unset or the file unreadable.
        """
        password: str | None = None
        if self.password_env:
            password = os.environ.get(self.password_env)
            if password is None:
                raise InvalidCameraConfig(
                    f"camera {self.id}: environment variable {self.password_env} is not set"
                )
        elif self.password_file:
            try:
                password = self.password_file.read_text().rstrip("\r\n")
            except OSError as exc:
                raise InvalidCameraConfig(
                    f"camera {self.id}: cannot read password_file {self.password_file}: "
                    f"{exc.strerror}"
                ) from None
        if password is None:
            return self.url
        parts = urlsplit(self.url)
        if not parts.username:
            raise InvalidCameraConfig(
                f"camera {self.id}: a password is given but {self.masked_url} names no user"
            )
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{parts.username}:{quote(password, safe='')}@{host}{port}"
        return urlunsplit(parts._replace(netloc=netloc))


class CamerasFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cameras: list[CameraConfig]

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for camera in cameras:
            if camera.id in seen:
                raise ValueError(f"camera id {camera.id!r} appears twice")
            seen.add(camera.id)
        return cameras


def mask_url(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***.

    Applied to URLs and to error messages alike: FFmpeg's errors quote the URL
    they failed on, credentials included.
    """
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def mask_secrets(text: str, secrets: list[str]) -> str:
    """`mask_url`, plus any literal password (also URL-quoted) that appears elsewhere."""
    out = mask_url(text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return out


def load_cameras(path: Path) -> dict[str, CameraConfig]:
    """The cameras of the YAML file, by id.

    Raises:
        InvalidCameraConfig: unreadable file, not YAML, or a camera that is not valid
            (the message names the camera and field, never a password).
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidCameraConfig(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidCameraConfig(f"{path} is not YAML: {mask_url(str(exc))}") from None
    try:
        parsed = CamerasFile.model_validate(raw or {"cameras": []})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidCameraConfig(f"{path}: {mask_url(problems)}") from None
    return {camera.id: camera for camera in parsed.cameras}
