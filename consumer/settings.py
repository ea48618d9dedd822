"""Everything `tfstream-consumer` can be told, as one settings object, and the
parts it shares with the other commands: the Kafka client (with its TLS/SASL
part) and the engine (with its image limits).

Command line first, then `TFSTREAM_<OPTION>`, then these defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from consumer.protocol import check_shadow_name, epoch_ms, shadow_group
from engines.settings import LoggingSettings, SettingsPart, cli_config
from engines.tracing import TracingSettings

#: What a request record carries beside its image, at most: the headers (ids, topic
#: names, trace context, the image's file name) and the record's own framing. The
#: largest image that travels over Kafka is --max-message-bytes minus this.
HEADER_ROOM_BYTES = 64 * 1024

if TYPE_CHECKING:  # engines.images loads Pillow and NumPy, which a Kafka client needs not
    from engines.images import DecodeLimits

#: Default batch limit on the CPU: an engine call there costs about its batch size
#: times one image, so bigger batches only add waiting.
CPU_MAX_BATCH = 8
#: Default batch limit on a GPU. A GPU call costs far less than its batch size times
#: one image (launch and transfer overheads amortise), so batches must be large to
#: feed it; 32 rather than more so that, with the default `max_inflight` of 64, one
#: batch can fill while the previous one runs, and the latency a request waits behind
#: a full batch stays a few milliseconds for a 300x300 detector.
GPU_MAX_BATCH = 32
#: Default engine calls of one model at once on a GPU: while one call's results come
#: back to the host, the next one keeps the device busy (a batch-1 model above all).
GPU_INSTANCES = 2
#: Default on the CPU for a model whose graph takes a fixed batch (most Object
#: Detection API exports take 1): a one-image call leaves cores idle between its
#: operations and around it, and a second call fills them. Two instances of the
#: batch-1 bench export served 31 images/s against 27 with one on this project's
#: 2-core machine (docs/profile.md, "Instances"; docs/benchmarks.md, section 3b).
CPU_FIXED_BATCH_INSTANCES = 2
#: Default on the CPU for a model that batches: its batches already fill the cores,
#: and a second instance only splits them (mean batch 6.1 instead of 7.9 under the
#: Kafka benchmark's 16 in flight, and no more throughput).
CPU_INSTANCES = 1


def parse_shadow_from(text: str) -> int | None:
    """`--shadow-from` as epoch milliseconds: '' (the end), digits (epoch ms) or an
    ISO 8601 time (UTC unless it names a zone).

    Raises:
        ValueError: anything else.
    """
    text = text.strip()
    if not text:
        return None
    return epoch_ms(text, f"shadow-from {text!r}: give epoch milliseconds or an ISO 8601 time")


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask (a container's cpuset,
    `taskset`), not the machine's count, where the platform has one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class KafkaSecuritySettings(SettingsPart):
    """How to prove who we are to the brokers, and check who they are."""

    group_title: ClassVar[str] = "Kafka TLS/SASL"

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How to reach the brokers."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] = (
        "PLAIN"
    )
    """SASL mechanism, with a SASL_* security protocol."""
    sasl_username: str = ""
    """SASL user name."""
    sasl_password: SecretStr = SecretStr("")
    """SASL password (prefer --sasl-password-file or the environment: a command line is
    visible to every user of the machine). Never logged."""
    sasl_password_file: Path | None = None
    """File holding the SASL password (a mounted secret); wins over --sasl-password."""
    ssl_cafile: Path | None = None
    """CA bundle that signed the brokers' certificates (default: the system's)."""
    ssl_certfile: Path | None = None
    """Client certificate, for mutual TLS."""
    ssl_keyfile: Path | None = None
    """Client private key, for mutual TLS."""


class KafkaClientSettings(KafkaSecuritySettings):
    """Connection settings shared by every process that talks to Kafka."""

    model_config = cli_config("tfstream")
    group_title: ClassVar[str] = "Kafka"

    bootstrap: str = ""
    """Kafka bootstrap servers, host:port[,host:port...]."""
    topic_prefix: str = "tfstream"
    """First part of every topic name: <prefix>.requests.<model>, <prefix>.dlq..."""
    client_id: str = ""
    """Kafka client id (default: tfstream-<role>-<host>-<pid>)."""
    broker_timeout_ms: int = Field(default=15_000, gt=0)
    """How long one request to the brokers may take, including waiting for a topic
    to exist."""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=HEADER_ROOM_BYTES)
    """Largest record produced or fetched, and the max.message.bytes of the topics we create.
    Images up to this minus 64 KiB (room for the headers) can be sent; larger ones are
    refused with image_too_large before they are sent."""
    start_timeout_s: float = Field(default=180.0, gt=0)
    """At start-up, how long to keep retrying while the brokers are not there yet or
    not ready (not listening, no group coordinator, no leader, topic being created;
    for tfstream-replay and tfstream-stream, no worker has created a request topic
    yet); then exit 1. A refusal (not_authorized, an untrusted certificate) exits at
    once."""

    def max_record_image_bytes(self) -> int:
        """The largest image a request record can carry (`--max-message-bytes` minus
        `HEADER_ROOM_BYTES`): the one size limit of the Kafka path, applied where a
        request is produced so that a larger image is a client error, never a send
        that fails as if the broker were away."""
        return self.max_message_bytes - HEADER_ROOM_BYTES

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to aiokafka's producer, consumer and admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username or None,
                sasl_plain_password=self.password() or None,
            )
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            )
        return kwargs

    def password(self) -> str:
        """The SASL password, read from its file at each connection set-up, so a
        rotated secret is picked up by the next process start without a new image."""
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text().strip()
        return self.sasl_password.get_secret_value()


class ImageLimitSettings(SettingsPart):
    """What an image may weigh before it is decoded: the engine's guard, and the
    bridge's when it draws boxes."""

    group_title: ClassVar[str] = "Image limits"

    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    """Largest encoded image accepted (bytes)."""
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    """Largest width x height accepted, checked before decoding."""

    def decode_limits(self) -> DecodeLimits:
        from engines.images import DecodeLimits

        return DecodeLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)


