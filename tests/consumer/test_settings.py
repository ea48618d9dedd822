"""Worker defaults that follow the machine: decode threads and the batch limit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from consumer.settings import CPU_MAX_BATCH, GPU_MAX_BATCH, WorkerSettings
from engines.settings import parse_cli
from tests.support.models import REPO_ROOT

_PRINT_DEFAULT = (
    "import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')}); "
    "from consumer.settings import WorkerSettings; print(WorkerSettings().decode_threads)"
)


def _default_decode_threads(cpus: set[int]) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFSTREAM_")}
    out = subprocess.run(
        [sys.executable, "-c", _PRINT_DEFAULT, ",".join(map(str, sorted(cpus)))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_decode_threads_default_to_the_cores_this_process_may_use() -> None:
    allowed = os.sched_getaffinity(0)
    assert _default_decode_threads(allowed) == len(allowed)
    one = {min(allowed)}
    assert _default_decode_threads(one) == 1  # a taskset/cpuset of one core, not the machine's


def test_decode_threads_stay_overridable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_cli(WorkerSettings, ["--decode-threads", "5"]).decode_threads == 5
    monkeypatch.setenv("TFSTREAM_DECODE_THREADS", "3")
    assert parse_cli(WorkerSettings, []).decode_threads == 3


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("/CPU:0", CPU_MAX_BATCH),
        ("/GPU:0", GPU_MAX_BATCH),
        ("/GPU:3", GPU_MAX_BATCH),
        ("/SIMULATED:0", CPU_MAX_BATCH),
    ],
)
def test_batch_limit_defaults_by_device(device: str, expected: int) -> None:
    assert WorkerSettings().batch_limit(device) == expected
    assert WorkerSettings(max_batch=5).batch_limit(device) == 5
    assert (CPU_MAX_BATCH, GPU_MAX_BATCH) == (8, 32)


@pytest.mark.parametrize(("device", "expected"), [("/CPU:0", 1), ("/GPU:0", 2), ("/GPU:1", 2)])
def test_instances_default_by_device(device: str, expected: int) -> None:
    assert WorkerSettings().instance_limit(device) == expected
    assert WorkerSettings(instances=3).instance_limit(device) == 3
