"""A real Apache Kafka cluster (KRaft mode) started from cached jars.

The serving code talks to Kafka through its wire protocol, so its tests must hit
a genuine broker: a fake would not enforce message size limits, consumer-group
semantics or leader fail-over. Docker is not available everywhere this suite
runs, so the broker is launched straight from the jars that
``deploy/kafka-local/fetch-jars.sh`` caches outside the repository.

Readiness is asked through aiokafka's admin client (describe_cluster,
find_coordinator), a dependency of the project, imported only when a cluster
starts. ``security=BrokerSecurity(users)``
starts it the way production clusters run: SASL_SSL (SCRAM-SHA-512) and mTLS
listeners and the StandardAuthorizer (deploy/local/security.py, which needs
the ``cryptography`` package for the certificates).

CLI::

    python -m deploy.local.kafka --brokers 1

prints the bootstrap string on stdout and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy.local.security import AclBinding, BrokerSecurity, TlsFiles

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_LOCAL_DIR = REPO_ROOT / "deploy" / "kafka-local"
POM_PATH = KAFKA_LOCAL_DIR / "pom.xml"
FETCH_SCRIPT = KAFKA_LOCAL_DIR / "fetch-jars.sh"
LOG4J_CONFIG = KAFKA_LOCAL_DIR / "log4j2.properties"
JARS_MARKER = ".tfstream-complete"

HOST = "127.0.0.1"
# Serving moves encoded images and tensors, which easily exceed Kafka's 1 MiB default.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Startup dominates short test runs, and a test broker never runs long enough to
# profit from C2: C1-only compilation and the serial collector start faster and
# leave the (often 2-core) machine to the code under test. Override or extend
# with TFSTREAM_KAFKA_JVM_OPTS (later flags win), e.g. for throughput benchmarks.
DEFAULT_JVM_OPTS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
    # Keep logging alive until Kafka's own shutdown hook finishes, so logs show the whole shutdown.
    "-Dlog4j2.shutdownHookEnabled=false",
)

_LOG_TAIL_LINES = 60
_PR_SET_PDEATHSIG = 1


class KafkaLocalError(RuntimeError):
    """The local cluster could not be fetched, formatted or started.

    Always a hard failure: a test that silently skips because its broker did not
    come up hides exactly the regressions the real broker is there to catch.
    """


# --------------------------------------------------------------------------- jars


def kafka_version() -> str:
    """Read the broker version from the pom so the version lives in one place."""
    override = os.environ.get("TFSTREAM_KAFKA_VERSION")
    if override:
        return override
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    element = ET.parse(POM_PATH).getroot().find("m:properties/m:kafka.version", namespace)
    if element is None or not (element.text or "").strip():
        raise KafkaLocalError(f"no <kafka.version> property in {POM_PATH}")
    return (element.text or "").strip()


def _cache_root() -> Path:
    """Outside the repository: the jars are shared by every checkout and venv."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tfstream"


def default_jars_dir(version: str | None = None) -> Path:
    """Mirror fetch-jars.sh's choice, so both agree without passing paths around."""
    override = os.environ.get("TFSTREAM_KAFKA_LIBS")
    if override:
        return Path(override)
    return _cache_root() / f"kafka-{version or kafka_version()}" / "libs"


def _jars_stamp(version: str) -> str:
    """Same stamp fetch-jars.sh writes: a pom edit must invalidate the cache."""
    digest = hashlib.sha256(POM_PATH.read_bytes()).hexdigest()
    return f"{version} {digest}"


def ensure_jars(jars_dir: Path | None = None) -> Path:
    """Return a directory of broker jars, fetching them on first use.

    An explicit directory is trusted as-is (and must hold the jars): it is how
    callers point at a hand-made or pre-provisioned copy. The default cache is
    filled by fetch-jars.sh so a fresh checkout needs nothing but Java and Maven.
    """
    if jars_dir is not None:
        if not any(Path(jars_dir).glob("kafka_2.13-*.jar")):
            raise KafkaLocalError(f"no kafka_2.13-*.jar in {jars_dir}")
        return Path(jars_dir)
    version = kafka_version()
    libs = default_jars_dir(version)
    marker = libs / JARS_MARKER
    if marker.is_file() and marker.read_text().strip() == _jars_stamp(version):
        return libs
    return _run_fetch_script()


