"""Chromium for the browser tests: Debian's package, installed here when missing.

Playwright drives it through `executable_path`, so no browser is downloaded
by `playwright install`; a fresh CI machine (root, Debian) gets it with apt-get.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

CHROMIUM = "chromium"


def _install_chromium() -> None:
    """apt-get as root, else through sudo; a failure fails the tests, never skips them."""
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", CHROMIUM]):
        result = subprocess.run(
            [*prefix, *command], env=env, capture_output=True, text=True, timeout=900, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's Chromium, installing the package first if it is not on PATH."""
    found = shutil.which(CHROMIUM)
    if found is None:
        _install_chromium()
        found = shutil.which(CHROMIUM)
    assert found is not None, "apt-get install chromium put no `chromium` on PATH"
    return found
