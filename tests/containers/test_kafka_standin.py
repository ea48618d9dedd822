"""The Kafka stand-in image's reading of the official image's KAFKA_* convention
(deploy/kafka-local/image/kafka_standin.py), without podman: every variable that
deploy/compose.yaml gives Kafka becomes the broker property it means."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _standin() -> ModuleType:
    path = ROOT / "deploy" / "kafka-local" / "image" / "kafka_standin.py"
    spec = importlib.util.spec_from_file_location("kafka_standin", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_property_names_follow_the_official_convention() -> None:
    standin = _standin()
    assert standin.property_name("KAFKA_LOG_DIRS") == "log.dirs"
    assert standin.property_name("KAFKA_A__B") == "a_b"
    assert standin.property_name("KAFKA_A___B_C") == "a-b.c"
    env = {"KAFKA_NODE_ID": "1", "KAFKA_HEAP_OPTS": "-Xmx1g", "CLUSTER_ID": "x", "PATH": "/bin"}
    assert standin.broker_properties(env) == {"node.id": "1"}


def test_every_kafka_variable_of_the_compose_file_maps_to_its_property() -> None:
    standin = _standin()
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    env = {k: str(v) for k, v in compose["services"]["kafka"]["environment"].items()}
    properties = standin.broker_properties(env)
    expected = {
        "node.id", "process.roles", "controller.quorum.voters", "controller.listener.names",
        "listeners", "advertised.listeners", "listener.security.protocol.map",
        "inter.broker.listener.name", "log.dirs", "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor", "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr", "default.replication.factor",
        "min.insync.replicas", "message.max.bytes", "replica.fetch.max.bytes",
        "auto.create.topics.enable", "group.initial.rebalance.delay.ms",
    }  # fmt: skip
    assert set(properties) == expected
    assert properties["message.max.bytes"] == "16777216"
    assert "CLUSTER_ID" in env  # read by the stand-in to format the storage, not a property