class EngineSettings(ImageLimitSettings):
    """How requests are batched and run: shared by the Kafka consumer and the
    bridge's embedded mode."""

    model_config = cli_config("tfstream")
    group_title: ClassVar[str] = "Engine"

    repository: Path = Path("models")
    """The model repository: one folder per model."""
    models: str = "all"
    """Models to serve: 'all' or a comma-separated list of names."""
    device: str = "auto"
    """TensorFlow device for every model of this process: auto, cpu, GPU:0..."""
    max_batch: int = Field(default=0, ge=0)
    """Largest number of requests in one engine call; 0 = by device: 8 on the CPU,
    32 on a GPU. A model whose graph takes a fixed batch gets exactly that; a model's
    config.json `max_batch` wins over this default."""
    max_delay_ms: float = Field(default=0.0, ge=0)
    """How long a batch waits for more requests once one is there. 0 never waits: under
    load, batches still fill from what queues up while the engine runs; raise it (a few
    ms) where a bigger batch costs little more than a small one, as on GPUs. A model's
    config.json `max_delay_ms` wins over this default."""
    instances: int = Field(default=0, ge=0)
    """Engine calls of one model running at once; 0 = by device and model: 2 on a GPU;
    on the CPU 2 for a model whose graph takes a fixed batch (most Object Detection
    API exports take 1), 1 for a model that batches. A model's config.json
    `instances` wins over this default."""
    inference_retries: int = Field(default=1, ge=0)
    """How many more times a failed engine call is run when its error is retriable
    (inference_failed) before its requests are answered with the error."""
    decode_threads: int = Field(default_factory=usable_cores, ge=1)
    """Threads decoding images beside the inference thread (default: the CPU cores this
    process may run on)."""
    decode_device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where JPEGs decode. auto: on the GPU (nvImageCodec, the `gpu` extra) when models
    run on a GPU and it can be used there, else on the CPU; cpu; gpu: fail without it."""

    load_threads: int = Field(default=2, ge=1)
    """Models loaded at the same time at start-up."""
    poll_interval_s: float = Field(default=30.0, ge=0)
    """How often the repository is checked for a new version folder (`<model>/<N>/`),
    which is then loaded beside the serving one and swapped in; 0 = never."""

    conflate_models: str = ""
    """Models whose requests all conflate as if they carried `conflate: latest`: of the
    frames of one key waiting at this worker, only the newest runs and the older ones
    are answered `superseded`. A comma-separated list of names, or 'all'; empty: only
    requests with the header conflate."""

    simulate_batch_ms: float = Field(default=0, ge=0)
    """Benchmarks only: replace every model by a simulated accelerator whose engine call
    takes this many milliseconds whatever the batch size, and finds nothing. 0 = real models."""

    def batch_limit(self, device: str) -> int:
        """`max_batch`, or the default for the device models run on."""
        if self.max_batch:
            return self.max_batch
        return GPU_MAX_BATCH if device.upper().startswith("/GPU") else CPU_MAX_BATCH

    def instance_limit(self, device: str, fixed_batch: int | None) -> int:
        """`instances`, or the default for the device and the model's batching."""
        if self.instances:
            return self.instances
        if device.upper().startswith("/GPU"):
            return GPU_INSTANCES
        return CPU_INSTANCES if fixed_batch is None else CPU_FIXED_BATCH_INSTANCES

    def conflates(self, model: str) -> bool:
        """Whether every request for `model` conflates, header or not."""
        names = {n.strip() for n in self.conflate_models.split(",") if n.strip()}
        return "all" in names or model in names

    def model_names(self) -> list[str] | None:
        """The listed models, or None for every model of the repository."""
        names = [n.strip() for n in self.models.split(",") if n.strip()]
        return None if not names or names == ["all"] else names


