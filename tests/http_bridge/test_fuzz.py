"""Schemathesis fuzzes the bridge's OpenAPI schema: no request may end as a 500."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bridge import BridgeProcess

pytestmark = [pytest.mark.slow]


def test_fuzzing_the_openapi_schema_finds_no_server_error(
    serving_repository: Path, tmp_path: Path
) -> None:
    bridge = BridgeProcess(
        tmp_path,
        {
            "TFSTREAM_REPOSITORY": str(serving_repository),
            "TFSTREAM_MODELS": "shapes_tf2,broken",
            "TFSTREAM_MAX_REQUEST_BYTES": str(2 * 1024 * 1024),
        },
    ).start()
    try:
        bridge.wait_ready()
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "run",
                f"{bridge.url}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "15",
                "--max-time",
                "60",
                "--workers",
                "1",
                "--request-timeout",
                "30",
                "--report",
                "junit",
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        junit = next(tmp_path.glob("*.xml")).read_text()
        assert 'tests="0"' not in junit  # it really sent requests
        assert "predict_batch" in run.stdout and "/detect" in run.stdout
    finally:
        bridge.stop()
