"""tfstream on Kafka as companies run it: SASL_SSL (SCRAM-SHA-512) and mutual TLS,
with the StandardAuthorizer and only the ACLs that docs/deploy.md lists.

One secured broker serves the module. Its users get exactly the documented
`kafka-acls.sh` commands (read from docs/deploy.md), or a documented set minus
one line for the refusal cases. The worker fixture runs once per protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from consumer.settings import KafkaClientSettings
from deploy import healthcheck
from deploy.local.kafka import LocalKafkaCluster
from deploy.local.processes import BridgeProcess, ConsumerProcess
from deploy.local.security import (
    AclBinding,
    AclError,
    BrokerSecurity,
    client_env,
    parse_acl_commands,
)
from engines.errors import NotAuthorized, UntrustedBroker
from engines.settings import parse_cli
from producer_tools.client import DetectClient
from producer_tools.replay import main as replay_main
from producer_tools.results import ResultsSettings, follow
from producer_tools.stream import main as stream_main
from tests.support.bridge import predict as served_predict
from tests.support.models import REPO_ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODEL = "shapes_tf2"
ROLES = ("tfstream-worker", "tfstream-bridge", "tfstream-camera", "tfstream-results")
#: A worker granted the documented ACLs except Read on its group.
WORKER_NO_GROUP = "worker-no-group"
#: A client granted the bridge's ACLs except Write on the request topics.
CLIENT_NO_WRITE = "client-no-write"
API_KEY = "k3y-" + secrets.token_hex(8)


@dataclass
class Secured:
    cluster: LocalKafkaCluster
    prefix: str
    group: str
    passwords: dict[str, str]
    secrets_dir: Path
    log_dir: Path

    def bootstrap(self, protocol: str) -> str:
        return (
            self.cluster.sasl_ssl_bootstrap
            if protocol == "SASL_SSL"
            else self.cluster.ssl_bootstrap
        )

    def password_file(self, user: str, password: str | None = None) -> Path:
        path = self.secrets_dir / f"{user}-{uuid.uuid4().hex[:6]}.password"
        path.write_text((password or self.passwords[user]) + "\n")
        path.chmod(0o600)
        return path

    def env(self, user: str, protocol: str, password: str | None = None) -> dict[str, str]:
        file = self.password_file(user, password) if protocol == "SASL_SSL" else None
        return {
            **client_env(self.bootstrap(protocol), self.cluster.tls, user, protocol, file),
            "TFSTREAM_TOPIC_PREFIX": self.prefix,
        }

    def args(self, user: str, protocol: str, password: str | None = None) -> list[str]:
        """The same settings as command-line options, for the tools run in-process."""
        out: list[str] = []
        for name, value in self.env(user, protocol, password).items():
            out += [f"--{name.removeprefix('TFSTREAM_').lower().replace('_', '-')}", value]
        return out

    def settings(
        self, user: str, protocol: str = "SASL_SSL", **changes: Any
    ) -> KafkaClientSettings:
        settings = KafkaClientSettings(
            bootstrap=self.bootstrap(protocol),
            topic_prefix=self.prefix,
            security_protocol=protocol,  # type: ignore[arg-type]
            ssl_cafile=self.cluster.tls.ca,
        )
        if protocol == "SASL_SSL":
            settings = settings.model_copy(
                update={
                    "sasl_mechanism": "SCRAM-SHA-512",
                    "sasl_username": user,
                    "sasl_password": SecretStr(self.passwords[user]),
                }
            )
        else:
            tls = self.cluster.tls
            settings = settings.model_copy(
                update={"ssl_certfile": tls.client_cert(user), "ssl_keyfile": tls.client_key(user)}
            )
        return settings.model_copy(update=changes)


def documented_acls(prefix: str, group: str) -> list[AclBinding]:
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    return parse_acl_commands(text, {"$PREFIX": prefix, "$GROUP": group})


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    users = (*ROLES, WORKER_NO_GROUP, CLIENT_NO_WRITE)
    passwords = {user: f"pw-{secrets.token_hex(12)}" for user in users}
    cluster = LocalKafkaCluster(
        workdir=tmp_path_factory.mktemp("kafka-secured"), security=BrokerSecurity(passwords)
    )
    cluster.start(timeout_s=120)
    prefix, group = f"sec{uuid.uuid4().hex[:8]}", f"workers-{uuid.uuid4().hex[:6]}"
    try:
        bindings = documented_acls(prefix, group)
        for role in ROLES:
            assert any(b.principal == f"User:{role}" for b in bindings), f"no ACLs for {role}"
        worker = [b for b in bindings if b.principal == "User:tfstream-worker"]
        bridge = [b for b in bindings if b.principal == "User:tfstream-bridge"]
        no_group = [b for b in worker if b.resource_type != "group"]
        no_write = [
            b for b in bridge if b.operation != "Write" or ".requests." not in b.resource_name
        ]
        assert len(no_group) == len(worker) - 1 and len(no_write) == len(bridge) - 1
        cluster.create_acls(
            bindings
            + [_as(b, WORKER_NO_GROUP) for b in no_group]
            + [_as(b, CLIENT_NO_WRITE) for b in no_write]
        )
        yield Secured(
            cluster,
            prefix,
            group,
            passwords,
            tmp_path_factory.mktemp("secrets"),
            tmp_path_factory.mktemp("secured-logs"),
        )
    finally:
        cluster.stop()


def _as(binding: AclBinding, user: str) -> AclBinding:
    return AclBinding(
        f"User:{user}",
        binding.resource_type,
        binding.resource_name,
        binding.pattern_type,
        binding.operation,
        binding.host,
    )


@pytest.fixture(scope="module")
def images(
    shapes_images: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    source, truth = shapes_images
    folder = tmp_path_factory.mktemp("secured-images")
    for name in sorted(n for n in truth if n.endswith(".jpg"))[:4]:
        shutil.copy(source / name, folder / name)
    return folder


def start_worker(
    secured: Secured,
    repository: Path,
    user: str,
    protocol: str,
    password: str | None = None,
    **env: str,
) -> ConsumerProcess:
    return ConsumerProcess(
        bootstrap=secured.bootstrap(protocol),
        repository=repository,
        prefix=secured.prefix,
        log_dir=secured.log_dir,
        group=secured.group,
        extra={**secured.env(user, protocol, password), "TFSTREAM_MODELS": MODEL, **env},
    ).start()


@pytest.fixture(scope="module", params=["SASL_SSL", "SSL"])
def worker(
    request: pytest.FixtureRequest, secured: Secured, model_repository: Path
) -> Iterator[ConsumerProcess]:
    """A worker with only the documented worker ACLs, over SCRAM or over mTLS."""
    proc = start_worker(secured, model_repository, "tfstream-worker", request.param)
    try:
        proc.wait_ready(timeout_s=180)
        yield proc
    finally:
        proc.stop()


def protocol_of(worker: ConsumerProcess) -> str:
    return worker.extra["TFSTREAM_SECURITY_PROTOCOL"]


def start_bridge(secured: Secured, env: dict[str, str], https: bool = False) -> BridgeProcess:
    extra = dict(env)
    if https:
        tls = secured.cluster.tls
        extra.update(
            TFSTREAM_HTTPS_CERTFILE=str(tls.server_cert),
            TFSTREAM_HTTPS_KEYFILE=str(tls.server_key),
            TFSTREAM_API_KEY=API_KEY,
        )
    return BridgeProcess(
        secured.log_dir,
        env={**extra, "TFSTREAM_LOG_LEVEL": "DEBUG", "TFSTREAM_ANSWER_TIMEOUT_S": "60"},
        ca_file=secured.cluster.tls.ca if https else None,
    ).start()


def predict(bridge: BridgeProcess, image: Path, **headers: str) -> httpx.Response:
    return served_predict(
        bridge, MODEL, image.read_bytes(), filename=image.name, headers=headers, timeout_s=90
    )


# ------------------------------------------------------- without a broker


def test_the_password_comes_from_its_file_and_stays_out_of_reprs(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cr3t-from-file\n")
    settings = KafkaClientSettings(
        bootstrap="127.0.0.1:1",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password=SecretStr("s3cr3t-from-env"),
        sasl_password_file=secret,
    )
    assert settings.client_kwargs()["sasl_plain_password"] == "s3cr3t-from-file"
    shown = repr(settings) + str(settings.model_dump())
    assert "s3cr3t" not in shown


def test_the_documented_acls_parse_and_anything_else_is_refused() -> None:
    bindings = documented_acls("p", "g")
    worker = {
        (b.resource_type, b.resource_name, b.pattern_type, b.operation)
        for b in bindings
        if b.principal == "User:tfstream-worker"
    }
    assert ("group", "g", "literal", "Read") in worker
    assert ("topic", "p.requests.", "prefixed", "Read") in worker
    assert ("topic", "p.requests.", "prefixed", "Write") not in worker  # least privilege
    camera = [b for b in bindings if b.principal == "User:tfstream-camera"]
    assert [(b.resource_name, b.operation) for b in camera] == [("p.requests.", "Write")]
    with pytest.raises(AclError, match="--deny-principal"):
        parse_acl_commands(
            "kafka-acls.sh --add --deny-principal User:x --operation Read --topic t", {}
        )
    with pytest.raises(AclError, match="unknown operation"):
        parse_acl_commands("kafka-acls.sh --add --operation Fly --topic t --allow-principal U", {})


# ---------------------------------------------------------------------- it works


def test_bridge_replay_stream_results_with_only_the_documented_acls(
    worker: ConsumerProcess,
    secured: Secured,
    images: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    protocol = protocol_of(worker)
    https = protocol == "SASL_SSL"  # the HTTPS bridge is checked once, on the SCRAM worker
    bridge = start_bridge(secured, secured.env("tfstream-bridge", protocol), https=https)
    image = sorted(images.iterdir())[0]
    try:
        bridge.wait_ready(timeout_s=120)
        answer = predict(bridge, image, **({"X-API-Key": API_KEY} if https else {}))
        assert answer.status_code == 200, answer.text
        assert answer.json()["success"] and answer.json()["data"]["bounding-boxes"]
        if https:
            check_https(bridge, image)
    finally:
        bridge.stop()

    report = tmp_path / "replay.json"
    replay = replay_main(
        [
            *secured.args("tfstream-bridge", protocol),
            "--model", MODEL, "--source", str(images), "--max", "--concurrency", "2",
            "--count", "4", "--report", str(report), "--no-progress",
        ]
    )  # fmt: skip
    assert replay == 0, capfd.readouterr().err
    replayed = json.loads(report.read_text())
    assert replayed["sent"] == replayed["answered"] == 4, replayed["errors"]

    camera = f"cam-{protocol.lower()}"
    streamed = stream_main(
        [
            *secured.args("tfstream-camera", protocol),
            "--model", MODEL, "--camera", camera, "--source", str(images),
            "--fps", "20", "--count", "3", "--deadline-ms", "120000",
        ]
    )  # fmt: skip
    assert streamed == 0, capfd.readouterr().err
    capfd.readouterr()
    # follow() itself: main() prints to the sys.stdout of import time, out of capfd's reach.
    settings = parse_cli(
        ResultsSettings,
        [
            *secured.args("tfstream-results", protocol),
            "--model", MODEL, "--camera", camera, "--from-beginning", "--count", "3",
            "--idle-timeout-s", "60", "--output", "json",
        ],
    )  # fmt: skip
    buffer = io.StringIO()
    assert asyncio.run(follow(settings, out=buffer)) == 3
    out = buffer.getvalue()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 3 and all(line["success"] and line["boxes"] > 0 for line in lines), out

    # The passwords came from files: none of them may appear in what the processes logged.
    logs = worker.log_path.read_text(errors="replace") + bridge.log_path.read_text(errors="replace")
    assert "connected to Kafka" in logs
    for password in secured.passwords.values():
        assert password not in logs


def check_https(bridge: BridgeProcess, image: Path) -> None:
    """Predict over TLS needs the key; probes work over TLS; plain HTTP gets nothing."""
    refused = predict(bridge, image)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    ready = httpx.get(f"{bridge.url}/health/ready", verify=bridge.verify, timeout=10)
    assert ready.status_code == 200
    metrics = httpx.get(
        f"{bridge.url}/metrics", headers={"X-API-Key": API_KEY}, verify=bridge.verify, timeout=10
    )
    assert metrics.status_code == 200 and "# TYPE" in metrics.text
    assert healthcheck.probe(f"{bridge.url}/health/live")[0]  # the image's HEALTHCHECK
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{bridge.port}/health/live", timeout=10)
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
        httpx.get(f"{bridge.url}/health/live", timeout=10)


# -------------------------------------------------------------------- refusals


@pytest.mark.asyncio
async def test_a_client_without_write_is_refused_and_the_worker_serves_the_others(
    worker: ConsumerProcess, secured: Secured, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    protocol = protocol_of(worker)
    topic = f"{secured.prefix}.requests.{MODEL}"
    before = await end_offsets(secured, topic)
    image = sorted(images.iterdir())[0].read_bytes()

    async with DetectClient(secured.settings(CLIENT_NO_WRITE, protocol)) as client:
        began = time.monotonic()
        with pytest.raises(NotAuthorized) as refused:
            await client.detect(MODEL, image)
        assert time.monotonic() - began < 10
    assert refused.value.code == "not_authorized"
    assert f"Write on topic '{topic}'" in refused.value.message

    replay = await asyncio.to_thread(
        replay_main,
        [
            *secured.args(CLIENT_NO_WRITE, protocol),
            "--model",
            MODEL,
            "--source",
            str(images),
            "--max",
        ],
    )
    err = capsys.readouterr().err
    assert replay == 1 and "error: [not_authorized]" in err and f"Write on topic '{topic}'" in err

    streamed = await asyncio.to_thread(
        stream_main,
        [
            *secured.args(CLIENT_NO_WRITE, protocol),
            "--model",
            MODEL,
            "--source",
            str(images),
            "--camera",
            "c1",
        ],
    )
    assert streamed == 1 and "error: [not_authorized]" in capsys.readouterr().err

    # Nothing of the refused client reached the topic; the worker answers the others.
    assert await end_offsets(secured, topic) == before
    async with DetectClient(secured.settings("tfstream-bridge", protocol)) as client:
        reply = await client.detect(MODEL, image, timeout_s=60)
    assert reply.success and reply.worker == f"w-{worker.name}"
    assert await end_offsets(secured, topic) != before


async def end_offsets(secured: Secured, topic: str) -> dict[int, int]:
    """Read as the harness super user (the PLAINTEXT listener)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=secured.cluster.bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]

    consumer = AIOKafkaConsumer(bootstrap_servers=secured.cluster.bootstrap)
    await consumer.start()
    try:
        return {tp.partition: off for tp, off in (await consumer.end_offsets(partitions)).items()}
    finally:
        await consumer.stop()


