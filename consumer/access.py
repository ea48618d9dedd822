"""What Kafka lets this process do, asked before serving, and refusals made readable.

A worker on a cluster with ACLs must either work at once or say exactly which
permission it lacks: otherwise it joins the group, takes partitions and fails
on each record (or retries forever). Kafka has no "may I?" call for ordinary
users, but a Metadata request (v8+) can return, per topic, the operations the
caller is allowed, and DescribeGroups (v3+) the same per group. One round trip
each checks every topic and the group the worker will use.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from aiokafka.protocol.admin import DescribeGroupsResponse_v3
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from consumer.settings import KafkaClientSettings
from engines.errors import NotAuthorized, ServiceUnavailable, TfstreamError

#: Kafka's AclOperation codes: bit n of an "authorized operations" field is operation n.
OPERATIONS = {"Read": 3, "Write": 4, "Create": 5, "Delete": 6, "Describe": 8}
_TOPIC_AUTHORIZATION_FAILED = 29
_GROUP_COORDINATOR = 0
_NOT_COMPUTED = -(2**31)


class _MetadataResponse_v8(Response):
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            Array(
                ("node_id", Int32),
                ("host", String("utf-8")),
                ("port", Int32),
                ("rack", String("utf-8")),
            ),
        ),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("topic", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition", Int32),
                        ("leader", Int32),
                        ("leader_epoch", Int32),
                        ("replicas", Array(Int32)),
                        ("isr", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequest_v8(RequestStruct):
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponse_v8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class _TopicOperationsRequest(Request[_MetadataRequest_v8]):
    """Metadata v8 with `include_topic_authorized_operations` (Kafka 2.3 to 4.x)."""

    API_KEY = 3

    def __init__(self, topics: Sequence[str]) -> None:
        self._topics = list(topics)

    def build(self, request_struct_class: type[_MetadataRequest_v8]) -> _MetadataRequest_v8:
        return request_struct_class(self._topics, False, False, True)


class _DescribeGroupsRequest_v3(RequestStruct):
    """aiokafka's own v3 struct parses the answer as v2, dropping the operations."""

    API_KEY = 15
    API_VERSION = 3
    RESPONSE_TYPE = DescribeGroupsResponse_v3
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


class _GroupOperationsRequest(Request[_DescribeGroupsRequest_v3]):
    """DescribeGroups v3 with `include_authorized_operations`."""

    API_KEY = 15

    def __init__(self, groups: Sequence[str]) -> None:
        self._groups = list(groups)

    def build(
        self, request_struct_class: type[_DescribeGroupsRequest_v3]
    ) -> _DescribeGroupsRequest_v3:
        return request_struct_class(self._groups, True)


def _principal(settings: KafkaClientSettings) -> str:
    if settings.security_protocol.startswith("SASL"):
        return f"User:{settings.sasl_username}"
    if settings.ssl_certfile:
        return f"the principal of certificate {settings.ssl_certfile}"
    return "User:ANONYMOUS"


async def check_access(
    settings: KafkaClientSettings,
    topics: Mapping[str, Sequence[str]],
    group: str | None = None,
) -> None:
    """Fail unless every topic allows its operations (and `group` allows Read).

    `topics` maps a topic name to the operations needed on it ("Read", "Write"...).

    Raises:
        NotAuthorized: names every missing (operation, resource) pair at once, so
            one round of ACL changes fixes them all.
        ServiceUnavailable: the brokers cannot be reached.
    """
    missing = await _missing(settings, topics, group)
    if missing:
        raise NotAuthorized(
            f"{_principal(settings)} is not authorized for: {', '.join(missing)} "
            "(see the ACLs in docs/deploy.md)"
        )


async def _missing(
    settings: KafkaClientSettings, topics: Mapping[str, Sequence[str]], group: str | None
) -> list[str]:
    client = AIOKafkaClient(**settings.client_kwargs(), client_id="tfstream-access-check")
    try:
        await client.bootstrap()
        response: Any = await client.send(
            client.get_random_node(), _TopicOperationsRequest(sorted(topics))
        )
        missing = _missing_on_topics(response, topics)
        if group is not None and not await _may_read_group(client, group):
            missing.append(f"Read on group '{group}'")
        return missing
    except KafkaError as exc:
        raise await explain(exc, settings) from exc
    finally:
        await client.close()


