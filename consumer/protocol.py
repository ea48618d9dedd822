"""Wire protocol v1: topic names, headers, and the JSON bodies of replies,
announcements and control commands. See docs/protocol.md.

This is the only module that knows header names. It maps a record to a
`Request` and a reply to (key, value, headers), with no broker involved, so
every rule here is unit-testable and shared by the consumer, the bridge and
the client tools.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engines.errors import InvalidRequest, TfstreamError

if TYPE_CHECKING:  # engines.boxes loads NumPy, which a Kafka client needs not
    from engines.boxes import Box

PROTOCOL_VERSION = 1

# -- headers (UTF-8 strings) -------------------------------------------------
CORRELATION_ID = "correlation-id"
REPLY_TO = "reply-to"
DEADLINE_MS = "deadline-ms"
CONFIDENCE = "confidence"
PREDICTIONS = "predictions"
IMAGE_NAME = "image-name"
CONTENT_TYPE = "content-type"
ERROR_CODE = "error-code"
#: On answers: the version of the weights that produced it (absent when none ran).
MODEL_VERSION = "model-version"
CONFLATE = "conflate"
#: The one value of `conflate` that asks for anything: only the newest waiting frame
#: of the record's key runs, older ones are answered `superseded`.
CONFLATE_LATEST = "latest"
# W3C Trace Context (https://www.w3.org/TR/trace-context/): optional on requests,
# put on answers by a worker that continued the trace.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_HEADERS = (TRACEPARENT, TRACESTATE)
# DLQ copies carry these beside the original headers.
DLQ_REASON_CODE = "dlq-reason-code"
DLQ_REASON = "dlq-reason"
DLQ_TOPIC = "dlq-source-topic"
DLQ_PARTITION = "dlq-source-partition"
DLQ_OFFSET = "dlq-source-offset"
DLQ_WORKER = "dlq-worker"
# Answer-log and shadow records (`consumer.answer_log`) carry these beside
# correlation-id, content-type and error-code.
ANSWER_ROLE = "answer-role"
"""`serving` on `<prefix>.answers.<model>`, `shadow` on `<prefix>.shadow.<name>.<model>`."""
SHADOW_NAME = "shadow-name"

Headers = Sequence[tuple[str, bytes]]


# -- topics -------------------------------------------------------------------
_TOPIC_SAFE = re.compile(r"[A-Za-z0-9._-]+")
_MAX_TOPIC = 249


def topic_suffix(model: str) -> str:
    """The model's part of a topic name.

    Names made only of ASCII letters, digits, '.', '_' and '-' are used as they
    are (every name our repository accepts is one). Others get each other
    character replaced by '_' and '-' plus the first 8 hex digits of the SHA-1
    of the UTF-8 name appended, so two names never share a topic.
    """
    if _TOPIC_SAFE.fullmatch(model) and len(model) <= 200:
        return model
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model)[:190]
    return f"{safe}-{hashlib.sha1(model.encode()).hexdigest()[:8]}"


#: A shadow name is one segment of a topic name: no '.', so the model that follows
#: it in `<prefix>.shadow.<name>.<model>` is unambiguous.
SHADOW_NAME_RULE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_shadow_name(name: str) -> str:
    """Raises: ValueError naming the rule, for a name that cannot be a topic segment."""
    if not SHADOW_NAME_RULE.fullmatch(name):
        raise ValueError(
            f"shadow name {name!r}: use 1 to 64 ASCII letters, digits, '_' or '-' (no '.')"
        )
    return name


def shadow_group(group: str, name: str) -> str:
    """A shadow's consumer group, derived from the serving group's name so that a
    shadow can never join (and take partitions from) the serving group."""
    return f"{group}.shadow.{name}"


@dataclass(frozen=True)
class Topics:
    prefix: str = "tfstream"

    def requests(self, model: str) -> str:
        return f"{self.prefix}.requests.{topic_suffix(model)}"

    def results(self, model: str) -> str:
        return f"{self.prefix}.results.{topic_suffix(model)}"

    def answers(self, model: str) -> str:
        """The answer log: every answer the serving group gave (`--answer-log`)."""
        return f"{self.prefix}.answers.{topic_suffix(model)}"

    def shadow(self, name: str, model: str) -> str:
        """Everything shadow `name` answered; nobody but `tfstream-diff` and the live
        page reads it. `name` has no '.', so the model is whatever follows it."""
        return f"{self.prefix}.shadow.{name}.{topic_suffix(model)}"

    def state(self, model: str) -> str:
        """Tracking: each camera's state (compacted, key = camera), on the partition
        number of the camera's requests (docs/protocol.md, "Tracking")."""
        return f"{self.prefix}.state.{topic_suffix(model)}"

    def events(self, model: str) -> str:
        """Tracking: line crossings and zone enter/leave/dwell, key = camera."""
        return f"{self.prefix}.events.{topic_suffix(model)}"

    @property
    def zones(self) -> str:
        """Tracking: each camera's tracking, zones and lines (compacted, key = camera;
        `tfstream-zones` writes it). Not `<prefix>.cameras`, where the camera gateway
        publishes each camera's connection state under the same keys."""
        return f"{self.prefix}.zones"

    @property
    def requests_pattern(self) -> str:
        return rf"^{re.escape(self.prefix)}\.requests\..+"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def models(self) -> str:
        return f"{self.prefix}.models"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"

    def is_request_topic(self, topic: str) -> bool:
        return re.match(self.requests_pattern, topic) is not None

    def model_of(self, request_topic: str) -> str:
        """The model a request topic belongs to (the suffix; see `topic_suffix`)."""
        return request_topic.removeprefix(f"{self.prefix}.requests.")