def test_a_worker_refused_exits_at_once_saying_why(
    secured: Secured, model_repository: Path
) -> None:
    """Missing group ACL, wrong password, untrusted broker: exit 1 in seconds, no retry loop."""
    wrong = "wrong-" + secrets.token_hex(8)
    untrusted = str(secured.cluster.tls.untrusted_ca)
    cases = {
        f"is not authorized for: Read on group '{secured.group}'": start_worker(
            secured, model_repository, WORKER_NO_GROUP, "SASL_SSL"
        ),
        "refused the credentials of User:tfstream-worker": start_worker(
            secured, model_repository, "tfstream-worker", "SASL_SSL", password=wrong
        ),
        "TLS certificate is not trusted": start_worker(
            secured, model_repository, "tfstream-worker", "SSL", TFSTREAM_SSL_CAFILE=untrusted
        ),
    }
    try:
        for expected, proc in cases.items():
            assert proc.wait(timeout_s=90) == 1, proc.log_tail()
            log = proc.log_path.read_text(errors="replace")
            assert expected in log, log[-3000:]
            assert "worker started" not in log and "partitions assigned" not in log
            for password in (wrong, *secured.passwords.values()):
                assert password not in log
    finally:
        for proc in cases.values():
            proc.stop()


@pytest.mark.asyncio
async def test_clients_refused_at_connection_say_why_within_seconds(
    secured: Secured, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = secured.settings("tfstream-bridge", sasl_password=SecretStr("not-the-password"))
    began = time.monotonic()
    with pytest.raises(NotAuthorized, match="refused the credentials of User:tfstream-bridge"):
        await DetectClient(wrong).start()
    untrusted = secured.settings("tfstream-bridge", ssl_cafile=secured.cluster.tls.untrusted_ca)
    with pytest.raises(UntrustedBroker, match="TLS certificate is not trusted"):
        await DetectClient(untrusted).start()
    assert time.monotonic() - began < 20

    code = await asyncio.to_thread(
        replay_main,
        [
            *secured.args("tfstream-bridge", "SASL_SSL", password="not-the-password"),
            "--model", MODEL, "--source", str(images), "--max",
        ],
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "error: [not_authorized]" in err and "not-the-password" not in err


def test_a_bridge_whose_own_credentials_are_refused_answers_503(
    secured: Secured, images: Path
) -> None:
    bridge = start_bridge(secured, secured.env("tfstream-bridge", "SASL_SSL", password="nope-nope"))
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"{bridge.url}/health/ready", timeout=5)
                if ready.status_code == 503 and ready.json().get("broker") == "not_authorized":
                    break
            assert time.monotonic() < deadline, bridge.log_tail()
            time.sleep(0.5)
        answer = predict(bridge, sorted(images.iterdir())[0])
        assert answer.status_code == 503 and answer.json()["code"] == "service_unavailable"
        assert "refused the bridge" in answer.json()["error"]
        assert "refused the credentials of User:tfstream-bridge" in answer.json()["error"]
    finally:
        bridge.stop()
    assert "nope-nope" not in bridge.log_path.read_text()


def test_a_bridge_without_write_on_a_model_answers_403(
    worker: ConsumerProcess, secured: Secured, images: Path
) -> None:
    bridge = start_bridge(secured, secured.env(CLIENT_NO_WRITE, protocol_of(worker)))
    try:
        bridge.wait_ready(timeout_s=120)
        answer = predict(bridge, sorted(images.iterdir())[0])
    finally:
        bridge.stop()
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert body["success"] is False and body["code"] == "not_authorized"
    assert f"Write on topic '{secured.prefix}.requests.{MODEL}'" in body["error"]
