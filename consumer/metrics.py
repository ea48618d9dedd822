"""Prometheus metrics of one worker, in a registry of its own.

A registry per worker (not the global default) lets the embedded bridge and
the tests run several workers in one process without name clashes.

`tfstream_backlog_seconds` is the figure to autoscale on: the requests waiting
for a model (lag plus in flight) divided by the throughput this worker
measured for it, i.e. how long the backlog takes to clear at the current pace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class _Rate:
    """Exponentially weighted requests per second, updated as answers go out."""

    per_s: float = 0.0
    last: float = field(default_factory=time.monotonic)
    alpha_per_s: float = 0.2

    def add(self, count: int) -> None:
        now = time.monotonic()
        elapsed = max(now - self.last, 1e-3)
        self.last = now
        weight = min(1.0, self.alpha_per_s * elapsed)
        self.per_s = (1 - weight) * self.per_s + weight * (count / elapsed)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("tfstream_requests", "Requests answered", ["model"], registry=r)
        self.errors = Counter(
            "tfstream_errors", "Requests answered with an error", ["model", "code"], registry=r
        )
        self.dlq = Counter(
            "tfstream_dlq",
            "Requests copied to the dead-letter topic",
            ["model", "code"],
            registry=r,
        )
        self.batch_size = Histogram(
            "tfstream_batch_size",
            "Images per engine call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "tfstream_queue_seconds",
            "Arrival at the worker to start of inference",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "tfstream_inference_seconds",
            "Engine call duration",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "tfstream_decode_seconds", "Image decode duration", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.lag = Gauge(
            "tfstream_lag",
            "Requests in the assigned partitions not yet fetched",
            ["model"],
            registry=r,
        )
        self.inflight = Gauge(
            "tfstream_inflight", "Requests fetched and not yet answered", registry=r
        )
        self.backlog_seconds = Gauge(
            "tfstream_backlog_seconds",
            "Backlog (lag + in flight) / measured throughput",
            ["model"],
            registry=r,
        )
        self.throughput = Gauge(
            "tfstream_throughput", "Measured answers per second (EWMA)", ["model"], registry=r
        )
        self.model_info = Gauge(
            "tfstream_model_info",
            "1 per model this worker knows, with its state, device and version serving",
            ["model", "state", "device", "engine", "version"],
            registry=r,
        )
        self.answers_not_logged = Counter(
            "tfstream_answers_not_logged",
            "Attempts to write an answer-log or shadow record that failed (each is "
            "retried, holding its request uncommitted, until the record is written)",
            ["model"],
            registry=r,
        )
        self.answers_dropped = Counter(
            "tfstream_answers_dropped",
            "Requests whose answer could not be written and whose dead letter the DLQ "
            "refused: committed unanswered so that their partition moves on",
            ["model"],
            registry=r,
        )
        self._rates: dict[str, _Rate] = {}

    def answered(self, model: str, count: int = 1) -> None:
        self.requests.labels(model).inc(count)
        self._rates.setdefault(model, _Rate()).add(count)

    def rate(self, model: str) -> float:
        rate = self._rates.get(model)
        return rate.per_s if rate else 0.0

    def set_backlog(self, model: str, waiting: int) -> float:
        """Seconds to clear `waiting` requests at the measured pace.

        With no pace measured yet, each waiting request counts one second, so an
        idle-then-flooded worker still reports a backlog an autoscaler can act on.
        """
        rate = self.rate(model)
        seconds = waiting / rate if rate > 0.01 else float(waiting)
        self.backlog_seconds.labels(model).set(seconds)
        self.throughput.labels(model).set(rate)
        return seconds