# -- requests -----------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A detection request as the worker sees it, headers already checked."""

    model: str
    correlation_id: str
    image: bytes
    key: bytes | None = None
    reply_to: str | None = None
    deadline_ms: int | None = None
    confidence: float | None = None
    predictions: int | None = None
    image_name: str | None = None
    content_type: str | None = None
    conflate: bool = False
    """Only the newest waiting frame of this key runs (`conflate: latest`)."""

    def expired(self, now_ms: float | None = None) -> bool:
        now = time.time() * 1000 if now_ms is None else now_ms
        return self.deadline_ms is not None and now > self.deadline_ms

    def headers(self) -> list[tuple[str, bytes]]:
        """The headers a client sends for this request."""
        values: dict[str, object | None] = {
            CORRELATION_ID: self.correlation_id,
            REPLY_TO: self.reply_to,
            DEADLINE_MS: self.deadline_ms,
            CONFIDENCE: self.confidence,
            PREDICTIONS: self.predictions,
            IMAGE_NAME: self.image_name,
            CONTENT_TYPE: self.content_type,
            CONFLATE: CONFLATE_LATEST if self.conflate else None,
        }
        return [(k, str(v).encode()) for k, v in values.items() if v is not None]


def header_map(headers: Headers | None) -> dict[str, str]:
    """Headers as text; the last value of a repeated header wins.

    Raises:
        InvalidRequest: a header value that is not UTF-8.
    """
    out: dict[str, str] = {}
    for name, raw in headers or ():
        try:
            out[name] = (raw or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"header '{name}' is not UTF-8") from None
    return out


def parse_request(
    model: str, key: bytes | None, value: bytes | None, headers: Headers | None
) -> Request:
    """Check a request record's headers and build the `Request`.

    Raises:
        InvalidRequest: missing correlation id or a malformed header; the message
            names the header.
    """
    h = header_map(headers)
    correlation_id = h.get(CORRELATION_ID, "").strip(HEADER_WHITESPACE)
    if not correlation_id:
        raise InvalidRequest(f"the '{CORRELATION_ID}' header is required")
    if len(correlation_id) > 256:
        raise InvalidRequest(f"the '{CORRELATION_ID}' header is longer than 256 characters")
    confidence = _number(h, CONFIDENCE, float)
    if confidence is not None and not 0 <= confidence <= 100:
        raise InvalidRequest(f"header '{CONFIDENCE}' must be a percentage in [0, 100]")
    predictions = _number(h, PREDICTIONS, int)
    if predictions is not None and predictions < 0:
        raise InvalidRequest(f"header '{PREDICTIONS}' must be >= 0")
    deadline = _number(h, DEADLINE_MS, int)
    reply_to = h.get(REPLY_TO) or None
    if reply_to is not None and not (
        _TOPIC_SAFE.fullmatch(reply_to) and len(reply_to) <= _MAX_TOPIC
    ):
        raise InvalidRequest(f"header '{REPLY_TO}' is not a valid topic name")
    conflate = h.get(CONFLATE, "").strip()
    if conflate not in ("", CONFLATE_LATEST):
        raise InvalidRequest(f"header '{CONFLATE}' must be '{CONFLATE_LATEST}' or absent")
    return Request(
        model=model,
        correlation_id=correlation_id,
        image=value or b"",
        key=key,
        reply_to=reply_to,
        deadline_ms=deadline,
        confidence=confidence,
        predictions=predictions,
        image_name=h.get(IMAGE_NAME) or None,
        content_type=h.get(CONTENT_TYPE) or None,
        conflate=bool(conflate),
    )


