"""Debian packages the tests need, installed when missing (root, else `sudo -n`).

Chromium (browser tests), podman and its kin (container tier) and GStreamer's RTSP
server (camera tests) come from Debian, never from a download of their own: a fresh
CI machine gets them here. A failed install fails the tests that need them, never
skips them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence


class AptError(RuntimeError):
    """apt-get could not install what a test needs."""


def apt_install(packages: Sequence[str]) -> None:
    """`apt-get update` then `apt-get install -y PACKAGES`; raises AptError with stderr's tail."""
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        result = subprocess.run(
            [*prefix, *command], env=env, capture_output=True, text=True, timeout=900, check=False
        )
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-40:])
            raise AptError(f"{' '.join(command)} failed:\n{tail}")
