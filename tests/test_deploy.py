"""Static checks of the deployment files: deploy/ (images, compose, swarm,
Kubernetes), .dockerignore and the Makefile's install step.

There is no Docker engine or cluster where the suite runs, so these tests are
what keeps the deployment files true to the code: every tfstream command and
option they use exists in that command's --help, every TFSTREAM_* variable is a
field of the matching settings class, ports and probe paths are the ones the
processes serve, the KEDA trigger watches the group and topics the workers use,
and the Makefile and both Dockerfiles share deploy/install.sh.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic_settings import BaseSettings

from consumer.health import HealthServer
from consumer.metrics import WorkerMetrics
from consumer.protocol import Topics
from consumer.settings import ConsumerSettings
from engines.cli import ModelsSettings
from engines.settings import OTHER_VARIABLES
from http_bridge.app import create_app
from http_bridge.settings import BridgeSettings
from producer_tools.cameras import CamerasSettings
from tests.http_bridge.test_middleware import FakeBackend

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "gpu": DEPLOY / "Dockerfile.gpu"}
COMPOSE = DEPLOY / "compose.yaml"
STACK = DEPLOY / "swarm" / "stack.yaml"
K8S = DEPLOY / "k8s"
DOCS = [
    ROOT / "docs" / "deploy.md",
    ROOT / "docs" / "architecture.md",
    DEPLOY / "swarm" / "README.md",
]

SETTINGS: dict[str, type[BaseSettings]] = {
    "tfstream-consumer": ConsumerSettings,
    "tfstream-bridge": BridgeSettings,
    "tfstream-models": ModelsSettings,
    "tfstream-cameras": CamerasSettings,
}
# Variables the deployment files add for the image itself, read by no settings class.
IMAGE_ONLY_ENV = {"TFSTREAM_HEALTH_URL"} & OTHER_VARIABLES  # deploy/healthcheck.py
HEALTH_PATHS = {"/health/live", "/health/ready"}
ENV_NAME = re.compile(r"\bTFSTREAM_[A-Z0-9_]+\b")


# -- helpers ---------------------------------------------------------------------------


def _default(cls: type[BaseSettings], field: str) -> Any:
    return cls.model_fields[field].default


def _env_names(cls: type[BaseSettings]) -> set[str]:
    return {"TFSTREAM_" + name.upper() for name in cls.model_fields}


ALL_ENV = set().union(*(_env_names(cls) for cls in SETTINGS.values())) | IMAGE_ONLY_ENV


@functools.cache
def _scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: command -> 'module:function'."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["project"]["scripts"])


@functools.cache
def _help_options(command: str) -> frozenset[str]:
    """The --options that `command --help` lists (run through its entry point)."""
    module, function = _scripts()[command].split(":")
    code = f"import sys; from {module} import {function} as m; sys.exit(m(['--help']))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFSTREAM_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"{command} --help failed: {out.stderr}"
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out.stdout))


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _yaml_docs(path)]


def _k8s(kind: str, name: str, objects: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found = [
        o for o in objects or _k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name
    ]
    assert found, f"no {kind} {name} in deploy/k8s"
    return found[0]


def _configmaps() -> dict[str, dict[str, str]]:
    return {
        o["metadata"]["name"]: o.get("data", {}) for o in _k8s_objects() if o["kind"] == "ConfigMap"
    }


def _env_dict(env: Any) -> dict[str, str]:
    """A compose environment, as a mapping or as a list of NAME=value."""
    if env is None:
        return {}
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    return dict(item.partition("=")[::2] for item in env)


def _check_argv(argv: list[str], where: str) -> str:
    """Check a tfstream command line (command + options); return the command."""
    assert argv, f"{where}: empty command"
    command = argv[0]
    assert command in _scripts(), f"{where}: {command!r} is no command of [project.scripts]"
    for token in argv[1:]:
        if token.startswith("--"):
            option = token.split("=", 1)[0]
            assert option in _help_options(command), f"{where}: {command} has no option {option}"
    return command


def _check_env(names: set[str], command: str, where: str) -> None:
    if command in SETTINGS:
        allowed = _env_names(SETTINGS[command])
    else:  # a later tfstream command: every option is also TFSTREAM_<OPTION>
        allowed = {"TFSTREAM_" + o[2:].upper().replace("-", "_") for o in _help_options(command)}
    allowed |= IMAGE_ONLY_ENV
    unknown = sorted(names - allowed)
    assert not unknown, f"{where}: {unknown} are not settings of {command}"


def _seconds(duration: str | int | float) -> float:
    """A compose duration ('45s', '1m30s', '500ms') in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _load_healthcheck() -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("tfstream_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            logical.append((word.upper(), rest.strip()))
        current = ""
    return logical


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


# -- the CLIs the files rely on ------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(SETTINGS))
def test_help_lists_every_settings_field(command: str) -> None:
    """The --help parsing below is sound: it finds one option per settings field."""
    cls = SETTINGS[command]
    positional = {
        ModelsSettings: {"command", "dir"},
        CamerasSettings: {"config"},
    }.get(cls, set())
    expected = {"--" + f.replace("_", "-") for f in cls.model_fields if f not in positional}
    assert expected <= _help_options(command)


# -- YAML -------------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert {COMPOSE, STACK, K8S / "kustomization.yaml"} <= set(files)
    for path in files:
        docs = _yaml_docs(path)
        assert docs, f"{path} is empty"
        assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_k8s_objects_are_well_formed() -> None:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _yaml_docs(path):
            if path.name == "kustomization.yaml":
                assert doc["kind"] == "Kustomization"
                continue
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: {doc.get('kind')}"
            assert doc["metadata"].get("name"), f"{path}: {doc['kind']} without a name"


def test_kustomization_lists_existing_files_and_one_scaledobject() -> None:
    kustomization = _yaml_docs(K8S / "kustomization.yaml")[0]
    resources = kustomization["resources"]
    for name in resources:
        assert (K8S / name).is_file(), f"kustomization.yaml lists missing {name}"
    scaled = [
        name
        for name in resources
        if any(d["kind"] == "ScaledObject" for d in _yaml_docs(K8S / name))
    ]
    assert len(scaled) == 1, "only one ScaledObject may drive the consumer Deployment"


# -- commands, options and environment variables ---------------------------------------------


def test_dockerfile_commands_and_env() -> None:
    for extra, path in DOCKERFILES.items():
        final = _final_stage(_dockerfile_instructions(path))
        cmd = [json.loads(args) for word, args in final if word == "CMD"]
        assert len(cmd) == 1, f"{path}: one CMD in the runtime stage"
        _check_argv(cmd[0], f"{path.name} CMD")
        entrypoint = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
        # Empty: one image, every command.
        assert entrypoint in ([], [[]]), f"{path}: ENTRYPOINT must stay empty"
        env_names = set(ENV_NAME.findall(" ".join(args for word, args in final if word == "ENV")))
        assert "TFSTREAM_REPOSITORY" in env_names, f"{path} ({extra}): models at /models"
        assert not env_names - ALL_ENV, f"{path}: unknown {sorted(env_names - ALL_ENV)}"
        assert re.search(r"\bTFSTREAM_REPOSITORY=/models\b", path.read_text())


def _compose_tfstream_services(path: Path) -> dict[str, dict[str, Any]]:
    services = yaml.safe_load(path.read_text())["services"]
    return {name: s for name, s in services.items() if "tfstream" in str(s.get("image", ""))}


@pytest.mark.parametrize("path", [COMPOSE, STACK], ids=["compose", "swarm"])
def test_compose_commands_options_and_env(path: Path) -> None:
    services = _compose_tfstream_services(path)
    assert services, f"{path}: no tfstream services"
    for name, service in services.items():
        argv = service.get("command")
        assert isinstance(argv, list), f"{path}: service {name} needs an explicit command list"
        command = _check_argv([str(a) for a in argv], f"{path.name} service {name}")
        env = _env_dict(service.get("environment"))
        _check_env(set(env), command, f"{path.name} service {name}")


def test_k8s_commands_options_and_env() -> None:
    objects = _k8s_objects()
    configmaps = _configmaps()
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {
        "tfstream-consumer",
        "tfstream-bridge",
        "tfstream-cameras",
    }
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"Deployment {deployment['metadata']['name']} container {container['name']}"
            argv = [str(a) for a in container.get("command", []) + container.get("args", [])]
            command = _check_argv(argv, where)
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                ref = source["configMapRef"]["name"]
                assert ref in configmaps, f"{where}: no ConfigMap {ref}"
                names |= set(configmaps[ref])
            _check_env(names, command, where)


def test_every_configmap_is_used() -> None:
    used = set()
    for deployment in (o for o in _k8s_objects() if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            used |= {s["configMapRef"]["name"] for s in container.get("envFrom", [])}
        used |= {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
    assert set(_configmaps()) == used


def _text_files() -> list[Path]:
    files = [*DOCKERFILES.values(), COMPOSE, STACK]
    files += [DEPLOY / "install.sh", DEPLOY / "healthcheck.py"]
    return files + sorted(K8S.glob("*.yaml")) + DOCS


def test_every_tfstream_variable_named_anywhere_exists() -> None:
    """Comments and docs included: a misspelt variable in an example is a bug too."""
    for path in _text_files():
        unknown = set(ENV_NAME.findall(path.read_text())) - ALL_ENV
        assert not unknown, f"{path}: {sorted(unknown)} are no tfstream settings"


COMMAND_LINE = re.compile(r"(?<![\w./-])(tfstream-[a-z]+)(?![\w-])([^|;&#`)\n]*)")


def test_every_option_after_a_command_in_examples_and_docs_exists() -> None:
    """`tfstream-consumer --bootstrap ... --device GPU:0` in comments and docs."""
    checked = 0
    for path in _text_files():
        text = re.sub(r"\\\n\s*", " ", path.read_text())  # shell line continuations
        for command, rest in COMMAND_LINE.findall(text):
            if command not in _scripts():  # tfstream-workers, tfstream-gpu...: names, not commands
                continue
            for option in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", rest):
                assert option in _help_options(command), f"{path}: {command} has no option {option}"
                checked += 1
    assert checked >= 5, "the examples should show a few real options"


# -- ports and probes ------------------------------------------------------------------------


def test_image_ports_and_healthcheck_defaults() -> None:
    bridge_port = _default(BridgeSettings, "port")
    metrics_port = _default(ConsumerSettings, "metrics_port")
    for path in DOCKERFILES.values():
        final = _final_stage(_dockerfile_instructions(path))
        exposed = {int(p.split("/")[0]) for w, a in final if w == "EXPOSE" for p in a.split()}
        assert exposed == {bridge_port, metrics_port}, path
        health = [a for w, a in final if w == "HEALTHCHECK"]
        assert len(health) == 1 and "/opt/tfstream/healthcheck.py" in health[0], path
        assert any(w == "COPY" and a.split()[0] == "deploy/healthcheck.py" for w, a in final), path
    hc = _load_healthcheck()
    servers = {s.command: s for s in hc.SERVERS}
    assert servers["tfstream-consumer"].default_port == metrics_port
    assert servers["tfstream-bridge"].default_port == bridge_port
    assert hc.HEALTH_PATH in HEALTH_PATHS
    for server in hc.SERVERS:
        options = _help_options(server.command)
        assert f"--{server.port_option}" in options and f"--{server.host_option}" in options


@pytest.mark.parametrize("path", [COMPOSE, STACK], ids=["compose", "swarm"])
def test_compose_ports(path: Path) -> None:
    for name, service in _compose_tfstream_services(path).items():
        env = _env_dict(service.get("environment"))
        command = service["command"][0]
        if command == "tfstream-bridge":
            port = int(env.get("TFSTREAM_PORT", _default(BridgeSettings, "port")))
            targets = set()
            for mapping in service.get("ports", []):
                if isinstance(mapping, dict):
                    targets.add(int(mapping["target"]))
                else:
                    targets.add(int(str(mapping).split(":")[-1].split("/")[0]))
            assert targets == {port}, f"{path.name} {name}: publishes {targets}, listens on {port}"
        elif command == "tfstream-consumer":
            port = int(env.get("TFSTREAM_METRICS_PORT", _default(ConsumerSettings, "metrics_port")))
            exposed = {int(p) for p in service.get("expose", [])}
            assert exposed <= {port}, f"{path.name} {name}: exposes {exposed}, metrics on {port}"


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    configmaps = _configmaps()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    env.update({e["name"]: e.get("value", "") for e in container.get("env", []) if "value" in e})
    return env


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"container {container['name']} has no port named {port}"
    return int(named[port])


def test_k8s_ports_and_probes() -> None:
    objects = _k8s_objects()
    expected = {
        "tfstream-consumer": ("TFSTREAM_METRICS_PORT", _default(ConsumerSettings, "metrics_port")),
        "tfstream-bridge": ("TFSTREAM_PORT", _default(BridgeSettings, "port")),
        "tfstream-cameras": ("TFSTREAM_METRICS_PORT", _default(CamerasSettings, "metrics_port")),
    }
    for name, (variable, default) in expected.items():
        deployment = _k8s("Deployment", name, objects)
        pod = deployment["spec"]["template"]
        container = pod["spec"]["containers"][0]
        port = int(_container_env(container).get(variable, default))
        assert {p["containerPort"] for p in container["ports"]} == {port}, name
        kinds = ("livenessProbe", "readinessProbe", "startupProbe")
        probes = {kind: container[kind] for kind in kinds if kind in container}
        assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live", name
        assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready", name
        for kind, probe in probes.items():
            assert probe["httpGet"]["path"] in HEALTH_PATHS, f"{name} {kind}"
            assert _port_number(container, probe["httpGet"]["port"]) == port, f"{name} {kind}"
        annotations = pod["metadata"].get("annotations", {})
        if "prometheus.io/port" in annotations:
            assert int(annotations["prometheus.io/port"]) == port, name
    service = _k8s("Service", "tfstream-bridge", objects)
    bridge = _k8s("Deployment", "tfstream-bridge", objects)["spec"]["template"]
    assert service["spec"]["selector"].items() <= bridge["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == _default(BridgeSettings, "port")
    target = _port_number(bridge["spec"]["containers"][0], service_port["targetPort"])
    assert target == _default(BridgeSettings, "port")


class _Checks:
    def __init__(self) -> None:
        self.live = True
        self.ready = False


@pytest.fixture
def consumer_health() -> Iterator[tuple[int, _Checks]]:
    """The consumer's real health server, on a free port, with switchable answers."""
    checks = _Checks()
    server = HealthServer(
        "127.0.0.1",
        0,
        CollectorRegistry(),
        live=lambda: (checks.live, {}),
        ready=lambda: (checks.ready, {}),
    )
    server.start()
    try:
        yield server.port, checks
    finally:
        server.stop()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def test_consumer_serves_the_probe_paths(consumer_health: tuple[int, _Checks]) -> None:
    port, checks = consumer_health
    base = f"http://127.0.0.1:{port}"
    assert _status(base + "/health/live") == 200
    assert _status(base + "/health/ready") == 503
    checks.ready = True
    assert _status(base + "/health/ready") == 200
    assert _status(base + "/metrics") == 200


def test_the_bridge_answers_its_probes_and_prometheus_with_an_api_key_set() -> None:
    """The bridge Deployment sets TFSTREAM_API_KEY, probes /health/* and asks Prometheus
    to scrape prometheus.io/path: the real app, keyed, answers all of them without the
    key, and still refuses an API call without it."""
    pod = _k8s("Deployment", "tfstream-bridge")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert "TFSTREAM_API_KEY" in {e["name"] for e in container.get("env", [])}
    paths = {
        container[kind]["httpGet"]["path"]
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
        if kind in container
    }
    assert paths == HEALTH_PATHS
    scrape = pod["metadata"]["annotations"]["prometheus.io/path"]

    async def statuses() -> dict[str, int]:
        app = create_app(BridgeSettings(api_key="k8s-secret"), backend=FakeBackend())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            return {p: (await client.get(p)).status_code for p in [*paths, scrape, "/models"]}

    answered = asyncio.run(statuses())
    assert answered == {**dict.fromkeys([*paths, scrape], 200), "/models": 401}, answered


# -- the image's HEALTHCHECK script --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "url"),
    [
        (
            ["/opt/venv/bin/python", "/opt/venv/bin/tfstream-consumer"],
            {},
            "http://127.0.0.1:9400/health/live",
        ),
        (
            ["python", "/opt/venv/bin/tfstream-consumer", "--metrics-port", "9500"],
            {},
            "http://127.0.0.1:9500/health/live",
        ),
        (
            ["python", "-m", "consumer", "--metrics-port=9501"],
            {"TFSTREAM_METRICS_PORT": "1"},
            "http://127.0.0.1:9501/health/live",
        ),
        (
            ["tfstream-consumer"],
            {"TFSTREAM_METRICS_PORT": "9600", "TFSTREAM_METRICS_HOST": "10.0.0.5"},
            "http://10.0.0.5:9600/health/live",
        ),
        (["tfstream-consumer"], {"TFSTREAM_METRICS_PORT": "0"}, None),
        (["python", "/opt/venv/bin/tfstream-bridge"], {}, "http://127.0.0.1:4343/health/live"),
        (
            ["python", "-m", "http_bridge", "--port", "8080", "--host", "::"],
            {},
            "http://127.0.0.1:8080/health/live",
        ),
        (["tfstream-bridge"], {"TFSTREAM_PORT": "5000"}, "http://127.0.0.1:5000/health/live"),
        (
            ["tfstream-bridge", "--https-certfile", "/tls/tls.crt", "--https-keyfile", "/tls/k"],
            {},
            "https://127.0.0.1:4343/health/live",
        ),
        (
            ["tfstream-bridge"],
            {"TFSTREAM_HTTPS_CERTFILE": "/tls/tls.crt"},
            "https://127.0.0.1:4343/health/live",
        ),
        (["python", "/opt/venv/bin/tfstream-models", "generate", "/models"], {}, None),
        (["/bin/sh", "-c", "sleep 1"], {}, None),
    ],
)
def test_healthcheck_target(argv: list[str], env: dict[str, str], url: str | None) -> None:
    assert _load_healthcheck().target_url(argv, env) == url


def _fake_proc(root: Path, processes: dict[int, tuple[list[str], dict[str, str]]]) -> Path:
    for pid, (argv, env) in processes.items():
        folder = root / str(pid)
        folder.mkdir(parents=True)
        (folder / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (folder / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in env.items()))
    return root


def test_healthcheck_probes_the_running_command(
    consumer_health: tuple[int, _Checks], tmp_path: Path
) -> None:
    hc = _load_healthcheck()
    port, checks = consumer_health
    env = {"TFSTREAM_METRICS_PORT": str(port)}
    # docker run --init: pid 1 is docker-init with the command as its arguments.
    proc = _fake_proc(
        tmp_path / "proc",
        {
            1: (["/sbin/docker-init", "--", "tfstream-consumer", "--log-level", "INFO"], env),
            7: (["python", "/opt/venv/bin/tfstream-consumer", "--log-level", "INFO"], env),
        },
    )
    assert hc.find_url({}, proc) == f"http://127.0.0.1:{port}/health/live"
    assert hc.main({}, proc) == 0
    checks.live = False
    assert hc.main({}, proc) == 1
    assert hc.main({"TFSTREAM_HEALTH_URL": f"http://127.0.0.1:{port}/health/ready"}, proc) == 1
    checks.ready = True
    assert hc.main({"TFSTREAM_HEALTH_URL": f"http://127.0.0.1:{port}/health/ready"}, proc) == 0
    one_shot = _fake_proc(tmp_path / "proc3", {1: (["tfstream-models", "generate", "/models"], {})})
    assert hc.main({}, one_shot) == 0


def test_healthcheck_fails_when_nothing_answers(tmp_path: Path) -> None:
    hc = _load_healthcheck()

    class Quiet(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert hc.main({"TFSTREAM_HEALTH_URL": f"http://127.0.0.1:{port}/health/live"}) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert hc.main({"TFSTREAM_HEALTH_URL": f"http://127.0.0.1:{port}/health/live"}) == 1


# -- one install step -----------------------------------------------------------------------


def _extras() -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


def test_makefile_installs_through_install_sh() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^\$\(VENV\)/\.installed:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "Makefile: no $(VENV)/.installed target"
    lines = recipe.group(1)
    assert re.search(
        r"^\tbash deploy/install\.sh \$\(BIN\)/pip '\$\(TF_EXTRA\),dev' --editable$", lines, re.M
    ), lines
    # The project is installed by install.sh only.
    assert not re.search(r"pip install[^\n]*\.\[", makefile)
    assert {"cpu", "gpu", "dev"} <= _extras()


def test_dockerfiles_install_through_install_sh() -> None:
    for extra, path in DOCKERFILES.items():
        instructions = _dockerfile_instructions(path)
        assert sum(1 for w, _ in instructions if w == "FROM") >= 2, f"{path}: multi-stage"
        runs = [a for w, a in instructions if w == "RUN" and "install.sh" in a]
        # The dependencies in a layer of their own, then the project: both by install.sh.
        assert len(runs) == 2, f"{path}: dependencies, then the project"
        assert re.search(
            rf"\bbash deploy/install\.sh /opt/venv/bin/pip {extra} --dependencies$", runs[0]
        ), runs[0]
        assert re.search(rf"\bbash deploy/install\.sh /opt/venv/bin/pip {extra}$", runs[1]), runs[1]
        # ... and before the code is copied in, so a code change keeps that layer.
        dependencies = next(
            i for i, (w, a) in enumerate(instructions) if w == "RUN" and "--dependencies" in a
        )
        code = next(i for i, (w, a) in enumerate(instructions) if w == "COPY" and "engines" in a)
        assert dependencies < code, path
        assert extra in _extras()
        copies = [a for w, a in instructions if w == "COPY"]
        assert any(a.split()[0] == "deploy/install.sh" for a in copies), f"{path}: COPY install.sh"
        # install.sh installs the tracker library from this file in both layers.
        assert any(a.split()[0] == "deploy/tracking-requirements.txt" for a in copies), path
        runs = [a for w, a in instructions if w == "RUN"]
        assert not any(re.search(r"pip install[^\n]*\s\.", a) for a in runs)
        final = _final_stage(instructions)
        assert any(w == "COPY" and a.startswith("--from=builder /opt/venv") for w, a in final), path
        users = [a for w, a in final if w == "USER"]
        assert users and users[-1].split(":")[0] not in {"root", "0"}, f"{path}: non-root user"


@pytest.fixture
def fake_pip(tmp_path: Path) -> Path:
    pip = tmp_path / "bin" / "pip"
    pip.parent.mkdir()
    pip.write_text('#!/bin/sh\nprintf "%s\\n" "---" "$(pwd)" "$@" >> "$(dirname "$0")/called"\n')
    pip.chmod(0o755)
    return pip


MODEL_GARDEN = ["install", "--quiet", "--no-deps", "-r", "deploy/model-garden-requirements.txt"]
TRACKING = ["install", "--quiet", "--no-deps", "-r", "deploy/tracking-requirements.txt"]


def _project_dependencies() -> dict[str, list[str]]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    return {
        extra: [*project["dependencies"], *extras]
        for extra, extras in project["optional-dependencies"].items()
    }


PROJECT_DEPENDENCIES = _project_dependencies()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["cpu,dev", "--editable"],
            [["install", "--quiet", "-e", ".[cpu,dev]"], TRACKING, MODEL_GARDEN],
        ),
        (["gpu"], [["install", "--quiet", ".[gpu]"], TRACKING]),  # no Model Garden in images
        (
            ["cpu", "--dependencies"],
            [["install", "--quiet", *PROJECT_DEPENDENCIES["cpu"]], TRACKING],
        ),
    ],
)
def test_install_sh_runs_pip(
    fake_pip: Path, tmp_path: Path, args: list[str], expected: list[list[str]]
) -> None:
    # A relative pip path, from another directory: install.sh still installs this project.
    relative = os.path.relpath(fake_pip, tmp_path)
    subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), relative, *args], cwd=tmp_path, check=True, timeout=30
    )
    calls = (fake_pip.parent / "called").read_text().split("---\n")[1:]
    for call in calls:
        assert Path(call.splitlines()[0]) == ROOT
    assert [call.splitlines()[1:] for call in calls] == expected


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["PIP"],
        ["PIP", "cpu,gpu"],
        ["PIP", "cpu", "--edit"],
        ["PIP", "cpu]; rm x"],
        ["PIP", "cpu", "--editable", "more"],
    ],
)
def test_install_sh_refuses_bad_arguments(fake_pip: Path, args: list[str]) -> None:
    argv = [str(fake_pip) if a == "PIP" else a for a in args]
    result = subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), *argv], capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert not (fake_pip.parent / "called").exists()