_W3C = TraceContextTextMapPropagator()


def trace_context(headers: Headers | None) -> Context:
    """The trace context a record's `traceparent`/`tracestate` carry (empty when
    absent or malformed: a bad trace header never fails a request)."""
    carrier: dict[str, str] = {}
    for name, raw in headers or ():
        if name in TRACE_HEADERS:
            carrier[name] = (raw or b"").decode("latin-1")
    return _W3C.extract(carrier) if carrier else Context()


def with_trace(
    headers: Sequence[tuple[str, bytes]], context: Context | None = None
) -> list[tuple[str, bytes]]:
    """`headers` with the trace headers of `context` (default: the current span),
    replacing any already there; unchanged when there is no valid span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context)
    if not carrier:
        return list(headers)
    kept = [(name, value) for name, value in headers if name not in TRACE_HEADERS]
    return kept + [(name, carrier[name].encode()) for name in TRACE_HEADERS if name in carrier]


#: Around a correlation id or a number, these are ignored; nothing else is trimmed.
HEADER_WHITESPACE = " \t\r\n"
#: Number syntax, the same in every language: ASCII digits, an optional '-', and for
#: decimals a fraction and an exponent. No '+', '_', hex, 'inf' or 'nan'.
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _number(h: dict[str, str], name: str, kind: type[int] | type[float]) -> Any:
    text = h.get(name)
    if text is None or text.strip(HEADER_WHITESPACE) == "":
        return None  # an empty value is an absent header
    value = text.strip(HEADER_WHITESPACE)
    syntax = _INTEGER if kind is int else _DECIMAL
    if not syntax.fullmatch(value):
        raise InvalidRequest(
            f"header '{name}' is not a valid {'integer' if kind is int else 'number'}: "
            f"{text[:50]!r}"
        )
    return kind(value)


def reply_address(
    topics: Topics, model: str, headers: Headers | None
) -> tuple[str | None, str | None]:
    """Where to answer a record even when it is too broken to parse: (topic, correlation id).

    A record without a correlation id has nobody waiting for it by id, but it
    still gets an answer on its reply topic (or the results topic) so that a
    camera-stream reader sees that a frame failed.
    """
    try:
        h = header_map(headers)
    except InvalidRequest:
        return topics.results(model), None
    reply_to = h.get(REPLY_TO) or None
    if reply_to is not None and not _TOPIC_SAFE.fullmatch(reply_to):
        reply_to = None
    correlation_id = (h.get(CORRELATION_ID) or "").strip(HEADER_WHITESPACE) or None
    return reply_to or topics.results(model), correlation_id


# -- replies ------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    queue_ms: float = 0.0
    """From the record's arrival at the worker to the start of its batch."""
    decode_ms: float = 0.0
    inference_ms: float = 0.0
    """The whole engine call of the image's batch."""
    batch_size: int = 0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "queue_ms": round(self.queue_ms, 3),
            "decode_ms": round(self.decode_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "batch_size": self.batch_size,
        }