class ConsumerSettings(LoggingSettings, TracingSettings, KafkaClientSettings, EngineSettings):
    """tfstream-consumer: serve detection models from Kafka request topics, in a
    consumer group. Every option is also an environment variable TFSTREAM_<OPTION>."""

    model_config = cli_config("tfstream-consumer")

    group: str = "tfstream-workers"
    """Consumer group. Every member of a group must serve the same models."""
    partitions: int = Field(default=6, ge=1)
    """Partitions of the request topics this consumer creates (existing topics keep theirs)."""
    replication_factor: int = Field(default=0, ge=0)
    """Replication of the topics this consumer creates; 0 = min(3, number of brokers)."""
    check_crcs: bool = False
    """Verify each fetched record batch's CRC32C again in the worker. The broker has
    verified it when the batch was produced and TCP protects it on the way, so by
    default the worker does not spend a pass over every image's bytes on it (about
    0.5 ms per 450 KB frame here)."""
    max_inflight: int = Field(default=64, ge=1)
    """Requests fetched but not yet answered; fetching pauses above this."""
    session_timeout_ms: int = 10_000
    """How long the group waits for a dead member before its partitions move."""
    heartbeat_interval_ms: int = 3_000
    """Heartbeat period to the group coordinator."""
    max_poll_interval_ms: int = 300_000
    """Longest time between fetches before the member is thrown out of the group."""
    metadata_max_age_ms: int = 5_000
    """How often new request topics (new models) are discovered."""
    commit_interval_ms: int = 200
    """How often finished offsets are committed (also at every revoke and at shutdown)."""
    linger_ms: int = 0
    """Producer linger for replies; 0 sends each batch's replies at once."""
    announce_ttl_ms: int = 30_000
    """Announcements older than this are stale; workers re-announce every third of it."""
    announce_forget_ms: int = 3_600_000  # protocol.DEFAULT_FORGET_MS
    """How long a worker that stopped (or died) is remembered on <prefix>.models: the
    topic's retention.ms when this worker creates it, and how long bridges keep
    letting requests for a model it alone served wait in Kafka; after it, such a
    model answers 404 again. At least 3 x --announce-ttl-ms."""
    worker_id: str = ""
    """This process's name in replies, announcements and the DLQ (default: host-pid)."""
    metrics_host: str = "0.0.0.0"
    """Address of the metrics and health endpoint."""
    metrics_port: int = 9400
    """Port of /metrics, /health/live and /health/ready; 0 turns it off."""
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    """Longest time to finish the work in hand on SIGTERM before leaving anyway."""
    log_format: Literal["json", "text"] = "json"
    """Structured JSON lines, or plain text for a terminal."""

    answer_log: bool = False
    """Also write every answer (boxes or error, model version, the request's key and
    correlation id, timings) to <prefix>.answers.<model>, whether or not the request named
    a reply-to: the audit trail of what was answered, and tfstream-diff's baseline."""
    tracking: bool = True
    """Track the keyed frames of cameras configured on <prefix>.zones, or of every
    camera of a model whose config.json says `tracking: true`: `track_id` on each box,
    events on <prefix>.events.<model>, state on <prefix>.state.<model>
    (docs/tracking.md). Off: those topics are neither created nor read. A shadow
    never tracks."""
    shadow: str = ""
    """Run as shadow NAME: read the same request topics in the group <group>.shadow.NAME
    and write every answer only to <prefix>.shadow.NAME.<model> (never to reply-to, the
    results topic or the DLQ; never announced as serving; metrics labelled
    role="shadow"). Empty: a serving worker."""
    shadow_from: str = ""
    """Shadow only: where a shadow group that has committed nothing starts reading:
    empty = the end of each request topic (live traffic from now on); epoch milliseconds
    or an ISO 8601 time (UTC unless it names a zone) = the first request at or after it."""

    @field_validator("shadow")
    @classmethod
    def _shadow_name(cls, value: str) -> str:
        return check_shadow_name(value) if value else value

    @field_validator("shadow_from")
    @classmethod
    def _shadow_from(cls, value: str) -> str:
        if value:
            parse_shadow_from(value)
        return value

    @model_validator(mode="after")
    def _forget_after_ttl(self) -> ConsumerSettings:
        if self.announce_forget_ms < 3 * self.announce_ttl_ms:
            raise ValueError(
                "--announce-forget-ms must be at least 3 x --announce-ttl-ms: a live "
                "worker's announcements would be deleted between two re-announcements"
            )
        return self

    @model_validator(mode="after")
    def _shadow_alone(self) -> ConsumerSettings:
        if self.shadow and self.answer_log:
            raise ValueError(
                "--answer-log is for serving workers: a shadow's answers all go to its own "
                "topic already"
            )
        if self.shadow_from and not self.shadow:
            raise ValueError("--shadow-from needs --shadow NAME")
        return self

    def consumer_group(self) -> str:
        """The group this worker joins: `group`, or for a shadow a group of its own."""
        if not self.shadow:
            return self.group
        return shadow_group(self.group, self.shadow)

    def shadow_start_ms(self) -> int | None:
        return parse_shadow_from(self.shadow_from)
