"""deploy/compose.yaml, brought up with podman-compose as a user would: Kafka
(the local stand-in image, tagged as the compose file's apache/kafka), the
models init service, two CPU workers and the bridge in Kafka mode.

Predictions through the bridge and a replay through Kafka's host listener;
then three workers (CONSUMERS=3), one killed with SIGKILL under load, and
every request still answered; a worker started while the broker is stopped
waits for it, then serves; `down -v` leaves no container, volume, network or
pod.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.containers.conftest import FIGURES, free_port, wait_http
from tests.containers.podman import Podman, PodmanError
from tests.support.models import match_truth

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(3600)]

MODEL = "shapes_tf2"
LOAD_CLIENTS = 4


#: Prefixes of TensorFlow's start-up lines, left out of the logs a failure shows.
TF_NOISE = ("I0000", "W0000", "WARNING: All log messages", "To enable the following")


@dataclass
class Stack:
    podman: Podman
    project: str
    bridge_url: str
    kafka_bootstrap: str

    def compose(self, *args: str, timeout_s: float = 600, check: bool = True) -> Any:
        return self.podman.compose("-p", self.project, *args, timeout_s=timeout_s, check=check)

    def containers(self, service: str | None = None, all_states: bool = False) -> list[str]:
        label = f"label=io.podman.compose.project={self.project}"
        filters = ["--filter", label]
        if service:
            filters += ["--filter", f"label=io.podman.compose.service={service}"]
        args = ["ps", *(["-a"] if all_states else []), *filters, "--format", "{{.Names}}"]
        return sorted(self.podman.run(*args).stdout.split())

    def logs(self) -> str:
        out = []
        for name in self.containers(all_states=True):
            text = self.podman.run("logs", "--tail", "200", name, check=False)
            # TensorFlow's start-up lines would push the process's own lines out of the tail.
            lines = [
                line
                for line in (text.stdout + text.stderr).splitlines()
                if not line.startswith(TF_NOISE)
            ]
            out.append(f"--- {name}\n" + "\n".join(lines[-25:]))
        return "\n".join(out)


@pytest.fixture(scope="module")
def stack(
    podman: Podman, cpu_image: str, kafka_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    project = f"tfstream-test-{os.getpid()}"
    kafka_port, bridge_port = free_port(), free_port()
    podman.env.update(KAFKA_PORT=str(kafka_port), BRIDGE_PORT=str(bridge_port))
    podman.env.pop("CONSUMERS", None)  # the file's default: two workers
    stack = Stack(podman, project, f"http://127.0.0.1:{bridge_port}", f"localhost:{kafka_port}")
    started = time.monotonic()
    try:
        stack.compose("-f", "compose.yaml", "up", "-d", "--no-build", timeout_s=900)
        wait_http(f"{stack.bridge_url}/health/ready", 600, "bridge of the stack", stack.logs)
        FIGURES["compose up to a ready bridge (s)"] = round(time.monotonic() - started, 1)
        yield stack
    finally:
        stack.compose("-f", "compose.yaml", "down", "-v", "-t", "5", timeout_s=300, check=False)


def test_services_of_the_stack(stack: Stack) -> None:
    created = stack.containers(all_states=True)
    for service, count in (("kafka", 1), ("consumer", 2), ("bridge", 1)):
        assert len(stack.containers(service, all_states=True)) == count, (service, created)
    for service in ("kafka", "bridge"):
        assert len(stack.containers(service)) == 1, f"{service} not running: {stack.logs()}"
    # The stand-in's health check is the compose file's own command; podman has no timer here.
    kafka = stack.containers("kafka")[0]
    health = stack.podman.run("healthcheck", "run", kafka, check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    for consumer in stack.containers("consumer"):
        assert stack.podman.run("healthcheck", "run", consumer, check=False).returncode == 0
    # podman-compose creates each worker with `--requires` on its dependencies, and
    # `podman start` of a worker starts them again: the one-shot models service runs
    # once more per worker, finds the models there and exits 0 again.
    models = stack.containers("models", all_states=True)
    assert len(models) == 1
    deadline = time.monotonic() + 180
    while (state := stack.podman.inspect("container", models[0])["State"])["Running"]:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(2)
    assert state["ExitCode"] == 0, state


def test_workers_started_before_the_broker_never_failed(stack: Stack) -> None:
    """podman 4.3 cannot wait for health, so the workers start beside a brand-new
    broker that is not listening yet: they must wait for it ("start from nothing"),
    not exit (and be restarted, or not, by the restart policy)."""
    for consumer in stack.containers("consumer", all_states=True):
        info = stack.podman.inspect("container", consumer)
        log = stack.podman.run("logs", consumer, check=False)
        failed = [
            line[:600] for line in (log.stdout + log.stderr).splitlines() if "worker failed" in line
        ]
        assert info["State"]["Running"] and info["RestartCount"] == 0 and not failed, (
            f"{consumer}: {info['State']['Status']}, exit {info['State']['ExitCode']}, "
            f"restarted {info['RestartCount']} times: {failed}"
        )


def _predict(url: str, name: str, data: bytes, timeout_s: float = 60) -> dict[str, Any]:
    files = {"input_data": (name, data, "image/png")}
    response = httpx.post(f"{url}/models/{MODEL}/predict", files=files, timeout=timeout_s)
    return {"status": response.status_code, **response.json()}


def test_bridge_answers_predictions_from_the_workers(
    stack: Stack, shapes_images: tuple[Path, dict[str, Any]]
) -> None:
    folder, truth = shapes_images
    models = httpx.get(f"{stack.bridge_url}/models", timeout=30).json()["data"]["models"]
    assert {"shapes_tf2", "shapes_tf1"} <= set(models)
    for name in [n for n in sorted(truth) if n.endswith(".png") and truth[n]][:3]:
        body = _predict(stack.bridge_url, name, (folder / name).read_bytes())
        assert body["status"] == 200 and body["success"] is True, body
        assert match_truth(body["data"]["bounding-boxes"], truth[name]) == [], name


def test_replay_through_kafka_from_the_host(
    stack: Stack, shapes_images: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """tfstream-replay on the host, through the HOST listener the compose file publishes."""
    folder, _ = shapes_images
    source = tmp_path / "images"
    source.mkdir()
    for image in sorted(folder.glob("*.jpg"))[:20]:
        (source / image.name).write_bytes(image.read_bytes())
    report = tmp_path / "replay.json"
    replay = str(Path(sys.executable).with_name("tfstream-replay"))
    result = subprocess.run(
        [
            replay, "--bootstrap", stack.kafka_bootstrap, "--model", MODEL,
            "--source", str(source), "--count", "40", "--max", "--concurrency", "4",
            "--answer-timeout-s", "60", "--report", str(report), "--no-progress",
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("TFSTREAM_")},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert data["sent"] == 40 and data["answered"] == 40, data["errors"]
    assert data["errors"] == {} and data["timeouts"] == 0
    FIGURES["replay through Kafka (sent/answered, workers)"] = (
        f"{data['sent']}/{data['answered']}, {data['workers']}"
    )


class Load:
    """HTTP clients posting predictions to the bridge until stopped; every outcome counted."""

    def __init__(self, url: str, images: list[tuple[str, bytes, list[dict[str, Any]]]]):
        self.url, self.images = url, images
        self.sent = 0
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(LOAD_CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def answered(self) -> int:
        with self._lock:
            return self.outcomes["answered"]

    def _run(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            name, data, truth = self.images[n % len(self.images)]
            n += LOAD_CLIENTS
            with self._lock:
                self.sent += 1
            try:
                body = _predict(self.url, name, data, timeout_s=90)
                ok = body["status"] == 200 and body.get("success") is True
                problems = match_truth(body["data"]["bounding-boxes"], truth) if ok else []
                outcome = "answered" if ok and not problems else "wrong"
                detail = f"{name}: {body if not ok else problems}"
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                outcome, detail = "failed", f"{name}: {exc!r}"
            with self._lock:
                self.outcomes[outcome] += 1
                if outcome != "answered":
                    self.failures.append(detail)


def _wait_answered(load: Load, more: int, timeout_s: float) -> None:
    target = load.answered() + more
    deadline = time.monotonic() + timeout_s
    while load.answered() < target and time.monotonic() < deadline:
        time.sleep(0.5)
    assert load.answered() >= target, f"{load.outcomes}, {load.failures[:5]}"


def test_three_workers_and_one_killed_under_load(
    stack: Stack, shapes_images: tuple[Path, dict[str, Any]]
) -> None:
    stack.podman.env["CONSUMERS"] = "3"  # kept for `down`, which then removes all three
    stack.compose("-f", "compose.yaml", "up", "-d", "--no-build")
    consumers = stack.containers("consumer")
    assert len(consumers) == 3, consumers
    for consumer in consumers:
        _wait_worker_ready(stack, consumer)

    folder, truth = shapes_images
    images = [(n, (folder / n).read_bytes(), truth[n]) for n in sorted(truth) if n.endswith(".png")]
    victim = consumers[0]
    with Load(stack.bridge_url, images) as load:
        _wait_answered(load, 20, 180)
        before = load.answered()
        stack.podman.run("kill", "--signal", "KILL", victim)
        killed_at = time.monotonic()
        # Its partitions move after the session timeout (10 s): load through and past that.
        _wait_answered(load, 40, 300)
        while time.monotonic() - killed_at < 20:
            time.sleep(0.5)
    FIGURES["SIGKILL under load (sent/answered, answered before the kill)"] = (
        f"{load.sent}/{load.outcomes['answered']}, {before}; outcomes {dict(load.outcomes)}"
    )
    assert load.failures == [], load.failures[:10]
    assert load.outcomes["answered"] == load.sent, load.outcomes


def test_a_worker_started_while_the_broker_is_down_waits_then_serves(
    stack: Stack, shapes_images: tuple[Path, dict[str, Any]]
) -> None:
    """The sure form of "workers started before the broker": with the stack's broker
    stopped, a worker container like the file's starts on the stack's network. It
    waits (still running, never restarted), and once the broker is back it joins
    the group and the bridge answers through the stack again."""
    template = stack.podman.inspect("container", stack.containers("consumer")[0])
    env = [a for e in template["Config"]["Env"] if e.startswith("TFSTREAM_") for a in ("-e", e)]
    network = next(iter(template["NetworkSettings"]["Networks"]))
    models = next(m["Name"] for m in template["Mounts"] if m["Destination"] == "/models")
    kafka = stack.containers("kafka")[0]
    late = f"{stack.project}-late-worker"
    stack.podman.run("stop", "-t", "10", kafka, timeout_s=120)
    try:
        stack.podman.run(
            "run", "-d", "--init", "--restart", "unless-stopped", "--name", late,
            "--network", network,
            "-v", f"{models}:/models:ro", *env, template["ImageName"], "tfstream-consumer",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while "waiting for Kafka" not in (text := _container_log(stack, late)):
            assert time.monotonic() < deadline, f"no wait logged:\n{text[-3000:]}"
            time.sleep(2)
        time.sleep(5)  # a few more attempts against the stopped broker
        state = stack.podman.inspect("container", late)["State"]
        assert state["Running"], f"exited {state['ExitCode']}:\n{_container_log(stack, late)}"
        stack.podman.run("start", kafka)
        _wait_worker_ready(stack, late)
        info = stack.podman.inspect("container", late)
        assert info["State"]["Running"] and info["RestartCount"] == 0
        assert "worker failed" not in _container_log(stack, late)
        folder, truth = shapes_images
        name = next(n for n in sorted(truth) if n.endswith(".png") and truth[n])
        deadline = time.monotonic() + 120
        while (answer := _predict(stack.bridge_url, name, (folder / name).read_bytes()))[
            "status"
        ] != 200:
            assert time.monotonic() < deadline, f"bridge after the broker's restart: {answer}"
            time.sleep(3)
        assert match_truth(answer["data"]["bounding-boxes"], truth[name]) == [], answer
    finally:
        stack.podman.run("rm", "-f", "-t", "5", late, check=False)
        stack.podman.run("start", kafka, check=False)


def _container_log(stack: Stack, name: str) -> str:
    result = stack.podman.run("logs", name, check=False)
    return result.stdout + result.stderr


def _wait_worker_ready(stack: Stack, consumer: str, timeout_s: float = 300) -> None:
    """In the group with its models loaded: the image's health check on /health/ready."""
    deadline = time.monotonic() + timeout_s
    while True:
        probe = stack.podman.run(
            "exec", "-e", "TFSTREAM_HEALTH_URL=http://127.0.0.1:9400/health/ready",
            consumer, "python", "/opt/tfstream/healthcheck.py", check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return
        assert time.monotonic() < deadline, f"{consumer} not ready: {probe.stdout}\n{stack.logs()}"
        time.sleep(2)


def test_down_removes_everything(stack: Stack) -> None:
    """Last in this module: the fixture's own `down -v` then finds nothing left."""
    stack.compose("-f", "compose.yaml", "down", "-v", timeout_s=300)  # the grace periods
    label = f"label=io.podman.compose.project={stack.project}"
    assert stack.containers(all_states=True) == []
    volumes = stack.podman.run("volume", "ls", "--filter", label, "--format", "{{.Name}}")
    assert volumes.stdout.split() == []
    named = stack.podman.run("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [v for v in named if v.startswith(stack.project)], named
    networks = stack.podman.run("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [n for n in networks if n.startswith(stack.project)], networks
    try:
        pods = stack.podman.run("pod", "ls", "--format", "{{.Name}}").stdout.split()
    except PodmanError:
        pods = []
    assert not [p for p in pods if stack.project in p], pods