@dataclass(frozen=True)
class Reply:
    correlation_id: str | None
    model: str
    data: dict[str, Any] | None = None
    error: TfstreamError | None = None
    timing: Timing = Timing()
    worker: str = ""
    model_version: int | None = None
    """The version of the weights the request was given to, also when it failed there
    (None: none was resolved, as for an unknown model or a malformed request)."""

    @property
    def success(self) -> bool:
        return self.error is None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "protocol": PROTOCOL_VERSION,
                "correlation_id": self.correlation_id,
                "model": self.model,
                "success": self.success,
                "data": self.data,
                "error": None if self.error is None else self.error.to_dict(),
                "timing": self.timing.to_dict(),
                "worker": self.worker,
                "model_version": self.model_version,
            },
            separators=(",", ":"),
        ).encode()

    def headers(self) -> list[tuple[str, bytes]]:
        out = [(CONTENT_TYPE, b"application/json")]
        if self.correlation_id is not None:
            out.insert(0, (CORRELATION_ID, self.correlation_id.encode()))
        if self.error is not None:
            out.append((ERROR_CODE, self.error.code.encode()))
        if self.model_version is not None:
            out.append((MODEL_VERSION, str(self.model_version).encode()))
        return out

    @staticmethod
    def from_json(value: bytes) -> Reply:
        """Parse a reply body.

        Raises:
            InvalidRequest: not a reply of this protocol.
        """
        try:
            body = json.loads(value)
            timing = body.get("timing") or {}
            error = body.get("error")
            return Reply(
                correlation_id=body.get("correlation_id"),
                model=str(body["model"]),
                data=body.get("data"),
                error=None if not error else TfstreamError.from_dict(error),
                timing=Timing(**{k: timing[k] for k in Timing.__dataclass_fields__ if k in timing}),
                worker=str(body.get("worker") or ""),
                model_version=_optional_int(body.get("model_version")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidRequest(f"not a tfstream reply: {exc}") from None


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def detection_data(
    boxes: Sequence[Box], image_name: str | None, width: int, height: int
) -> dict[str, Any]:
    """The `data` of a successful reply: the old API's box list plus image facts."""
    return {
        "bounding-boxes": list(boxes),
        "ImageName": image_name,
        "width": width,
        "height": height,
    }


#: Longest `dlq-reason` value, in bytes of UTF-8.
DLQ_REASON_MAX_BYTES = 4000


def truncate_utf8(text: str, max_bytes: int) -> bytes:
    """At most `max_bytes` of UTF-8, cut before a character, never inside one: a
    reader in any language must be able to decode the header."""
    return text.encode()[:max_bytes].decode("utf-8", "ignore").encode()


def dlq_headers(
    original: Headers | None,
    error: TfstreamError,
    topic: str,
    partition: int,
    offset: int,
    worker: str,
) -> list[tuple[str, bytes]]:
    return [
        *(original or ()),
        (DLQ_REASON_CODE, error.code.encode()),
        (DLQ_REASON, truncate_utf8(error.message, DLQ_REASON_MAX_BYTES)),
        (DLQ_TOPIC, topic.encode()),
        (DLQ_PARTITION, str(partition).encode()),
        (DLQ_OFFSET, str(offset).encode()),
        (DLQ_WORKER, worker.encode()),
    ]


def epoch_ms(text: str, hint: str) -> int:
    """A moment as Kafka timestamps count: digits are epoch milliseconds already, else
    an ISO 8601 time (UTC unless it names a zone).

    Raises:
        ValueError: anything else, saying `hint`.
    """
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(hint) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# -- announcements and control -------------------------------------------------


class ModelState(StrEnum):
    LOADING = "loading"
    """Announced at start-up before loading: a worker is coming for this model."""
    READY = "ready"
    FAILED = "failed"
    """Present in the worker's repository but could not be loaded; see `error`."""
    STOPPED = "stopped"
    """Announced on a clean shutdown (instead of deleting the announcement): the model
    exists and requests for it wait in Kafka for the next worker."""


def announcement_key(model: str, worker: str) -> bytes:
    """One compacted record per (model, worker): workers never overwrite each other."""
    return f"{model}|{worker}".encode()


@dataclass(frozen=True)
class ModelFacts:
    """One model's facts: what a worker announces of it, what the bridge's directory
    makes of the live announcements, and what either bridge backend answers from.
    One record, so that a fact added here reaches every reader the same way."""

    name: str
    hash: str
    state: ModelState
    engine: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    """The full config.json; the bridge shows the public part."""
    labels: list[str] = field(default_factory=list)
    """In class id order."""
    label_hashes: dict[str, str] = field(default_factory=dict)
    error: dict[str, str] | None = None
    """Why it is not served (FAILED), as `TfstreamError.to_dict`."""
    version: int = 0
    """The version serving (or loading); 0 when not known yet."""
    fingerprint: str = ""
    """Of the weights serving: the SavedModel's fingerprint.pb, else a content hash."""


#: The announcement's JSON keys in wire order ("model" is `ModelFacts.name`).
_ANNOUNCEMENT_KEYS = (
    "model",
    "worker",
    "state",
    "hash",
    "engine",
    "config",
    "labels",
    "label_hashes",
    "device",
    "error",
    "updated_ms",
    "ttl_ms",
    "version",
    "fingerprint",
    "versions",
    "forget_ms",
)
_FACT_KEYS = {"model": "name"} | {f: f for f in ModelFacts.__dataclass_fields__ if f != "name"}
# A fact added to ModelFacts must be written too, not only read (its order is fixed).
assert set(_FACT_KEYS) <= set(_ANNOUNCEMENT_KEYS), set(_FACT_KEYS) - set(_ANNOUNCEMENT_KEYS)


#: How long a worker that stopped or died is remembered on `<prefix>.models`, unless
#: its announcements say otherwise (`--announce-forget-ms`).
DEFAULT_FORGET_MS = 3_600_000


@dataclass(frozen=True)
class Announcement:
    """What a worker says about one model on `<prefix>.models` (compacted): the
    model's facts, and the worker's own.

    A worker re-announces every `ttl_ms / 3`; readers ignore records older than
    `ttl_ms`, which is how a killed worker's models disappear. A record older than
    `forget_ms` (a worker that stopped or died that long ago) is forgotten: the
    topic deletes it, readers drop it, and its model no longer counts as announced.
    """

    facts: ModelFacts
    worker: str
    device: str = ""
    updated_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    ttl_ms: int = 30_000
    forget_ms: int = DEFAULT_FORGET_MS
    """How long after `updated_ms` the record is remembered at all (default for
    records of workers older than the field: one hour)."""
    versions: list[dict[str, Any]] = field(default_factory=list)
    """Every version this worker tried: {version, state, fingerprint} or {version,
    state: failed, error}; a newer version that failed beside the serving one shows
    here only, the model itself stays ready."""

    def alive(self, now_ms: float | None = None) -> bool:
        now = time.time() * 1000 if now_ms is None else now_ms
        return now - self.updated_ms <= self.ttl_ms

    def forgotten(self, now_ms: float | None = None) -> bool:
        """Whether the record is too old to count at all, even as "a worker once
        served this model" (`forget_ms` after its last write)."""
        now = time.time() * 1000 if now_ms is None else now_ms
        return now - self.updated_ms > self.forget_ms

    def to_json(self) -> bytes:
        def value(key: str) -> Any:
            if key in _FACT_KEYS:
                return getattr(self.facts, _FACT_KEYS[key])
            return getattr(self, key)

        body = {key: value(key) for key in _ANNOUNCEMENT_KEYS}
        body["state"] = self.facts.state.value
        body["protocol"] = PROTOCOL_VERSION
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def from_json(value: bytes) -> Announcement:
        body = json.loads(value)
        facts = {field: body[key] for key, field in _FACT_KEYS.items() if key in body}
        facts["state"] = ModelState(facts["state"])
        own = {k: body[k] for k in Announcement.__dataclass_fields__ if k in body}
        return Announcement(ModelFacts(**facts), **own)


class ControlCommand(StrEnum):
    LOAD = "load"
    """Load (or with force, reload) `model`, or every model of the repository for '*'."""


@dataclass(frozen=True)
class Control:
    """A command on `<prefix>.control`, read by every worker (no consumer group)."""

    command: ControlCommand
    model: str = "*"
    force: bool = False
    correlation_id: str = ""
    reply_to: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "protocol": PROTOCOL_VERSION,
                "command": self.command.value,
                "model": self.model,
                "force": self.force,
                "correlation_id": self.correlation_id,
                "reply_to": self.reply_to,
            }
        ).encode()

    @staticmethod
    def from_json(value: bytes) -> Control:
        """Raises: InvalidRequest for anything but a well-formed command."""
        try:
            body = json.loads(value)
            return Control(
                command=ControlCommand(body["command"]),
                model=str(body.get("model") or "*"),
                force=bool(body.get("force", False)),
                correlation_id=str(body.get("correlation_id") or ""),
                reply_to=body.get("reply_to") or None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidRequest(f"not a control command: {exc}") from None
