"""`make run`, the newcomer's first command, serves the demo models embedded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.processes import free_port
from tests.support.models import REPO_ROOT, match_truth

pytestmark = [pytest.mark.slow]


def test_make_run_serves_docs_and_predicts(
    tmp_path: Path, shapes_images: tuple[Path, dict[str, list[dict[str, Any]]]]
) -> None:
    port = free_port()
    models = tmp_path / "models"
    log = (tmp_path / "make-run.log").open("wb")
    proc = subprocess.Popen(
        ["make", "run", f"MODELS={models}", f"PORT={port}"],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TFSTREAM_HOST": "127.0.0.1"},
        start_new_session=True,
    )
    log.close()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "make-run.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail(
                "make run was not ready within 240 s:\n"
                + (tmp_path / "make-run.log").read_text()[-3000:]
            )
        docs = httpx.get(f"http://127.0.0.1:{port}/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        # Only what a newcomer can try: no random-weight Model Garden test export.
        assert sorted(p.name for p in models.iterdir()) == [
            "shapes_tf1",
            "shapes_tf2",
            "ssd_mobilenet_v2_bench",
        ]
        listed = httpx.get(f"http://127.0.0.1:{port}/models", timeout=30).json()
        assert "retinanet" not in str(listed) and "shapes_tf2" in str(listed)
        folder, truth = shapes_images
        name = next(n for n in sorted(truth) if len(truth[n]) >= 2)
        r = httpx.post(
            f"http://127.0.0.1:{port}/models/shapes_tf2/predict",
            files={"input_data": (name, (folder / name).read_bytes())},
            timeout=60,
        )
        assert r.status_code == 200
        assert match_truth(r.json()["data"]["bounding-boxes"], truth[name]) == []
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