def _run_fetch_script() -> Path:
    """Delegate to the shell script so Make and Python share one fetch path."""
    try:
        result = subprocess.run(
            ["bash", str(FETCH_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise KafkaLocalError(f"{FETCH_SCRIPT} did not finish in {exc.timeout}s") from exc
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise KafkaLocalError(
            f"{FETCH_SCRIPT} failed (exit {result.returncode}):\n{_tail_text(result.stderr)}"
        )
    return Path(lines[-1])


# ------------------------------------------------------------------ admin requests


class BrokerNotReady(OSError):
    """A broker did not answer an admin request (yet): not started, not caught up."""


COORDINATOR_GROUP = 0
COORDINATOR_TRANSACTION = 1
_CLIENT_ID = "tfstream-kafka-local"


def _admin_call(host: str, port: int, timeout_s: float, call: Callable[[Any], Any]) -> Any:
    """`call(admin)` with aiokafka's admin client bootstrapped from this one broker.

    Run on an event loop in a thread of its own: the cluster's callers are plain
    functions, sometimes called from an async test whose loop is running.
    """

    async def run() -> Any:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        admin = AIOKafkaAdminClient(
            bootstrap_servers=f"{host}:{port}",
            client_id=_CLIENT_ID,
            request_timeout_ms=max(1000, int(timeout_s * 1000)),
        )
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            return await asyncio.wait_for(call(admin), timeout_s)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerNotReady(f"{host}:{port}: {exc!r}") from exc
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    try:  # a closed port needs no client (whose connection errors would fill the log)
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise BrokerNotReady(f"{host}:{port}: {exc}") from exc
    with ThreadPoolExecutor(1, thread_name_prefix="kafka-admin") as pool:
        return pool.submit(asyncio.run, run()).result()


def fetch_broker_ids(host: str, port: int, timeout_s: float = 5.0) -> set[int]:
    """Ask one broker which brokers it currently considers alive.

    An open TCP port is not readiness: a KRaft broker only serves requests once it
    has caught up with the metadata log and been unfenced, and its view of the
    cluster is what clients will get.

    Raises:
        BrokerNotReady: it does not answer (yet).
    """

    async def brokers(admin: Any) -> set[int]:
        return {int(b["node_id"]) for b in (await admin.describe_cluster())["brokers"]}

    return set(_admin_call(host, port, timeout_s, brokers))


def find_coordinator_error(
    host: str, port: int, key: str, key_type: int, timeout_s: float = 5.0
) -> int:
    """Return the error code of a FindCoordinator request (0 once it exists).

    Asking is what makes the broker create __consumer_offsets or
    __transaction_state, so this doubles as their eager creation.
    """
    from aiokafka.errors import KafkaError

    async def find(admin: Any) -> int:
        try:
            await admin.find_coordinator(key, key_type)
        except KafkaError as exc:
            return int(getattr(exc, "errno", -1) or -1)
        return 0

    return int(_admin_call(host, port, timeout_s, find))


# ------------------------------------------------------------------------- helpers


def _free_ports(count: int) -> list[int]:
    """Pick ports the kernel considers free right now.

    All sockets are held open together so no port is handed out twice; the short
    window until the JVM binds is an accepted race on a test machine.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _new_cluster_id() -> str:
    """Kafka's Uuid format (url-safe base64 of 16 bytes), without a JVM round-trip.

    Kafka rejects ids starting with '-' (they look like CLI flags), so reroll them.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _tail_text(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tail_file(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return _tail_text(path.read_text(errors="replace"), lines)
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def _java_executable() -> str:
    """Honour JAVA_HOME first, as Kafka's own scripts do."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise KafkaLocalError("no `java` on PATH and no usable JAVA_HOME (Kafka 4 needs Java 17+)")
    return found


def _die_with_parent_hook() -> Callable[[], None] | None:
    """Make brokers die with the process that started them (Linux only).

    Without this, a test run killed by a timeout or Ctrl-C+Ctrl-C leaves JVMs
    holding ports and memory forever. PR_SET_PDEATHSIG fires when the *thread*
    that forked exits, so it is only armed from the main thread, which lives as
    long as the process.
    """
    if (
        not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return hook


# ----------------------------------------------------------------------------- CDS


@dataclass(frozen=True)
class _CdsArchive:
    """A dynamic AppCDS archive of the broker's classes, kept in the user cache.

    Loading ~5000 Kafka/Scala classes dominates JVM startup; mapping them from an
    archive cut broker start from ~2.8 s to ~1.5 s (1 node) and ~5.7 s to ~3.8 s
    (3 nodes) on a 2-core box. The first broker that exits cleanly dumps the
    archive (ArchiveClassesAtExit); later JVMs map it. Set TFSTREAM_KAFKA_CDS=0
    to disable. The name hashes the JVM, the jars and the flags because the JVM
    ignores (with a warning) an archive made by another JVM or classpath.
    """

    path: Path
    pending: Path

    @classmethod
    def for_launch(cls, java: str, jars_dir: Path, jvm_opts: Sequence[str]) -> _CdsArchive | None:
        if os.environ.get("TFSTREAM_KAFKA_CDS", "1") == "0":
            return None
        digest = hashlib.sha256()
        java_path = Path(java).resolve()
        digest.update(f"{java_path}:{java_path.stat().st_mtime_ns}".encode())
        digest.update(" ".join(jvm_opts).encode())
        for jar in sorted(jars_dir.glob("*.jar")):
            stat = jar.stat()
            digest.update(f"{jar}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        path = _cache_root() / "cds" / f"kafka-{digest.hexdigest()[:16]}.jsa"
        # Unique per launcher so concurrent sessions never expose a half-written file.
        pending = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        return cls(path=path, pending=pending)

    def jvm_opts(self, may_dump: bool) -> tuple[str, ...]:
        if self.path.is_file():
            return (f"-XX:SharedArchiveFile={self.path}",)
        if may_dump:
            self.pending.parent.mkdir(parents=True, exist_ok=True)
            return (f"-XX:ArchiveClassesAtExit={self.pending}",)
        return ()

    def settle(self, exit_code: int | None) -> None:
        """Publish a dump atomically, or drop it if the JVM was killed mid-write."""
        if not self.pending.exists():
            return
        if exit_code is not None and exit_code >= 0 and self.pending.stat().st_size > 0:
            os.replace(self.pending, self.path)
        else:
            self.pending.unlink(missing_ok=True)


# --------------------------------------------------------------------------- nodes


@dataclass
class _Node:
    """One combined broker+controller process and its on-disk state."""

    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    sasl_port: int = 0
    """SASL_SSL listener of a secured cluster (0: none)."""
    ssl_port: int = 0
    """SSL listener with client certificates of a secured cluster (0: none)."""

    config_path: Path = field(init=False)
    log_path: Path = field(init=False)
    data_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.directory / "server.properties"
        self.log_path = self.directory / "broker.log"
        self.data_dir = self.directory / "data"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _server_properties(
    node: _Node,
    nodes: Sequence[_Node],
    overrides: Mapping[str, str],
    security: BrokerSecurity | None = None,
) -> str:
    """Render a production-like config, scaled down to a test machine.

    Replication follows the cluster size (capped at 3) and min.insync.replicas is
    one less, so a 3-node cluster keeps accepting acks=all writes with a node down.
    A secured cluster keeps its PLAINTEXT listener for the harness itself (readiness
    probes, ACLs, inter-broker traffic: the super user) and adds SASL_SSL and SSL.
    """
    listeners = {"PLAINTEXT": node.port}
    if security is not None:
        listeners.update(SASL_SSL=node.sasl_port, SSL=node.ssl_port)
    advertised = ",".join(f"{name}://{HOST}:{port}" for name, port in listeners.items())
    protocols = ",".join(f"{name}:{name}" for name in listeners)
    replication = min(3, len(nodes))
    min_isr = max(1, replication - 1)
    voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in nodes)
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "controller.listener.names": "CONTROLLER",
        "listeners": f"{advertised},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": advertised,
        "listener.security.protocol.map": f"{protocols},CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node.data_dir),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        "default.replication.factor": str(replication),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(replication),
        "transaction.state.log.replication.factor": str(replication),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(replication),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        # 50 partitions per internal topic make the first group/transaction slow
        # to set up and buy nothing on a test cluster.
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.num.partitions": "10",
        "group.initial.rebalance.delay.ms": "0",
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
        # Fence a dead node within seconds rather than 9 s, so fail-over tests are quick.
        "broker.session.timeout.ms": "6000",
        "broker.heartbeat.interval.ms": "500",
        # Fewer threads and a smaller cleaner buffer (default 128 MiB) fit a 512 MiB heap.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "background.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
    }
    if security is not None:
        props.update(security.server_properties())
    props.update(overrides)
    return "".join(f"{key}={value}\n" for key, value in props.items())


# ------------------------------------------------------------------------- cluster


class LocalKafkaCluster:
    """N combined broker+controller KRaft nodes on 127.0.0.1 with free ports.

    Every node is a controller voter, so a 3-node cluster keeps its metadata
    quorum (2 of 3) and its data (RF 3, min ISR 2) when one node dies. Broker
    indexes used by the methods below are 0-based; node ids are index + 1.
    """

    def __init__(
        self,
        brokers: int = 1,
        workdir: Path | None = None,
        jars_dir: Path | None = None,
        broker_config: Mapping[str, str] | None = None,
        security: BrokerSecurity | None = None,
        warm_coordinators: bool = True,
    ) -> None:
        """`warm_coordinators` False leaves the cluster brand-new, as `docker compose up`
        gives it: no `__consumer_offsets` until the first group asks for one."""
        if brokers < 1:
            raise ValueError("brokers must be >= 1")
        self._brokers = brokers
        self._owns_workdir = workdir is None
        self.workdir = (
            Path(workdir)
            if workdir is not None
            else Path(tempfile.mkdtemp(prefix="tfstream-kafka-"))
        )
        self._jars_dir_arg = Path(jars_dir) if jars_dir is not None else None
        self._jars_dir: Path | None = None
        self._broker_config = dict(broker_config or {})
        self._security = security
        self._nodes: list[_Node] = []
        self._planned = False
        self._warm_coordinators = warm_coordinators
        self._cds: _CdsArchive | None = None
        self.cluster_id: str | None = None
        self.startup_s: float | None = None

    # ------------------------------------------------------------ public API

    @property
    def bootstrap(self) -> str:
        """All nodes, dead or alive: clients skip unreachable bootstrap servers."""
        self._require_started()
        return ",".join(f"{HOST}:{node.port}" for node in self._nodes)

    @property
    def size(self) -> int:
        return self._brokers

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """The SASL_SSL (SCRAM-SHA-512) listeners of a secured cluster."""
        self._require_secured()
        return ",".join(f"{HOST}:{node.sasl_port}" for node in self._nodes)

    @property
    def ssl_bootstrap(self) -> str:
        """The SSL listeners (client certificate required) of a secured cluster."""
        self._require_secured()
        return ",".join(f"{HOST}:{node.ssl_port}" for node in self._nodes)

    @property
    def tls(self) -> TlsFiles:
        """CA, broker and client certificates generated for this cluster."""
        self._require_secured()
        assert self._security is not None and self._security.tls is not None
        return self._security.tls

    def create_acls(self, bindings: Sequence[AclBinding]) -> None:
        """Grant ACLs as the harness super user (over the PLAINTEXT listener)."""
        from deploy.local.security import create_acls

        self._require_secured()
        create_acls(HOST, self._nodes[0].port, bindings)

    def broker_address(self, index: int) -> str:
        return f"{HOST}:{self._node(index).port}"

    def log_path(self, index: int) -> Path:
        return self._node(index).log_path

    def is_running(self, index: int) -> bool:
        return self._node(index).running

    def broker_pid(self, index: int) -> int | None:
        """The JVM's process id of broker `index`, None while it is not running
        (for measuring the broker's CPU use)."""
        node = self._node(index)
        return node.process.pid if node.process is not None and node.running else None

    def plan(self) -> LocalKafkaCluster:
        """Choose the ports (and make the certificates) now, start later: `bootstrap`
        is known before any broker listens, so clients can be started first."""
        if not self._nodes:
            self._nodes = self._plan_nodes()
            if self._security is not None:
                self._security.prepare(self.workdir / "tls")
            self._planned = True
        return self

    def start(self, timeout_s: float = 60) -> LocalKafkaCluster:
        """Format fresh storage, launch every node and wait until all serve metadata.

        ``startup_s`` records the wall time, formatting included, because that
        is what a test session actually pays.
        """
        if self._nodes and not self._planned:
            raise KafkaLocalError("cluster already started")
        began = time.monotonic()
        self._jars_dir = ensure_jars(self._jars_dir_arg)
        self._cds = _CdsArchive.for_launch(_java_executable(), self._jars_dir, self._jvm_opts())
        try:
            self._launch(began + timeout_s)
        except KafkaLocalError:
            self._kill_all()
            if not self._lost_port_race():
                raise
            # Another process took a port between _free_ports() and the JVM's bind.
            self._launch(began + timeout_s)
        except BaseException:
            self._kill_all()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def stop(self, timeout_s: float = 5) -> None:
        """SIGTERM every node at once, SIGKILL whatever is left after the grace period.

        Nodes are signalled together because one stopped last would wait for a
        controller quorum that no longer exists; even so, multi-node KRaft spends
        its 5 s raft shutdown timeout waiting for departed peers, hence a short
        grace (stop() always discards the data: start() reformats). The workdir
        is removed only if this object created it, so callers keep their logs.
        """
        running = [node for node in self._nodes if node.running]
        for node in running:
            self._signal(node, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in running:
            self._wait_exit(node, max(0.0, deadline - time.monotonic()))
        self._kill_all()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill_broker(self, index: int) -> None:
        """SIGKILL one node: the crash case, with no controlled shutdown or flush."""
        node = self._node(index)
        if node.running:
            self._signal(node, signal.SIGKILL)
            self._wait_exit(node, 10)

    def stop_broker(self, index: int, timeout_s: float = 30) -> None:
        """Graceful stop (leadership moved away first); SIGKILL only if it hangs."""
        node = self._node(index)
        if node.running:
            self._signal(node, signal.SIGTERM)
            if not self._wait_exit(node, timeout_s):
                self.kill_broker(index)

    def start_broker(self, index: int, timeout_s: float = 60) -> None:
        """Restart a stopped node on its old storage and ports, like a real reboot."""
        node = self._node(index)
        if node.running:
            raise KafkaLocalError(f"broker {index} (node {node.node_id}) is already running")
        self._spawn(node)
        self._wait_ready(self._running_nodes(), time.monotonic() + timeout_s)

    def ensure_all_running(self, timeout_s: float = 60) -> None:
        """Restart nodes a previous user of a shared cluster left down."""
        stopped = [node for node in self._nodes if not node.running]
        for node in stopped:
            self._spawn(node)
        if stopped:
            self._wait_ready(self._nodes, time.monotonic() + timeout_s)

    def __enter__(self) -> LocalKafkaCluster:
        if not self._nodes:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------- internals

    def _require_started(self) -> None:
        if not self._nodes:
            raise KafkaLocalError("cluster not started")

    def _require_secured(self) -> None:
        self._require_started()
        if self._security is None:
            raise KafkaLocalError("cluster started without security=BrokerSecurity(...)")

    def _node(self, index: int) -> _Node:
        self._require_started()
        if not 0 <= index < len(self._nodes):
            raise IndexError(f"broker index {index} out of range 0..{len(self._nodes) - 1}")
        return self._nodes[index]

    def _running_nodes(self) -> list[_Node]:
        return [node for node in self._nodes if node.running]

    def _launch(self, deadline: float) -> None:
        if not self._planned:
            self._nodes = self._plan_nodes()
        self._planned = False  # a second launch (lost port race) picks new ports
        try:
            self._write_configs()
            self._format_storage()
            for node in self._nodes:
                self._spawn(node)
            self._wait_ready(self._nodes, deadline)
            if self._warm_coordinators:
                self._wait_coordinators(deadline)
        except BaseException:
            self._kill_all()
            raise

    def _lost_port_race(self) -> bool:
        return any("Address already in use" in _tail_file(n.log_path) for n in self._nodes)

    def _plan_nodes(self) -> list[_Node]:
        per_node = 2 if self._security is None else 4
        ports = _free_ports(per_node * self._brokers)
        nodes = []
        for i in range(self._brokers):
            mine = ports[per_node * i : per_node * (i + 1)]
            node = _Node(
                node_id=i + 1,
                port=mine[0],
                controller_port=mine[1],
                directory=self.workdir / f"node-{i + 1}",
            )
            if self._security is not None:
                node.sasl_port, node.ssl_port = mine[2], mine[3]
            nodes.append(node)
        return nodes

    def _write_configs(self) -> None:
        """Start from empty node directories: format refuses formatted storage."""
        if self._security is not None and self._security.tls is None:
            self._security.prepare(self.workdir / "tls")
        for node in self._nodes:
            shutil.rmtree(node.directory, ignore_errors=True)
            node.directory.mkdir(parents=True)
            node.config_path.write_text(
                _server_properties(node, self._nodes, self._broker_config, self._security)
            )

    @staticmethod
    def _jvm_opts() -> list[str]:
        extra = os.environ.get("TFSTREAM_KAFKA_JVM_OPTS", "").split()
        return [*DEFAULT_JVM_OPTS, *extra, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}"]

    def _java_command(
        self, main_class: str, *args: str, jvm_opts: Sequence[str] = (), may_dump: bool = False
    ) -> list[str]:
        assert self._jars_dir is not None
        cds_opts = self._cds.jvm_opts(may_dump) if self._cds is not None else ()
        return [
            _java_executable(),
            *self._jvm_opts(),
            *cds_opts,
            *jvm_opts,
            "-cp",
            f"{self._jars_dir}/*",  # expanded by the JVM, not a shell
            main_class,
            *args,
        ]

    def _format_storage(self) -> None:
        """Format all nodes in parallel with one cluster id (one JVM start each)."""
        self.cluster_id = _new_cluster_id()
        formats = [
            (
                node,
                subprocess.Popen(
                    self._java_command(
                        "kafka.tools.StorageTool",
                        "format",
                        "-t",
                        self.cluster_id,
                        "-c",
                        str(node.config_path),
                        *(self._security.format_args() if self._security else ()),
                    ),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=node.directory,
                ),
            )
            for node in self._nodes
        ]
        for node, proc in formats:
            output, _ = proc.communicate(timeout=120)
            text = output.decode(errors="replace")
            (node.directory / "format.log").write_text(text)
            if proc.returncode != 0:
                raise KafkaLocalError(
                    f"StorageTool format failed for node {node.node_id} "
                    f"(exit {proc.returncode}):\n{_tail_text(text)}"
                )

    def _spawn(self, node: _Node) -> None:
        """Launch one node; its stdout/stderr append to broker.log across restarts.

        A new session keeps the terminal's Ctrl-C away from the JVMs, so the CLI
        and pytest can shut them down in order instead of racing them.
        """
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with node.log_path.open("ab") as log:
            log.write(f"\n=== kafka_local: starting node {node.node_id} at {stamp} ===\n".encode())
            log.flush()
            node.process = subprocess.Popen(
                self._java_command(
                    "kafka.Kafka",
                    str(node.config_path),
                    jvm_opts=(f"-XX:ErrorFile={node.directory}/hs_err_%p.log",),
                    may_dump=node.node_id == 1,
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=node.directory,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )

    def _wait_ready(self, nodes: Sequence[_Node], deadline: float) -> None:
        """Poll until every given node reports every running node as alive.

        Checking each node's own view (not just one) matters after a restart: a
        client may bootstrap from any node and must see the full cluster.
        """
        expected = {node.node_id for node in self._running_nodes()}
        while True:
            for node in nodes:
                self._raise_if_exited(node)
            if all(self._sees(node, expected) for node in nodes):
                return
            if time.monotonic() > deadline:
                raise KafkaLocalError(self._failure_report("not ready before the deadline", nodes))
            time.sleep(0.1)

    def _wait_coordinators(self, deadline: float) -> None:
        """Create __consumer_offsets and __transaction_state before anyone needs them.

        Both are created lazily with the full replication factor, so on a 3-node
        cluster a first consumer group formed while one node is down would never
        get a coordinator. Creating them while all nodes are up makes fail-over
        tests behave like a long-running production cluster.
        """
        node = self._nodes[0]
        for key_type in (COORDINATOR_GROUP, COORDINATOR_TRANSACTION):
            while True:
                self._raise_if_exited(node)
                with contextlib.suppress(OSError):
                    if find_coordinator_error(HOST, node.port, "tfstream-warmup", key_type) == 0:
                        break
                if time.monotonic() > deadline:
                    reason = "internal topics (__consumer_offsets, __transaction_state) not ready"
                    raise KafkaLocalError(self._failure_report(reason, self._nodes))
                time.sleep(0.1)

    @staticmethod
    def _sees(node: _Node, expected: set[int]) -> bool:
        try:
            return expected <= fetch_broker_ids(HOST, node.port)
        except OSError:
            return False

    def _raise_if_exited(self, node: _Node) -> None:
        if node.process is not None and node.process.poll() is not None:
            reason = f"node {node.node_id} exited with code {node.process.returncode}"
            raise KafkaLocalError(self._failure_report(reason, [node]))

    def _failure_report(self, reason: str, nodes: Sequence[_Node]) -> str:
        parts = [f"local Kafka cluster failed: {reason} (workdir {self.workdir})"]
        for node in nodes:
            parts.append(f"--- tail of {node.log_path} ---\n{_tail_file(node.log_path)}")
        return "\n".join(parts)

    @staticmethod
    def _signal(node: _Node, signum: signal.Signals) -> None:
        if node.process is not None:
            with contextlib.suppress(ProcessLookupError):
                node.process.send_signal(signum)

    def _wait_exit(self, node: _Node, timeout_s: float) -> bool:
        if node.process is None:
            return True
        try:
            exit_code = node.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        if self._cds is not None and node.node_id == 1:
            self._cds.settle(exit_code)
        return True

    def _kill_all(self) -> None:
        for node in self._nodes:
            if node.running:
                self._signal(node, signal.SIGKILL)
                self._wait_exit(node, 10)


# ----------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.kafka",
        description="Run a local Kafka cluster until Ctrl-C; prints the bootstrap string.",
    )
    parser.add_argument("--brokers", type=int, default=1, help="number of nodes (default 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and logs here")
    parser.add_argument("--jars-dir", type=Path, default=None, help="use these jars, no fetch")
    parser.add_argument("--timeout", type=float, default=90, help="startup timeout in seconds")
    return parser.parse_args(argv)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    """Treat `kill <pid>` like Ctrl-C so the brokers are always stopped."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    cluster = LocalKafkaCluster(brokers=args.brokers, workdir=args.workdir, jars_dir=args.jars_dir)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        cluster.start(timeout_s=args.timeout)
        print(cluster.bootstrap, flush=True)
        print(
            f"kafka_local: {args.brokers} node(s) ready in {cluster.startup_s:.1f}s, "
            f"logs in {cluster.workdir}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while all(cluster.is_running(i) for i in range(cluster.size)):
            time.sleep(0.5)
        dead = [i for i in range(cluster.size) if not cluster.is_running(i)]
        print(f"kafka_local: broker(s) {dead} exited; see {cluster.workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except KafkaLocalError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
