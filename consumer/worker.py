"""The Kafka worker: its life from start to shutdown, wiring the parts that do the work.

Life of a worker:

1. create the topics it needs and check its permissions, retrying while the
   cluster is still coming up (`consumer.startup`, within `start_timeout_s`);
2. announce its models `loading` on `<prefix>.models`, load them (a failed
   model stays FAILED, the others serve; if none loads, exit 1), announce them
   (`consumer.announcements`);
3. join the consumer group: on every request topic (`<prefix>.requests.*`)
   when serving every model, so requests for unknown models get an error
   answer too; on the listed models' topics only when given `--models a,b`;
4. loop (`consumer.fetching`): fetch at most `max_inflight` unanswered records,
   hand each to the pipeline through `records.RecordAdapter`, commit offsets
   whose answers the broker acknowledged (`consumer.commits`); beside it,
   supervised loops commit, re-announce, follow control commands
   (`consumer.control`), refresh lag metrics (`consumer.lag`) and roll in new
   model versions (`consumer.polling`);
5. on revoke: wait for the revoked partitions' work, commit it, forget them
   (`consumer.rebalance`);
6. on SIGTERM: stop fetching; stop re-announcing, following control commands
   and polling (so nothing says `ready` or starts a reload after the goodbye);
   finish and deliver what is in hand; commit (once more if a rebalance refused
   it); announce its models `stopped`; leave the group. A SIGTERM while still
   starting (waiting for the broker) ends the start at once, exit status 0. A
   fetch error that aiokafka does not retry (an ACL revoked) shuts down the same
   way, then ends the worker with that error.

With `--answer-log` every answer is also copied to `<prefix>.answers.<model>`;
with `--shadow NAME` the worker joins a group of its own, announces nothing and
answers only to `<prefix>.shadow.NAME.<model>` (`consumer.answer_log`,
`consumer.shadow`). Health: `consumer.probes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import Awaitable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from consumer import kafka_io
from consumer.announcements import Announcer
from consumer.answer_log import AnswerSink, Role
from consumer.commits import Commits
from consumer.control import ControlFollower
from consumer.fetching import Fetcher
from consumer.health import HealthServer, Problems
from consumer.lag import LagReporter
from consumer.metrics import WorkerMetrics
from consumer.offsets import OffsetTracker
from consumer.pipeline import Pipeline
from consumer.polling import poll_versions
from consumer.probes import WorkerProbes
from consumer.protocol import ModelState, Topics
from consumer.rebalance import Rebalance
from consumer.records import RecordAdapter
from consumer.registry import ModelRegistry
from consumer.settings import ConsumerSettings
from consumer.shadow import ShadowAdapter, shadow_registry, start_positions
from consumer.startup import until_ready
from consumer.supervision import Supervisor
from consumer.tracking_stage import CameraFeed, TrackingStage
from consumer.worker_topics import WorkerTopics
from engines.errors import ModelLoadFailed

log = logging.getLogger(__name__)

#: The loops that speak for the worker: stopped before it says goodbye.
SPEAKING_LOOPS = ("announce", "control", "poll")


class Worker:
    def __init__(self, settings: ConsumerSettings) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.topics = Topics(settings.topic_prefix)
        self.worker_topics = WorkerTopics(settings)
        self.metrics = WorkerMetrics(shadow_registry(settings.shadow) if settings.shadow else None)
        self.registry = ModelRegistry.from_settings(settings)
        self.stopping = asyncio.Event()
        self.offsets = OffsetTracker()
        self.commits = Commits(self.offsets, settings.commit_interval_ms)
        self.supervisor = Supervisor(self.metrics.registry)
        self.problems = Problems()
        self.probes = WorkerProbes(self.registry, self.supervisor, self.problems, settings.shadow)
        self.announcer = Announcer(
            self.registry,
            self.metrics,
            self.topics,
            self.worker_id,
            settings.announce_ttl_ms,
            settings.announce_forget_ms,
            silent=bool(settings.shadow),  # a shadow serves nobody: never offered to clients
        )
        self.producer: AIOKafkaProducer | None = None
        self.pipeline: Pipeline | None = None
        self.tracking: TrackingStage | None = None
        self.camera_feed: CameraFeed | None = None
        self._created_at_s = time.monotonic()
        self._served: list[str] = []
        """The models listed once at start: their topics exist; a model folder that
        appears later gets its topics from the poll loop."""

    @property
    def joined(self) -> bool:
        return self.probes.joined

    # -- life -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `stopping` is set, then shut down cleanly.

        Raises:
            TfstreamError: Kafka refused this worker, was not ready within
                `start_timeout_s`, or no model could be loaded.
        """
        health = self._start_health()  # readiness stays false until the group is joined
        try:
            if await self._unless_stopped(self._start()):
                try:
                    await self.fetcher.loop(self.stopping)
                except Exception as exc:  # one aiokafka does not retry: an ACL revoked...
                    # ...ends the worker as a shutdown does: what is answered is
                    # committed, or the restart answers all of it again.
                    log.error("fetching failed; shutting down", extra={"error": repr(exc)})
                    await self._shutdown()
                    raise
                await self._shutdown()
            else:
                await self._abandon_start()
        finally:
            await self.supervisor.stop()
            await self._close_tracking()
            if health is not None:
                health.stop()
            if self.producer is not None:
                with contextlib.suppress(KafkaError, OSError):
                    await self.producer.stop()

    async def _unless_stopped(self, starting: Awaitable[None]) -> bool:
        """Run the start-up unless SIGTERM comes first: a worker still waiting for its
        broker has nothing in hand, so it leaves at once. Returns whether it started."""
        start = asyncio.ensure_future(starting)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if start.done():
            start.result()  # its error, if it failed
            return True
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await start
        return False

    async def _abandon_start(self) -> None:
        log.info("stopped while starting", extra={"worker": self.worker_id})
        if self.pipeline is not None:
            await self.pipeline.close()
        if self.producer is not None:  # `loading` was said: take it back
            await self.announcer.stopped()

    async def _start(self) -> None:
        s = self.settings
        self._served = self.registry.served_names()
        deadline = await self._connect(self._served)
        await self._load()
        self.pipeline = Pipeline(self.registry, s, self.worker_id, self.metrics, self.supervisor)
        self.pipeline.start()
        self.adapter = self._adapter(self._served)
        await self._start_tracking(max(deadline, time.monotonic() + 10))
        self.consumer = await until_ready(
            "joining the group",
            lambda: self._start_consumer(self._served),
            s,
            max(deadline, time.monotonic() + 10),
        )
        self.commits.consumer = self.consumer
        self.fetcher = Fetcher(
            self.consumer, self.adapter, self.offsets, s.max_inflight, self.metrics, self.problems
        )
        self.probes.last_tick = lambda: self.fetcher.last_tick_s
        self.probes.joined = True
        log.info(
            "worker started",
            extra={
                "worker": self.worker_id,
                "group": s.consumer_group(),
                "shadow": s.shadow or None,
                "answer_log": s.answer_log,
                "models": self._served,
                "device": self._device_name(),
            },
        )
        self.supervisor.start("commit", self.commits.loop)
        if not s.shadow:  # a shadow serves nobody: no announcements, no control replies
            assert self.producer is not None
            control = ControlFollower(
                s, self.registry, self.announcer, self.producer, self.worker_id
            )
            self.supervisor.start("announce", self.announcer.loop)
            self.supervisor.start("control", control.loop)
        self.lag = LagReporter(
            self.consumer,
            self.topics,
            self.registry,
            self.metrics,
            self.offsets,
            lambda: self.adapter.inflight,
        )
        self.supervisor.start("lag", self.lag.loop)
        if s.poll_interval_s > 0:
            self.supervisor.start("poll", self._poll)

    async def _shutdown(self) -> None:
        """In order: silence what speaks for the worker, finish the work in hand,
        commit it, say goodbye, leave the group."""
        await self.supervisor.cancel(*SPEAKING_LOOPS)
        log.info("stopping: finishing the work in hand", extra={"inflight": self.adapter.inflight})
        try:
            await asyncio.wait_for(self._finish_in_hand(), self.settings.shutdown_timeout_s)
        except TimeoutError:
            self.outbox.close()
            self.adapter.abandon()
            log.error("shutdown timed out; unanswered requests stay uncommitted")
        await self.supervisor.cancel("commit")
        await self.commits.final()
        await self.supervisor.cancel("cameras")
        await self._close_tracking()  # before the goodbye: `stopped` is the last word
        await self.announcer.stopped()
        self.probes.joined = False
        await self.consumer.stop()  # leaves the group
        log.info("worker stopped", extra={"worker": self.worker_id})

    async def _finish_in_hand(self) -> None:
        assert self.pipeline is not None
        await self.pipeline.close()
        await self.adapter.drain()

    # -- start-up steps -----------------------------------------------------------------

    async def _connect(self, served: list[str]) -> float:
        """Topics, permissions and the producer, each retried while the cluster is
        still coming up (`consumer.startup`), within one `start_timeout_s`; returns
        that deadline (`time.monotonic()`), which joining the group shares."""
        s = self.settings
        deadline = time.monotonic() + s.start_timeout_s
        specs = self.worker_topics.at_start(served)
        await until_ready("creating topics", lambda: self.worker_topics.create(specs), s, deadline)
        await until_ready(
            "checking permissions", lambda: self.worker_topics.check_access(served), s, deadline
        )
        self.producer = await until_ready(
            "starting the producer", self._start_producer, s, deadline
        )
        self.announcer.producer = self.producer
        self.outbox = kafka_io.KafkaOutbox(self.producer)
        log.info(
            "connected to Kafka",
            extra={
                "bootstrap": s.bootstrap,
                "waited_s": round(time.monotonic() - self._created_at_s, 1),
            },
        )
        return deadline

    async def _start_producer(self) -> AIOKafkaProducer:
        return await kafka_io.started(
            kafka_io.producer(self.settings, "worker", self.settings.linger_ms)
        )

    async def _load(self) -> None:
        # Announce `loading` first: a bridge then knows a worker is coming for these
        # models and lets their requests wait in Kafka instead of answering 404.
        await self.announcer.every(self.registry.announce_loading())
        await asyncio.to_thread(self._freeze_the_lasting)
        entries = await asyncio.to_thread(self.registry.load_all)
        await self.announcer.every(entries)
        if not any(entry.state is ModelState.READY for entry in entries):
            # Joining the group would take partitions and answer nothing but errors.
            problems = "; ".join(
                f"{e.name}: {e.error.message if e.error else e.state}" for e in entries
            )
            raise ModelLoadFailed(
                f"no model could be loaded ({problems or 'no models in the repository'})"
            )

    def _freeze_the_lasting(self) -> None:
        """Put what lives as long as the process (the modules, TensorFlow's above all,
        and the clients) out of the cyclic collector's sight, or every full collection
        walks all of it (a quarter of the event loop's CPU at 512 frames in flight).

        Before the models load, not after: a frozen object is never collected, and a
        TensorFlow engine sits in reference cycles, so weights frozen at start would
        outlive a reload or a new version for good. TensorFlow is set up here for the
        models (its modules are 93% of the objects then, the large bench model 7%);
        garbage of the start-up is collected first, not made immortal.
        """
        if not self.settings.simulate_batch_ms:  # only simulated engines need no TensorFlow
            from engines.detector import tensorflow_device

            with contextlib.suppress(ValueError):  # a device not there: each model says so
                tensorflow_device(self.settings.device)
        gc.collect()
        gc.freeze()

    async def _start_consumer(self, served: list[str]) -> AIOKafkaConsumer:
        s = self.settings
        consumer = kafka_io.consumer(
            s,
            "worker",
            group_id=s.consumer_group(),
            enable_auto_commit=False,
            auto_offset_reset="latest" if s.shadow else "earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            metadata_max_age_ms=s.metadata_max_age_ms,
            check_crcs=s.check_crcs,
        )
        listener = Rebalance(self.commits, s.shutdown_timeout_s, self._place if s.shadow else None)
        listener.tracking = self.tracking
        if s.model_names() is None:  # every model: also answer requests for unknown ones
            consumer.subscribe(pattern=self.topics.requests_pattern, listener=listener)
        else:
            consumer.subscribe([self.topics.requests(m) for m in served], listener=listener)
        self.consumer = consumer  # a shadow's listener places the partitions it is assigned
        return await kafka_io.started(consumer)

    async def _place(self, assigned: set[TopicPartition]) -> None:
        await start_positions(
            self.consumer,
            assigned,
            self.settings.shadow_start_ms(),
            self.settings.broker_timeout_ms / 1000,
        )
        self.probes.positioned = True

    # -- tracking -------------------------------------------------------------------------

    async def _start_tracking(self, deadline: float) -> None:
        """Cameras configured before the first frame is taken: every worker applies a
        camera's frames under the same configuration (`consumer.tracking_stage`).
        Retried while the broker is away, within the start-up's `deadline`."""
        if not self.worker_topics.tracks:
            return
        self.tracking = TrackingStage(
            self.settings,
            self.topics,
            self.outbox,
            self._tracks,
            known=lambda model: self.registry.entry(model) is not None,
        )
        self.camera_feed = CameraFeed(self.settings, self.topics, self.tracking)
        await self.camera_feed.catch_up(deadline)
        await until_ready("starting the state reader", self.tracking.start, self.settings, deadline)
        self.adapter.tracking = self.tracking
        self.supervisor.start("cameras", self.camera_feed.loop)

    async def _close_tracking(self) -> None:
        if self.tracking is not None:
            await self.tracking.close()
            self.tracking = None
        if self.camera_feed is not None:
            await self.camera_feed.close()
            self.camera_feed = None

    def _tracks(self, model: str) -> bool:
        entry = self.registry.entry(model)
        spec = entry.spec if entry is not None else None
        return bool(spec is not None and spec.config.tracking)

    # -- answer log and shadow -------------------------------------------------------

    def _adapter(self, served: list[str]) -> RecordAdapter:
        s = self.settings
        assert self.pipeline is not None
        if not (s.shadow or s.answer_log):
            return RecordAdapter(self.pipeline, self.topics, self.outbox, self.worker_id)
        sink = AnswerSink(
            self.topics,
            self.outbox,
            self.metrics,
            Role.SHADOW if s.shadow else Role.SERVING,
            s.shadow or None,
            self.worker_topics.ensure_log,
            self.problems,
        )
        sink.created(*self.worker_topics.logs(served))
        if s.shadow:
            return ShadowAdapter(self.pipeline, self.topics, sink, self.worker_id)
        return RecordAdapter(
            self.pipeline, self.topics, self.outbox, self.worker_id, answer_log=sink
        )

    def _device_name(self) -> str:
        devices = {e.detector.device for e in self.registry.entries() if e.detector}
        return ",".join(sorted(devices)) or "none"

    # -- polling --------------------------------------------------------------------------

    async def _poll(self) -> None:
        await poll_versions(
            self.registry,
            self.settings.poll_interval_s,
            announce=self.announcer.announce,
            prepare=self.worker_topics.prepare_models,
            known=set(self._served),
        )

    # -- health -------------------------------------------------------------------------

    def _start_health(self) -> HealthServer | None:
        if not self.settings.metrics_port:
            return None
        server = HealthServer(
            self.settings.metrics_host,
            self.settings.metrics_port,
            self.metrics.registry,
            self.probes.live,
            self.probes.ready,
        )
        server.start()
        log.info("metrics and health", extra={"port": server.port})
        return server