# -- .dockerignore ----------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, roughly: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates) or fnmatch.fnmatch(path, pattern):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_images_copy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv", ".git", "models/*"):
        assert required in patterns, f".dockerignore should exclude {required}"
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "models/shapes_tf2/saved_model.pb",
        "consumer/__pycache__/cli.cpython-311.pyc",
        "tfstream.egg-info/PKG-INFO",
    ):
        assert _ignored(path, patterns), f".dockerignore lets {path} into the build context"
    for dockerfile in DOCKERFILES.values():
        for word, args in _dockerfile_instructions(dockerfile):
            if word != "COPY" or args.startswith("--from"):
                continue
            for source in args.split()[:-1]:
                assert not _ignored(source, patterns), f"{dockerfile.name} copies {source}, ignored"
                assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"


# -- Kafka: message size, topics, group, graceful stop ------------------------------------------


def test_compose_kafka_broker() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    kafka = services["kafka"]
    pom = (DEPLOY / "kafka-local" / "pom.xml").read_text()
    version = re.search(r"<kafka\.version>(.+?)</kafka\.version>", pom)
    assert version and kafka["image"] == f"apache/kafka:{version.group(1)}"
    env = _env_dict(kafka["environment"])
    max_bytes = _default(ConsumerSettings, "max_message_bytes")
    assert max_bytes == 16 * 1024 * 1024
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= max_bytes
    assert int(env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= max_bytes
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(env["KAFKA_NODE_ID"] + "@")
    assert "test" in kafka["healthcheck"]
    advertised = {a.split("://", 1)[1] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name, service in _compose_tfstream_services(COMPOSE).items():
        client = _env_dict(service.get("environment"))
        if "TFSTREAM_BOOTSTRAP" in client:
            assert client["TFSTREAM_BOOTSTRAP"] in advertised, name
            client_max = int(client.get("TFSTREAM_MAX_MESSAGE_BYTES", max_bytes))
            assert client_max <= int(env["KAFKA_MESSAGE_MAX_BYTES"]), name
            assert service["depends_on"]["kafka"]["condition"] == "service_healthy", name


def test_compose_gpu_variant_and_models() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert "profiles" not in services["consumer"], "the CPU workers run by default"
    gpu = [s for s in services.values() if "gpu" in s.get("profiles", [])]
    assert gpu, "a consumer in the gpu profile"
    for service in gpu:
        assert service["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    models = services["models"]
    assert models["command"][:3] == ["tfstream-models", "generate", "/models"]
    for name in ("consumer", *[n for n, s in services.items() if s in gpu]):
        condition = services[name]["depends_on"]["models"]["condition"]
        assert condition == "service_completed_successfully", name


def _shutdown_timeout(env: dict[str, str]) -> float:
    default = _default(ConsumerSettings, "shutdown_timeout_s")
    return float(env.get("TFSTREAM_SHUTDOWN_TIMEOUT_S", default))


@pytest.mark.parametrize("path", [COMPOSE, STACK], ids=["compose", "swarm"])
def test_compose_stop_grace_outlasts_the_shutdown_timeout(path: Path) -> None:
    for name, service in _compose_tfstream_services(path).items():
        if service["command"][0] == "tfstream-consumer":
            grace = _seconds(service.get("stop_grace_period", "10s"))
            assert grace > _shutdown_timeout(_env_dict(service["environment"])), name


def test_swarm_stack() -> None:
    services = yaml.safe_load(STACK.read_text())["services"]
    consumer, bridge = services["consumer"], services["bridge"]
    deploy = consumer["deploy"]
    (gpu,) = deploy["resources"]["reservations"]["generic_resources"]
    assert gpu["discrete_resource_spec"] == {"kind": "NVIDIA-GPU", "value": 1}
    assert deploy["update_config"]["order"] == "stop-first"
    assert deploy["update_config"]["parallelism"] == 1
    partitions = int(
        _env_dict(consumer["environment"]).get(
            "TFSTREAM_PARTITIONS", _default(ConsumerSettings, "partitions")
        )
    )
    assert deploy["replicas"] <= partitions
    assert bridge["deploy"]["update_config"]["order"] == "start-first"
    readme = (DEPLOY / "swarm" / "README.md").read_text()
    assert "DOCKER_RESOURCE_NVIDIA-GPU" in readme  # the runtime setting matching kind NVIDIA-GPU
    assert "rebalance" in readme


def test_k8s_consumer_deployment() -> None:
    objects = _k8s_objects()
    pod = _k8s("Deployment", "tfstream-consumer", objects)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["terminationGracePeriodSeconds"] > _shutdown_timeout(_container_env(container))
    assert "tfstream-gpu" in container["image"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    repository = _container_env(container).get("TFSTREAM_REPOSITORY", "/models")
    assert repository == "/models" and repository in mounts
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_keda_kafka_trigger_matches_the_workers() -> None:
    objects = _k8s_objects()
    scaled = _yaml_docs(K8S / "keda-scaledobject.yaml")
    (so,) = scaled
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["kind"] == "ScaledObject"
    assert so["spec"]["scaleTargetRef"]["name"] == "tfstream-consumer"
    _k8s("Deployment", so["spec"]["scaleTargetRef"]["name"], objects)
    settings = {**_configmaps()["tfstream-common"], **_configmaps()["tfstream-consumer"]}
    group = settings.get("TFSTREAM_GROUP", _default(ConsumerSettings, "group"))
    prefix = settings.get("TFSTREAM_TOPIC_PREFIX", _default(ConsumerSettings, "topic_prefix"))
    assert (
        (group, prefix)
        == ("tfstream-workers", "tfstream")
        == (_default(ConsumerSettings, "group"), _default(ConsumerSettings, "topic_prefix"))
    )
    kafka = [t for t in so["spec"]["triggers"] if t["type"] == "kafka"]
    assert kafka, "a kafka trigger"
    for trigger in kafka:
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
        assert meta["consumerGroup"] == group
        assert meta["bootstrapServers"] == settings["TFSTREAM_BOOTSTRAP"]
        if "topic" in meta:
            assert re.fullmatch(Topics(prefix).requests_pattern, meta["topic"]), meta["topic"]
        assert int(meta["lagThreshold"]) > 0
        assert meta["allowIdleConsumers"] == "false"
        assert meta.get("offsetResetPolicy") == "earliest"  # the workers' auto_offset_reset
    partitions = int(settings.get("TFSTREAM_PARTITIONS", _default(ConsumerSettings, "partitions")))
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions


def test_keda_prometheus_alternative() -> None:
    (so,) = _yaml_docs(K8S / "keda-scaledobject-prometheus.yaml")
    (kafka_so,) = _yaml_docs(K8S / "keda-scaledobject.yaml")
    assert so["spec"]["scaleTargetRef"] == kafka_so["spec"]["scaleTargetRef"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values())
    assert "tfstream_backlog_seconds" in meta["query"] and float(meta["threshold"]) > 0
    assert so["spec"]["minReplicaCount"] >= 1, "no worker, no metric: never scale to zero"
    names = {m.name for m in WorkerMetrics().registry.collect()}
    assert "tfstream_backlog_seconds" in names
