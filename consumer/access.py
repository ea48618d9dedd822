"""What Kafka lets this process do, asked before serving, and refusals made readable.

A worker on a cluster with ACLs must either work at once or say exactly which
permission it lacks: otherwise it joins the group, takes partitions and fails
on each record (or retries forever). Kafka has no "may I?" call for ordinary
users, but a Metadata request (v8+) can return, per topic, the operations the
caller is allowed, and DescribeGroups (v3+) the same per group. One round trip
each checks every topic and the group the worker will use.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence

from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    for_code,
)

from consumer import kafka_requests
from consumer.settings import KafkaClientSettings
from engines.errors import NotAuthorized, ServiceUnavailable, TfstreamError, UntrustedBroker


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
    client = kafka_requests.client(settings.client_kwargs(), "tfstream-access-check")
    try:
        await client.bootstrap()
        missing = [
            f"{operation} on topic '{answer.name}'"
            for answer in await kafka_requests.topic_operations(client, sorted(topics))
            for operation in topics.get(answer.name, ())
            if answer.error_code == TopicAuthorizationFailedError.errno
            or (answer.error_code == 0 and not answer.allows(operation))
        ]
        if group is not None and not await _may_read_group(client, group):
            missing.append(f"Read on group '{group}'")
        return missing
    except KafkaError as exc:
        raise await explain(exc, settings) from exc
    finally:
        await client.close()


async def _may_read_group(client: kafka_requests.Client, group: str) -> bool:
    """FindCoordinator needs Describe on the group; DescribeGroups v3 then tells Read."""
    try:
        answer = await kafka_requests.group_operations(client, group)
    except GroupAuthorizationFailedError:
        return False
    if answer.error_code and answer.error_code != GroupAuthorizationFailedError.errno:
        # A coordinator still loading (or moved) on a new cluster: for the caller to
        # retry (consumer.startup), not a refusal.
        raise for_code(answer.error_code)(f"describing group '{group}'")
    return answer.error_code == 0 and answer.allows("Read")


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
            return UntrustedBroker(
                f"cannot reach Kafka at {settings.bootstrap}: the broker's TLS certificate "
                f"is not trusted (--ssl-cafile {settings.ssl_cafile}): {cause.verify_message}"
            )
        elif cause is not None:
            reason = f"{type(cause).__name__}: {cause}"
    return ServiceUnavailable(f"cannot reach Kafka at {settings.bootstrap}: {reason}")


async def _connect_once(settings: KafkaClientSettings) -> BaseException | None:
    """Connect (TLS handshake, SASL) to the first bootstrap server; return what failed."""
    host, _, port = settings.bootstrap.split(",")[0].strip().rpartition(":")
    return await kafka_requests.connect_once(host, int(port), settings.client_kwargs())
