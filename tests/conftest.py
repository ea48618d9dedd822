"""Fixtures shared by the whole suite.

The Kafka fixtures run a real Apache Kafka broker (deploy/local/kafka.py):
a broker that cannot start makes the tests that need it error out, never skip,
because a silently skipped Kafka test hides exactly what it is there to catch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from deploy.local.kafka import LocalKafkaCluster

# Generated models and images, shared by every package's tests.
pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a broker shared by the whole session.

    KAFKA_BOOTSTRAP points the suite at an existing broker (configured like
    deploy/: 16 MiB messages, no topic auto-creation); otherwise one local node
    is started once, lazily, on first use.
    """
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    cluster = LocalKafkaCluster(brokers=1, workdir=tmp_path_factory.mktemp("kafka"))
    cluster.start()
    try:
        yield cluster.bootstrap
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def _kafka_cluster3_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalKafkaCluster]:
    """Started only if a test asks for kafka_cluster3: three JVMs are not free."""
    cluster = LocalKafkaCluster(brokers=3, workdir=tmp_path_factory.mktemp("kafka3"))
    cluster.start(timeout_s=120)
    try:
        yield cluster
    finally:
        # The data is thrown away, so there is no point waiting out KRaft's 5 s
        # raft shutdown timeout that a whole-cluster stop always hits.
        cluster.stop(timeout_s=2)


@pytest.fixture
def kafka_cluster3(_kafka_cluster3_session: LocalKafkaCluster) -> LocalKafkaCluster:
    """A local 3-node cluster (RF 3, min ISR 2) that tests may crash and restart.

    Shared by the session for speed; any node an earlier test left down is
    restarted first, so tests never see each other's damage. Always local, even
    with KAFKA_BOOTSTRAP set: tests need to kill its processes.
    """
    _kafka_cluster3_session.ensure_all_running()
    return _kafka_cluster3_session