def _missing_on_topics(response: Any, topics: Mapping[str, Sequence[str]]) -> list[str]:
    missing = []
    for error_code, topic, _internal, _partitions, allowed in response.topics:
        for operation in topics.get(topic, ()):
            if error_code == _TOPIC_AUTHORIZATION_FAILED or (
                error_code == 0 and not _allows(allowed, operation)
            ):
                missing.append(f"{operation} on topic '{topic}'")
    return missing


def _allows(allowed: int, operation: str) -> bool:
    """INT32_MIN means "not computed" (a broker without an authorizer): allowed."""
    return allowed == _NOT_COMPUTED or bool(allowed & (1 << OPERATIONS[operation]))


async def _may_read_group(client: AIOKafkaClient, group: str) -> bool:
    """FindCoordinator needs Describe on the group; DescribeGroups v3 then tells Read."""
    try:
        coordinator = await client.coordinator_lookup(_GROUP_COORDINATOR, group)
    except GroupAuthorizationFailedError:
        return False
    response: Any = await client.send(coordinator, _GroupOperationsRequest([group]))
    for error_code, _group, *_rest, allowed in response.groups:
        if error_code or not _allows(allowed, "Read"):
            return False
    return True


def as_not_authorized(
    exc: BaseException, settings: KafkaClientSettings, attempted: str = ""
) -> NotAuthorized | None:
    """The typed error for a broker's refusal, or None if `exc` is something else.

    aiokafka reports a failed SASL handshake only as "unable to bootstrap": the
    credentials are named so the reader does not hunt for a network fault.
    """
    if isinstance(exc, TopicAuthorizationFailedError | GroupAuthorizationFailedError):
        what = f"for: {attempted}" if attempted else f"({exc})"
        return NotAuthorized(f"{_principal(settings)} is not authorized {what}")
    if isinstance(exc, ClusterAuthorizationFailedError):
        return NotAuthorized(f"{_principal(settings)} is not authorized on the cluster: {exc}")
    if isinstance(exc, KafkaConnectionError) and "auth" in str(exc).lower():
        return NotAuthorized(f"Kafka refused the credentials of {_principal(settings)}: {exc}")
    return None


async def explain(exc: BaseException, settings: KafkaClientSettings) -> TfstreamError:
    """The typed error for a failure to reach or use Kafka, with its real cause.

    aiokafka turns every bootstrap failure into "Unable to bootstrap" and only logs
    why. On a secured cluster the why is what the operator needs (a wrong password,
    a broker certificate the CA file does not vouch for), so one direct connection
    attempt is made to recover it. A wrong password is `not_authorized`; TLS and
    network faults stay `service_unavailable`, with the reason in the message.
    """
    refused = as_not_authorized(exc, settings)
    if refused is not None:
        return refused
    reason = str(exc)
    if isinstance(exc, KafkaConnectionError) and settings.security_protocol != "PLAINTEXT":
        cause = await _connect_once(settings)
        if isinstance(cause, AuthenticationFailedError | SaslAuthenticationFailed):
            return NotAuthorized(
                f"Kafka refused the credentials of {_principal(settings)} "
                f"({settings.sasl_mechanism}): {cause}"
            )
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = (
                f"the broker's TLS certificate is not trusted "
                f"(--ssl-cafile {settings.ssl_cafile}): {cause.verify_message}"
            )
        elif cause is not None:
            reason = f"{type(cause).__name__}: {cause}"
    return ServiceUnavailable(f"cannot reach Kafka at {settings.bootstrap}: {reason}")


async def _connect_once(settings: KafkaClientSettings) -> BaseException | None:
    """Connect (TLS handshake, SASL) to the first bootstrap server; return what failed."""
    host, _, port = settings.bootstrap.split(",")[0].strip().rpartition(":")
    kwargs = settings.client_kwargs()
    kwargs.pop("bootstrap_servers")
    try:
        conn = await asyncio.wait_for(
            create_conn(host, int(port), client_id="tfstream-diagnosis", **kwargs), 10
        )
    except Exception as exc:
        return exc
    conn.close()
    return None
