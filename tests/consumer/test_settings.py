"""How commands read their settings: defaults that follow the machine (decode
threads, the batch limit), each command's --help listing only its own options
once, and a misspelt TFSTREAM_* variable refused at start."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib

import pytest

from consumer.settings import CPU_MAX_BATCH, GPU_MAX_BATCH, EngineSettings
from engines.settings import COMMAND_SETTINGS, parse_cli, unknown_variables
from producer_tools.replay import ReplaySettings
from tests.support.models import REPO_ROOT

_PRINT_DEFAULT = (
    "import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')}); "
    "from consumer.settings import EngineSettings; print(EngineSettings().decode_threads)"
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
    assert parse_cli(EngineSettings, ["--decode-threads", "5"]).decode_threads == 5
    monkeypatch.setenv("TFSTREAM_DECODE_THREADS", "3")
    assert parse_cli(EngineSettings, []).decode_threads == 3


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
    assert EngineSettings().batch_limit(device) == expected
    assert EngineSettings(max_batch=5).batch_limit(device) == 5


@pytest.mark.parametrize(
    ("device", "fixed_batch", "expected"),
    [("/CPU:0", None, 1), ("/CPU:0", 1, 2), ("/GPU:0", None, 2), ("/GPU:1", 1, 2)],
)
def test_instances_default_by_device_and_batching(
    device: str, fixed_batch: int | None, expected: int
) -> None:
    assert EngineSettings().instance_limit(device, fixed_batch) == expected
    assert EngineSettings(instances=3).instance_limit(device, fixed_batch) == 3


def test_the_batch_limit_help_states_the_defaults_the_code_uses() -> None:
    doc = EngineSettings.model_fields["max_batch"].description or ""
    assert f"{CPU_MAX_BATCH} on the CPU" in doc and f"{GPU_MAX_BATCH} on a GPU" in doc


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TFSTREAM_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**clean, **(env or {})},
    )


def _help(module: str) -> str:
    out = _run(f"import sys; from {module} import main; sys.exit(main(['--help']))")
    assert out.returncode == 0, out.stderr
    return out.stdout


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"^  (--[a-z][a-z0-9-]*)", help_text, re.M))


#: Each command's --help, and options it must not offer (they would do nothing there).
NOT_THEIRS = {
    "consumer.cli": {"--port", "--api-key", "--answer-timeout-s", "--send-timeout-s", "--model"},
    "producer_tools.replay": {"--max-batch", "--device", "--repository", "--group", "--port"},
    "producer_tools.stream": {"--max-batch", "--conflate-models", "--api-key", "--log-level"},
    "producer_tools.results": {"--max-batch", "--answer-timeout-s", "--partitions"},
    "http_bridge.cli": {"--group", "--partitions", "--max-inflight", "--metrics-port"},
}


@pytest.mark.parametrize("module", sorted(NOT_THEIRS))
def test_help_lists_each_option_once_with_one_default_and_readable_types(module: str) -> None:
    text = _help(module)
    assert not _options(text) & NOT_THEIRS[module]
    assert "{Path,None}" not in text and "SecretStr" not in text and ",None}" not in text
    # pydantic-settings' own "(default: ...)" is dropped where the docstring says it.
    blocks = re.split(r"\n  (?=--)", text)
    for block in blocks:
        assert len(re.findall(r"\(default", block)) <= 1, block
        assert "(default: )" not in block and "(default factory" not in block, block


def test_the_bridge_lists_its_engine_and_kafka_options_under_their_mode() -> None:
    text = _help("http_bridge.cli")
    groups = dict(re.findall(r"^(\S[^\n]*):\n((?:  [^\n]*\n|\n(?=  ))*)", text, re.M))
    engine = _options(groups["Embedded engine (without --bootstrap)"])
    assert {"--max-batch", "--device", "--conflate-models", "--repository"} <= engine
    assert "--bootstrap" in _options(groups["Kafka (with --bootstrap)"])
    assert "--sasl-password" in _options(groups["Kafka TLS/SASL (with --bootstrap)"])
    assert "--api-key" in _options(groups["HTTP server"])


def test_a_misspelt_variable_is_refused_naming_the_closest_setting() -> None:
    code = "import sys; from consumer.cli import main; sys.exit(main([]))"
    out = _run(code, {"TFSTREAM_BOOTSTRAP": "localhost:1", "TFSTREAM_MAX_BATH": "4"})
    assert out.returncode == 2
    assert "TFSTREAM_MAX_BATH is not a tfstream setting; did you mean TFSTREAM_MAX_BATCH?" in (
        out.stderr
    )


def test_variables_of_other_commands_and_of_the_image_are_left_alone() -> None:
    env = {"TFSTREAM_GROUP": "g", "TFSTREAM_HEALTH_URL": "http://x/health/live"}
    assert unknown_variables(ReplaySettings, env) == []
    assert unknown_variables(ReplaySettings, {"TFSTREAM_GRUOP": "g", "TFSTREAM_ZZZ": ""}) == [
        "TFSTREAM_GRUOP is not a tfstream setting; did you mean TFSTREAM_GROUP?",
        "TFSTREAM_ZZZ is not a tfstream setting",
    ]


def test_the_client_library_loads_neither_pillow_nor_numpy() -> None:
    code = (
        "import sys, producer_tools.client; "
        "print(sorted(m for m in ('PIL', 'numpy', 'tensorflow', 'cv2') if m in sys.modules))"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_command_is_known_to_the_variable_check() -> None:
    """A command missing from COMMAND_SETTINGS would make its variables errors for the
    other commands sharing an environment (a container image sets them for all)."""
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        scripts = set(tomllib.load(f)["project"]["scripts"])
    progs = set()
    for spec in COMMAND_SETTINGS:
        module, _, name = spec.partition(":")
        progs.add(getattr(importlib.import_module(module), name).model_config["cli_prog_name"])
    assert progs == scripts


def test_validating_a_shadow_imports_no_pipeline() -> None:
    """The settings check a shadow's name and start time with the protocol's rules
    alone: the import circle settings -> shadow -> pipeline -> settings is gone."""
    import subprocess
    import sys

    code = (
        "import sys; from consumer.settings import ConsumerSettings;"
        "ConsumerSettings(shadow='v2', shadow_from='1700000000000').consumer_group();"
        "print(sorted(m for m in sys.modules if m.startswith('consumer.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.strip()
    for heavy in ("consumer.pipeline", "consumer.shadow", "consumer.records", "consumer.kafka_io"):
        assert f"'{heavy}'" not in loaded, loaded
