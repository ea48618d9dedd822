"""Chromium for the browser tests: Debian's package, installed here when missing.

Playwright drives it through `executable_path`, so no browser is downloaded
by `playwright install`; a fresh CI machine (root, Debian) gets it with apt-get.
"""

from __future__ import annotations

import shutil

import pytest

from tests.support.apt import apt_install

CHROMIUM = "chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's Chromium, installing the package first if it is not on PATH."""
    found = shutil.which(CHROMIUM)
    if found is None:
        apt_install([CHROMIUM])
        found = shutil.which(CHROMIUM)
    assert found is not None, "apt-get install chromium put no `chromium` on PATH"
    return found
