"""Start Kafka in the test stand-in image the way the official apache/kafka image does,
for the settings deploy/compose.yaml uses. NOT the official image (see Dockerfile).

    python3 kafka_standin.py                      # format the storage once, then run the broker
    python3 kafka_standin.py api-versions --bootstrap-server HOST:PORT   # the health check

The official image's convention, followed here: every environment variable
KAFKA_<NAME> except the JVM and logging ones (EXCLUDED) is the broker property
<name> lower-cased, with `___` for `-`, `__` for `_` and `_` for `.`
(KAFKA_LOG_DIRS is log.dirs); CLUSTER_ID is the id the storage is formatted
with, once (kept in the data volume). KAFKA_HEAP_OPTS and KAFKA_OPTS are JVM
options. Unlike the official image there is no default configuration: without
KAFKA_* properties the stand-in refuses to start, and it has no SSL/SASL file
conventions, no /mnt/shared/config and no other tools.

Standard library only: it runs on the image's Debian Python.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence

KAFKA_HOME = "/opt/kafka"
CONFIG = f"{KAFKA_HOME}/config/server.properties"
LOG4J = f"{KAFKA_HOME}/config/log4j2.properties"
# The official image's variables that are not broker properties.
EXCLUDED = frozenset(
    {
        "KAFKA_VERSION",
        "KAFKA_HEAP_OPTS",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_OPTS",
        "KAFKA_JMX_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_GC_LOG_OPTS",
        "KAFKA_LOG4J_ROOT_LOGLEVEL",
        "KAFKA_LOG4J_LOGGERS",
        "KAFKA_TOOLS_LOG4J_LOGLEVEL",
        "KAFKA_JMX_HOSTNAME",
        "KAFKA_JMX_PORT",
    }
)
# A small broker for a test machine: the official image's 1 GiB heap is not needed.
DEFAULT_HEAP_OPTS = "-Xms64m -Xmx512m"
JVM_OPTS = (
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    f"-Dlog4j2.configurationFile={LOG4J}",
)
API_VERSIONS = 18


def property_name(variable: str) -> str:
    """KAFKA_LOG_DIRS -> log.dirs, KAFKA_A___B -> a-b, KAFKA_A__B -> a_b."""
    name = variable.removeprefix("KAFKA_").lower()
    return (
        name.replace("___", "\0")
        .replace("__", "\1")
        .replace("_", ".")
        .replace("\0", "-")
        .replace("\1", "_")
    )


def broker_properties(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        property_name(key): value
        for key, value in sorted(environ.items())
        if key.startswith("KAFKA_") and key not in EXCLUDED
    }


def _java(environ: Mapping[str, str], main_class: str, *args: str) -> list[str]:
    heap = environ.get("KAFKA_HEAP_OPTS", DEFAULT_HEAP_OPTS).split()
    extra = environ.get("KAFKA_OPTS", "").split()
    return ["java", *heap, *JVM_OPTS, *extra, "-cp", f"{KAFKA_HOME}/libs/*", main_class, *args]


def run_broker(environ: Mapping[str, str]) -> int:
    properties = broker_properties(environ)
    if not properties:
        print("kafka stand-in: no KAFKA_* broker properties in the environment", file=sys.stderr)
        return 2
    cluster_id = environ.get("CLUSTER_ID", "")
    if not cluster_id:
        print("kafka stand-in: CLUSTER_ID is required", file=sys.stderr)
        return 2
    with open(CONFIG, "w", encoding="utf-8") as f:
        f.writelines(f"{key}={value}\n" for key, value in properties.items())
    # --ignore-formatted: a restarted container keeps the data of its volume.
    formatted = subprocess.run(
        _java(
            environ,
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            cluster_id,
            "-c",
            CONFIG,
        ),
        check=False,
    )
    if formatted.returncode != 0:
        return formatted.returncode
    command = _java(environ, "kafka.Kafka", CONFIG)
    os.execvp(command[0], command)  # the broker gets the container's signals
    return 1  # not reached


def api_versions(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """Whether the broker at HOST:PORT answers an ApiVersions v0 request without error."""
    host, _, port = bootstrap.rpartition(":")
    client = b"standin-probe"
    request = struct.pack(">hhih", API_VERSIONS, 0, 1, len(client)) + client
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=timeout_s) as s:
            s.sendall(struct.pack(">i", len(request)) + request)
            head = _recv(s, 4)
            payload = _recv(s, struct.unpack(">i", head)[0])
    except (OSError, ValueError, struct.error):
        return False
    correlation, error = struct.unpack_from(">ih", payload)
    return correlation == 1 and error == 0


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["api-versions"]:
        args = list(argv[1:])
        if "--bootstrap-server" not in args or args.index("--bootstrap-server") + 1 >= len(args):
            print("usage: kafka-broker-api-versions.sh --bootstrap-server H:P", file=sys.stderr)
            return 2
        bootstrap = args[args.index("--bootstrap-server") + 1]
        ok = api_versions(bootstrap)
        print(f"{bootstrap}: {'ApiVersions answered' if ok else 'no answer'}")
        return 0 if ok else 1
    if argv:
        print(f"kafka stand-in: unknown arguments {list(argv)}", file=sys.stderr)
        return 2
    return run_broker(os.environ)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
