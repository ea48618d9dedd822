"""The Kafka requests tfstream makes below aiokafka's public API, in one place.

aiokafka has no call for "which operations may I do on these topics and this
group" (Metadata v8 and DescribeGroups v3 with their authorized-operations
flags) nor for one bare connection attempt that keeps its failure (aiokafka
logs it and raises "Unable to bootstrap"). Both need its internal
`protocol.api`, `client` and `conn` modules, which change between releases:
pyproject.toml bounds aiokafka from above, and tests/consumer/test_kafka_requests.py
sends each request here to a real broker, so a new aiokafka that breaks one
fails there before a worker meets it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import DescribeGroupsResponse_v3
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

#: Kafka's AclOperation codes: bit n of an "authorized operations" field is operation n.
OPERATIONS = {"Read": 3, "Write": 4, "Create": 5, "Delete": 6, "Describe": 8}
#: An "authorized operations" field a broker did not compute (it has no authorizer).
NOT_COMPUTED = -(2**31)
_GROUP_COORDINATOR = 0

#: The client the requests below go through (aiokafka's internal one).
Client = AIOKafkaClient


@dataclass(frozen=True)
class Authorized:
    """One resource's answer: its error code and the operations the caller may do."""

    name: str
    error_code: int
    operations: int

    def allows(self, operation: str) -> bool:
        """NOT_COMPUTED (a broker without an authorizer) allows everything."""
        return self.operations == NOT_COMPUTED or bool(
            self.operations & (1 << OPERATIONS[operation])
        )


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


def client(client_kwargs: dict[str, Any], client_id: str) -> Client:
    """A bare client for the requests below; `bootstrap()` it, `close()` it."""
    return AIOKafkaClient(**client_kwargs, client_id=client_id)


async def topic_operations(client: Client, topics: Sequence[str]) -> list[Authorized]:
    """Metadata v8: per topic, its error code and what the caller may do on it."""
    response: Any = await client.send(client.get_random_node(), _TopicOperationsRequest(topics))
    return [
        Authorized(topic, error_code, allowed)
        for error_code, topic, _internal, _partitions, allowed in response.topics
    ]


async def group_operations(client: Client, group: str) -> Authorized:
    """FindCoordinator, then DescribeGroups v3 there: what the caller may do on `group`.

    Raises GroupAuthorizationFailedError when not even Describe is allowed.
    """
    coordinator = await client.coordinator_lookup(_GROUP_COORDINATOR, group)
    response: Any = await client.send(coordinator, _GroupOperationsRequest([group]))
    ((error_code, name, *_rest, allowed),) = response.groups
    return Authorized(name, error_code, allowed)


async def connect_once(
    host: str, port: int, client_kwargs: dict[str, Any], timeout_s: float = 10
) -> BaseException | None:
    """Connect (TLS handshake, SASL) to one broker; return what failed, or None."""
    kwargs = {k: v for k, v in client_kwargs.items() if k != "bootstrap_servers"}
    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, client_id="tfstream-diagnosis", **kwargs), timeout_s
        )
    except Exception as exc:
        return exc
    conn.close()
    return None
