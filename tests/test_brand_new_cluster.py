"""Start with the cluster: workers and a client started at the same moment as a
brand-new broker.

`docker compose up` and a new Kubernetes cluster start workers before the broker
listens, and the broker then has no `__consumer_offsets` (the first group to ask
creates it), no leaders yet, topics being created. The harness here does not
warm anything up: its broker starts with `warm_coordinators=False`, and nothing
joins a group before the workers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from consumer.protocol import Reply
from consumer.settings import KafkaClientSettings
from deploy.local.kafka import LocalKafkaCluster
from deploy.local.processes import BridgeProcess, ConsumerProcess, free_port
from deploy.local.security import HARNESS_PRINCIPAL, SCRAM_MECHANISM, BrokerSecurity, client_env
from producer_tools.client import DetectClient
from tests.support.bridge import predict
from tests.support.models import REPO_ROOT, shapes_png
from tests.support.workers import unique_prefix

pytestmark = [pytest.mark.slow]

MODEL = "shapes_tf2"
USER = "tfstream-worker"


@pytest.mark.kafka
@pytest.mark.timeout(900)
@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_SSL"])
def test_workers_started_before_a_brand_new_broker_become_ready_without_a_restart(
    protocol: str, model_repository: Path, tmp_path: Path
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    secured = protocol == "SASL_SSL"
    cluster = LocalKafkaCluster(
        workdir=tmp_path / "kafka",
        warm_coordinators=False,
        security=BrokerSecurity({USER: password}) if secured else None,
        # ACLs can only be granted once a cluster runs; on a brand-new one the worker
        # is an operator-made super user, as the first service of a cluster often is.
        broker_config={"super.users": f"{HARNESS_PRINCIPAL};User:{USER}"} if secured else None,
    ).plan()
    if secured:
        password_file = tmp_path / "worker.password"
        password_file.write_text(password)
        bootstrap = cluster.sasl_ssl_bootstrap
        env = client_env(bootstrap, cluster.tls, USER, protocol, password_file)
    else:
        bootstrap, env = cluster.bootstrap, {}
    prefix = unique_prefix()
    workers = [
        ConsumerProcess(
            bootstrap,
            model_repository,
            prefix,
            tmp_path,
            extra={**env, "TFSTREAM_MODELS": MODEL, "TFSTREAM_START_TIMEOUT_S": "300"},
        ).start()
        for _ in range(2)
    ]
    settings = KafkaClientSettings(bootstrap=bootstrap, topic_prefix=prefix, start_timeout_s=300)
    if secured:
        settings = settings.model_copy(
            update={
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": SCRAM_MECHANISM,
                "sasl_username": USER,
                "sasl_password": SecretStr(password),
                "ssl_cafile": cluster.tls.ca,
            }
        )
    # A client (what tfstream-replay, tfstream-stream and the Kafka-mode bridge
    # build on) connects before the broker listens too, and asks once the
    # workers are ready.
    workers_ready = threading.Event()
    outcome: dict[str, object] = {}

    async def early_client() -> None:
        async with DetectClient(settings, timeout_s=60) as client:
            await asyncio.to_thread(workers_ready.wait, 600)
            outcome["reply"] = await client.detect(MODEL, shapes_png(320, 240))

    def run_client() -> None:
        try:
            asyncio.run(early_client())
        except Exception as exc:  # reported by the test's thread
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    client = threading.Thread(target=run_client, name="early-client", daemon=True)
    client.start()
    # And a camera streamer, which waits for the broker, then for a worker to create
    # the model's request topic (the workers are still waiting for the broker too).
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        (frames / f"frame_{i}.png").write_bytes(shapes_png(320, 240))
    stream_log = tmp_path / "stream.err"
    with stream_log.open("w") as sink:
        stream = subprocess.Popen(
            [
                sys.executable, "-m", "producer_tools.stream", "--topic-prefix", prefix,
                "--model", MODEL, "--camera", "early", "--source", str(frames),
                "--count", "3", "--deadline-ms", "600000", "--start-timeout-s", "300",
            ],
            cwd=REPO_ROOT, env={**os.environ, **env, "TFSTREAM_BOOTSTRAP": bootstrap},
            stdout=subprocess.PIPE, stderr=sink, text=True,
        )  # fmt: skip
    # And the Kafka-mode bridge, whose connection loop is its own (announcements too).
    bridge = BridgeProcess(
        tmp_path,
        {
            **env,
            "TFSTREAM_BOOTSTRAP": bootstrap,
            "TFSTREAM_TOPIC_PREFIX": prefix,
            "TFSTREAM_START_TIMEOUT_S": "300",
        },
    ).start()
    try:
        cluster.start(timeout_s=180)  # the workers and the client are already trying
        for worker in workers:
            worker.wait_ready(timeout_s=300)
        for worker in workers:
            assert worker.proc is not None and worker.proc.poll() is None
            records = worker.log_records()
            waiting = [r for r in records if r.get("msg") == "waiting for Kafka"]
            assert waiting, "the worker never had to wait: the broker was not brand-new"
            # Once per change of what it waits for, not once per attempt.
            reasons = [(r["step"], r["reason"]) for r in waiting]
            assert len(reasons) == len(set(reasons))
            assert "Traceback" not in worker.log_path.read_text()
            connected = next(r for r in records if r.get("msg") == "connected to Kafka")
            print(f"{protocol}: {worker.name} waited {connected['waited_s']} s for the cluster")
        workers_ready.set()
        client.join(timeout=300)
        assert not client.is_alive(), "the early client never finished"
        assert "error" not in outcome, outcome.get("error")
        reply = outcome["reply"]
        assert isinstance(reply, Reply) and reply.success, reply
        assert reply.model_version == 1
        out, _ = stream.communicate(timeout=300)
        waits = stream_log.read_text()
        assert stream.returncode == 0, waits
        assert "camera early: sent 3 frames" in out and "Traceback" not in waits
        assert "waiting for Kafka step=connecting" in waits, waits  # the broker was not up
        bridge.wait_ready(timeout_s=300)
        answer = predict(bridge, MODEL, shapes_png(320, 240), filename="frame.png")
        assert answer.status_code == 200, answer.text
        assert answer.json()["success"] is True and answer.headers["model-version"] == "1"
        assert "Traceback" not in bridge.log_path.read_text()
        bridge_waits = [r for r in bridge.log_records() if r.get("msg") == "waiting for Kafka"]
        assert bridge_waits, "the bridge never had to wait: the broker was not brand-new"
    finally:
        if stream.poll() is None:
            stream.kill()
        bridge.stop()
        workers_ready.set()
        for worker in workers:
            worker.stop()
        cluster.stop()


def test_a_worker_and_a_bridge_that_never_see_a_broker_give_up_with_one_line(
    tmp_path: Path,
) -> None:
    """Readiness false (liveness true) while waiting; at --start-timeout-s one line, exit 1.

    The bridge waits up to 15 s for Kafka before it serves at all (a bridge
    started beside a running broker answers its first call connected), so its
    timeout here is 30 s: its last retry before giving up comes at about 27.75 s
    (0.25 s doubling to 5 s), about 12 s in which it is seen waiting."""
    nobody = f"127.0.0.1:{free_port()}"
    worker = ConsumerProcess(
        nobody,
        tmp_path,
        unique_prefix(),
        tmp_path,
        extra={"TFSTREAM_START_TIMEOUT_S": "8"},
    ).start()
    bridge = BridgeProcess(
        tmp_path, {"TFSTREAM_BOOTSTRAP": nobody, "TFSTREAM_START_TIMEOUT_S": "30"}
    ).start()
    try:
        # Both probed in one loop: each gives up on its own clock.
        live: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while len(live) < 2:
            with contextlib.suppress(OSError, ValueError):
                if "worker" not in live and worker.health("/health/ready")[0] == 503:
                    live["worker"] = worker.health("/health/live")[0]
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{bridge.url}/health/ready")
                if "bridge" not in live and ready.status_code == 503:
                    live["bridge"] = httpx.get(f"{bridge.url}/health/live").status_code
            assert time.monotonic() < deadline, (live, worker.log_tail(), bridge.log_tail())
            time.sleep(0.1)
        assert live == {"worker": 200, "bridge": 200}
        assert worker.wait(120) == 1
        assert bridge.proc is not None and bridge.proc.wait(120) == 1, bridge.log_tail()
    finally:
        worker.stop()
        bridge.stop()
    for log, waited in ((worker.log_path.read_text(), 8), (bridge.log_path.read_text(), 30)):
        assert "Traceback" not in log
        assert f"not ready after {waited}s" in log, log[-2000:]
        assert f"not ready after {waited}s: " not in log  # said once, not prefixed to itself
    failed = [r for r in worker.log_records() if r.get("msg", "").startswith("worker failed")]
    assert len(failed) == 1 and failed[0]["code"] == "service_unavailable"
