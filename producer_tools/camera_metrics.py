"""What `tfstream-cameras` shows on `--metrics-port`: Prometheus metrics, health, states.

    /metrics          per camera: connected, frames decoded/sent/superseded/shrunk,
                      reconnects, decode seconds, lag, frame age at send (histogram)
    /health/live      200 while the process runs (consumer.health's server, as the worker's)
    /health/ready     200 once the broker answered and every camera was tried
                      (connected or failed once)
    /cameras          each camera's state as JSON (what the live page shows)

Counters are read from the readers and senders when scraped (one source of
truth, and a removed camera's series disappear with it); only the frame age is
a histogram observed at each send. Every label and text here is masked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from consumer.health import HealthServer

AGE_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


@dataclass
class CameraState:
    """One camera as the page and /cameras show it (never a password)."""

    camera: str
    url: str
    model: str
    state: str
    last_error: str | None
    connected: bool
    fps_in: float
    fps_out: float
    frames_sent: int
    connects: int
    reconnects: int
    frame_age_ms: float | None
    hwaccel: bool

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CameraCounters:
    camera: str
    connected: bool
    frames_decoded: int
    frames_sent: int
    superseded: int
    shrunk: int
    too_large: int
    send_failures: int
    reconnects: int
    decode_s: float
    lag_s: float


class _Collector(Collector):
    def __init__(self, counters: Callable[[], list[CameraCounters]]) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Any]:
        rows = self.counters()
        specs: list[tuple[str, str, bool, Callable[[CameraCounters], float]]] = [
            (
                "tfstream_camera_connected",
                "1 while the camera's stream is open",
                False,
                lambda c: float(c.connected),
            ),
            (
                "tfstream_camera_frames_decoded",
                "Frames decoded from the camera",
                True,
                lambda c: c.frames_decoded,
            ),
            (
                "tfstream_camera_frames_sent",
                "Frames produced to the request topic",
                True,
                lambda c: c.frames_sent,
            ),
            (
                "tfstream_camera_frames_superseded",
                "Frames dropped unsent: a newer one came before the next send",
                True,
                lambda c: c.superseded,
            ),
            (
                "tfstream_camera_frames_shrunk",
                "Frames re-encoded smaller or scaled to fit the message limit",
                True,
                lambda c: c.shrunk,
            ),
            (
                "tfstream_camera_frames_too_large",
                "Frames that could not be made to fit the message limit (not sent)",
                True,
                lambda c: c.too_large,
            ),
            (
                "tfstream_camera_send_failures",
                "Frames the broker did not accept",
                True,
                lambda c: c.send_failures,
            ),
            (
                "tfstream_camera_reconnects",
                "Connections lost or refused, each followed by a retry",
                True,
                lambda c: c.reconnects,
            ),
            (
                "tfstream_camera_decode_seconds",
                "Time spent decoding the camera's frames",
                True,
                lambda c: c.decode_s,
            ),
            (
                "tfstream_camera_lag_seconds",
                "Stream clock behind the wall clock since the "
                "connection opened (flat when the reader keeps up)",
                False,
                lambda c: c.lag_s,
            ),
        ]
        for name, doc, counter, value in specs:
            family = (
                CounterMetricFamily(name, doc, labels=["camera"])
                if counter
                else GaugeMetricFamily(name, doc, labels=["camera"])
            )
            for row in rows:
                family.add_metric([row.camera], value(row))
            yield family


class CameraMetrics:
    def __init__(
        self,
        counters: Callable[[], list[CameraCounters]],
        states: Callable[[], list[CameraState]],
        ready: Callable[[], bool],
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(counters))
        self.frame_age = Histogram(
            "tfstream_camera_frame_age_seconds",
            "Age of a frame when produced: decoded to handed to the Kafka producer",
            ["camera"],
            buckets=AGE_BUCKETS,
            registry=self.registry,
        )
        self.states = states
        self.ready = ready
        self._server: HealthServer | None = None

    def forget(self, camera: str) -> None:
        with contextlib.suppress(KeyError):
            self.frame_age.remove(camera)

    def serve(self, host: str, port: int) -> int:
        """Start the endpoint in a thread; the port it listens on."""
        self._server = HealthServer(
            host,
            port,
            self.registry,
            live=lambda: (True, {}),
            ready=lambda: (self.ready(), {}),
            pages={"/cameras": lambda: {"cameras": [s.as_json() for s in self.states()]}},
        )
        self._server.start()
        return self._server.port

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
