"""The Kafka worker: fetch, submit to the pipeline, commit what is answered.

Life of a worker:

1. create the topics it needs and check its permissions, retrying while the
   cluster is still coming up (`consumer.startup`, within `start_timeout_s`);
2. announce its models `loading` on `<prefix>.models`, load them (a failed
   model stays FAILED, the others serve; if none loads, exit 1), announce them;
3. join the consumer group: on every request topic (`<prefix>.requests.*`)
   when serving every model, so requests for unknown models get an error
   answer too; on the listed models' topics only when given `--models a,b`;
4. loop: fetch at most `max_inflight` unanswered records, hand each to the
   pipeline through `records.RecordAdapter` (record -> request, answer ->
   reply and DLQ records), commit offsets whose answers the broker acknowledged;
   beside it, supervised loops commit, re-announce, follow control commands,
   refresh lag metrics and roll in new model versions (`ModelRegistry.refresh`);
5. on revoke: wait for the revoked partitions' work, commit it, forget them;
6. on SIGTERM: stop fetching, finish and deliver what is in hand, commit,
   announce its models `stopped`, leave the group.

With `--answer-log` every answer is also copied to `<prefix>.answers.<model>`;
with `--shadow NAME` the worker joins a group of its own, announces nothing and
answers only to `<prefix>.shadow.NAME.<model>` (`consumer.answer_log`,
`consumer.shadow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import defaultdict
from dataclasses import replace
from functools import partial

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import KafkaError

from consumer import kafka_io
from consumer.access import check_access
from consumer.answer_log import AnswerSink, Role
from consumer.health import HealthServer
from consumer.metrics import WorkerMetrics
from consumer.offsets import OffsetTracker
from consumer.pipeline import Pipeline
from consumer.protocol import (
    Control,
    ControlCommand,
    ModelState,
    Reply,
    Topics,
    announcement_key,
)
from consumer.records import Record, RecordAdapter
from consumer.registry import Entry, ModelRegistry
from consumer.settings import ConsumerSettings
from consumer.shadow import ShadowAdapter, shadow_registry, start_positions
from consumer.startup import until_ready
from consumer.supervision import Supervisor
from engines.errors import InvalidRequest, ModelLoadFailed, TfstreamError

log = logging.getLogger(__name__)

#: Longest a fetch (or a wait for room to fetch) blocks the loop.
FETCH_WAIT_MS = 100
#: How often a revoke checks whether the revoked partitions' work is done.
REVOKE_POLL_S = 0.02
#: How often lag and backlog metrics are refreshed.
LAG_INTERVAL_S = 2.0
POSITION_TIMEOUT_S = 1.0
#: A fetch loop that has not turned for this long makes /health/live fail.
LIVE_STALL_S = 60.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.hand_back(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.worker.settings.shadow:
            await start_positions(
                self.worker.consumer, assigned, self.worker.settings.shadow_start_ms()
            )
            self.worker.positioned = True
        log.info(
            "partitions assigned",
            extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)},
        )


class Worker:
    def __init__(self, settings: ConsumerSettings) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.topics = Topics(settings.topic_prefix)
        self.metrics = WorkerMetrics(shadow_registry(settings.shadow) if settings.shadow else None)
        self.positioned = not settings.shadow
        """A shadow is ready once its first partitions are placed (`start_positions`)."""
        self.registry = ModelRegistry.from_settings(settings)
        self.stopping = asyncio.Event()
        self.offsets = OffsetTracker()
        self._capacity = asyncio.Event()
        self._joined = False
        self._last_tick_s = time.monotonic()
        self.supervisor = Supervisor(self.metrics.registry)
        self.producer: AIOKafkaProducer | None = None
        self._created_at_s = time.monotonic()
        self._served: list[str] = []
        """The models listed once at start: their topics exist; a model folder that
        appears later gets its topics from the poll loop."""
        self._model_info: dict[str, tuple[str, ...]] = {}
        self._lag_models: set[str] = set()

    # -- start ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `stopping` is set, then shut down cleanly.

        Raises:
            TfstreamError: Kafka refused this worker, was not ready within
                `start_timeout_s`, or no model could be loaded.
        """
        health = self._start_health()  # readiness stays false until the group is joined
        try:
            self._served = self.registry.served_names()
            deadline = await self._connect(self._served)
            await self._serve(self._served, deadline)
        finally:
            await self.supervisor.stop()
            if health is not None:
                health.stop()
            if self.producer is not None:
                with contextlib.suppress(KafkaError, OSError):
                    await self.producer.stop()

    def _model_topic_specs(self, models: list[str]) -> list[kafka_io.TopicSpec]:
        """The request and results topics of `models`."""
        p = self.settings.partitions
        return [kafka_io.TopicSpec(self.topics.requests(m), p) for m in models] + [
            kafka_io.TopicSpec(self.topics.results(m), p) for m in models
        ]

    async def _connect(self, served: list[str]) -> float:
        """Topics, permissions and the producer, each retried while the cluster is
        still coming up (`consumer.startup`), within one `start_timeout_s`; returns
        that deadline (`time.monotonic()`), which joining the group shares."""
        s = self.settings
        deadline = time.monotonic() + s.start_timeout_s
        specs = [
            kafka_io.TopicSpec(self.topics.dlq, s.partitions),
            kafka_io.TopicSpec(self.topics.models, 1, compacted=True),
            kafka_io.TopicSpec(self.topics.control, 1),
        ]
        specs += self._model_topic_specs(served)
        specs += [kafka_io.TopicSpec(topic, s.partitions) for topic in self._log_topics(served)]
        await until_ready(
            "creating topics",
            lambda: kafka_io.ensure_topics(s, specs, s.replication_factor),
            s,
            deadline,
        )
        await until_ready("checking permissions", lambda: self._check_access(served), s, deadline)
        self.producer = await until_ready(
            "starting the producer", self._start_producer, s, deadline
        )
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

    async def _serve(self, served: list[str], deadline: float) -> None:
        s = self.settings
        # Announce `loading` first: a bridge then knows a worker is coming for these
        # models and lets their requests wait in Kafka instead of answering 404.
        for entry in self.registry.announce_loading():
            await self._announce(entry)
        entries = await asyncio.to_thread(self.registry.load_all)
        for entry in entries:
            await self._announce(entry)
        if not any(entry.state is ModelState.READY for entry in entries):
            # Joining the group would take partitions and answer nothing but errors.
            problems = "; ".join(
                f"{e.name}: {e.error.message if e.error else e.state}" for e in entries
            )
            raise ModelLoadFailed(
                f"no model could be loaded ({problems or 'no models in the repository'})"
            )
        self.pipeline = Pipeline(self.registry, s, self.worker_id, self.metrics, self.supervisor)
        self.pipeline.start()
        self.adapter = self._adapter(served)
        self.consumer = await until_ready(
            "joining the group",
            lambda: self._start_consumer(served),
            s,
            max(deadline, time.monotonic() + 10),
        )
        self._joined = True
        log.info(
            "worker started",
            extra={
                "worker": self.worker_id,
                "group": s.consumer_group(),
                "shadow": s.shadow or None,
                "answer_log": s.answer_log,
                "models": served,
                "device": self._device_name(),
            },
        )
        self.supervisor.start("commit", self._commit_loop)
        if not s.shadow:  # a shadow serves nobody: no announcements, no control replies
            self.supervisor.start("announce", self._announce_loop)
            self.supervisor.start("control", self._control_loop)
        self.supervisor.start("lag", self._lag_loop)
        if s.poll_interval_s > 0:
            self.supervisor.start("poll", self._poll_loop)
        await self._fetch_loop()
        await self._shutdown()

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
        if s.model_names() is None:  # every model: also answer requests for unknown ones
            consumer.subscribe(pattern=self.topics.requests_pattern, listener=_Rebalance(self))
        else:
            consumer.subscribe([self.topics.requests(m) for m in served], listener=_Rebalance(self))
        self.consumer = consumer  # a shadow's listener places the partitions it is assigned
        return await kafka_io.started(consumer)

    async def _check_access(self, served: list[str]) -> None:
        """Refuse to start, naming every missing ACL, rather than fail record by record.

        Replies go to clients' `<prefix>.replies.*` topics, which come and go: Write
        there cannot be checked ahead; a refused reply goes to the results topic.
        """
        needs: dict[str, list[str]] = {}
        if not self.settings.shadow:
            needs[self.topics.dlq] = ["Write"]
            needs[self.topics.models] = ["Write"]
            needs[self.topics.control] = ["Read"]
        for model in served:
            needs[self.topics.requests(model)] = ["Read"]
            if not self.settings.shadow:
                needs[self.topics.results(model)] = ["Write"]
        for topic in self._log_topics(served):
            needs[topic] = ["Write"]
        await check_access(self.settings, needs, self.settings.consumer_group())

    # -- answer log and shadow -------------------------------------------------------

    def _log_topics(self, served: list[str]) -> list[str]:
        """The answer-log (`--answer-log`) or shadow (`--shadow`) topics of `served`."""
        if self.settings.shadow:
            return [self.topics.shadow(self.settings.shadow, m) for m in served]
        if self.settings.answer_log:
            return [self.topics.answers(m) for m in served]
        return []

    def _adapter(self, served: list[str]) -> RecordAdapter:
        s = self.settings
        if not (s.shadow or s.answer_log):
            return RecordAdapter(self.pipeline, self.topics, self.outbox, self.worker_id)
        sink = AnswerSink(
            self.topics,
            self.outbox,
            self.metrics,
            Role.SHADOW if s.shadow else Role.SERVING,
            s.shadow or None,
            self._ensure_topic,
        )
        sink.created(*self._log_topics(served))
        if s.shadow:
            return ShadowAdapter(self.pipeline, self.topics, sink, self.worker_id)
        return RecordAdapter(
            self.pipeline, self.topics, self.outbox, self.worker_id, answer_log=sink
        )

    async def _ensure_topic(self, topic: str) -> None:
        """Create a log topic first needed after start (a model this worker does not
        serve was asked for); a failure is logged, and the send then says what is wrong."""
        s = self.settings
        try:
            await kafka_io.ensure_topics(
                s, [kafka_io.TopicSpec(topic, s.partitions)], s.replication_factor
            )
        except KafkaError as exc:
            log.warning("cannot create topic", extra={"topic": topic, "error": repr(exc)})

    def _device_name(self) -> str:
        devices = {e.detector.device for e in self.registry.entries() if e.detector}
        return ",".join(sorted(devices)) or "none"

    # -- the loop -----------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        s = self.settings
        while not self.stopping.is_set():
            self._last_tick_s = time.monotonic()
            room = s.max_inflight - self.adapter.inflight
            if room <= 0:
                self._capacity.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._capacity.wait(), FETCH_WAIT_MS / 1000)
                continue
            batches = await self.consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=room)
            for tp, records in batches.items():
                for rec in records:
                    self.offsets.track(tp, rec.offset)
                    done = self.adapter.submit(
                        Record(
                            rec.topic,
                            rec.partition,
                            rec.offset,
                            rec.key,
                            rec.value,
                            tuple(rec.headers),
                            rec.timestamp,
                        )
                    )
                    done.add_done_callback(partial(self._answered, tp, rec.offset))

    def _answered(self, tp: TopicPartition, offset: int, done: asyncio.Future[None]) -> None:
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        if error is None:
            self.offsets.finish(tp, offset)
        else:  # never delivered: leave it uncommitted, it will be read again
            log.error(
                "answer not delivered; the request stays uncommitted",
                extra={
                    "partition": f"{tp.topic}:{tp.partition}",
                    "offset": offset,
                    "error": repr(error),
                },
            )
        self._capacity.set()

    async def _commit(self, partitions: set[TopicPartition] | None = None) -> None:
        points = self.offsets.commit_points(partitions)
        if not points:
            return
        try:
            await self.consumer.commit(points)  # type: ignore[arg-type]
        except KafkaError as exc:  # rebalancing or broker away: the next commit catches up
            log.warning("commit failed", extra={"error": repr(exc)})
            return
        self.offsets.committed(points)

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_ms / 1000)
            await self._commit()

    async def hand_back(self, revoked: set[TopicPartition]) -> None:
        """Before partitions move: finish their work in hand and commit it."""
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        while self.offsets.pending(revoked) and time.monotonic() < deadline:
            await asyncio.sleep(REVOKE_POLL_S)
        unfinished = self.offsets.pending(revoked)
        if unfinished:  # they will be answered here and again by the partitions' next owner
            log.warning(
                "revoke timed out: unfinished requests will be answered twice",
                extra={"unfinished": unfinished, "timeout_s": self.settings.shutdown_timeout_s},
            )
        await self._commit(revoked)
        self.offsets.forget(revoked)
        log.info(
            "partitions revoked",
            extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in revoked)},
        )

    # -- shutdown -------------------------------------------------------------------

    async def _shutdown(self) -> None:
        log.info("stopping: finishing the work in hand", extra={"inflight": self.adapter.inflight})
        try:
            await asyncio.wait_for(self._finish_in_hand(), self.settings.shutdown_timeout_s)
        except TimeoutError:
            self.outbox.close()
            log.error("shutdown timed out; unanswered requests stay uncommitted")
        await self._commit()
        # `stopped`, not a tombstone: the model still exists, and a bridge keeps
        # letting its requests wait in Kafka for the next worker.
        for entry in self.registry.entries():
            await self._announce(replace(entry, state=ModelState.STOPPED))
        self._joined = False
        await self.consumer.stop()  # leaves the group
        log.info("worker stopped", extra={"worker": self.worker_id})

    async def _finish_in_hand(self) -> None:
        await self.pipeline.close()
        await self.adapter.drain()

    # -- announcements, control, lag ------------------------------------------------

    async def _announce(self, entry: Entry) -> None:
        labels = (
            entry.name,
            entry.state.value,
            entry.detector.device if entry.detector else "",
            entry.spec.engine.value if entry.spec else "",
            str(entry.version),
        )
        previous = self._model_info.get(entry.name)
        if previous is not None and previous != labels:  # one label set per model, the current
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(*previous)
        self._model_info[entry.name] = labels
        self.metrics.model_info.labels(*labels).set(1)
        if self.settings.shadow:  # never offered to clients
            return
        announcement = self.registry.announcement(
            entry, self.worker_id, self.settings.announce_ttl_ms
        )
        assert self.producer is not None
        try:
            await self.producer.send_and_wait(
                self.topics.models,
                announcement.to_json(),
                key=announcement_key(entry.name, self.worker_id),
            )
        except KafkaError as exc:
            log.warning("announcement failed", extra={"model": entry.name, "error": repr(exc)})

    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.announce_ttl_ms / 3000)
            for entry in self.registry.entries():
                await self._announce(entry)

    async def _control_loop(self) -> None:
        """Every worker reads every control command (no group), from now on."""
        control = kafka_io.consumer(
            self.settings, "control", group_id=None, auto_offset_reset="latest"
        )
        control.subscribe([self.topics.control])
        await control.start()
        try:
            async for message in control:
                try:
                    command = Control.from_json(message.value or b"")
                except InvalidRequest as exc:
                    log.warning("bad control command", extra={"error": exc.message})
                    continue
                await self._on_control(command)
        finally:
            await control.stop()

    async def _on_control(self, command: Control) -> None:
        """Load what the command names; answer once: the model's state, or for '*'
        every served model's state (one broken model does not fail the others)."""
        if command.command is not ControlCommand.LOAD:
            return
        names = self.registry.served_names() if command.model == "*" else [command.model]
        states: dict[str, str] = {}
        error: TfstreamError | None = None
        for name in names:
            try:
                entry = await asyncio.to_thread(self.registry.load, name, command.force)
            except TfstreamError as exc:
                error = exc
                continue
            await self._announce(entry)
            states[name] = entry.state.value
            error = error or (entry.error if command.model != "*" else None)
        if command.reply_to:
            reply = Reply(
                command.correlation_id,
                command.model,
                data=None if error else {"models": states},
                error=error,
                worker=self.worker_id,
            )
            with contextlib.suppress(KafkaError):
                await self.producer.send_and_wait(
                    command.reply_to, reply.to_json(), headers=reply.headers()
                )

    async def _lag_loop(self) -> None:
        while True:
            await asyncio.sleep(LAG_INTERVAL_S)
            self.refresh_lag_metrics(await self._lag())

    async def _lag(self) -> dict[str, int]:
        """Unfetched requests per model over the partitions assigned now.

        A rebalance may take a partition away during any `await`, and aiokafka's
        `highwater` asserts that the partition is still assigned: it is read only
        right after checking that, with no `await` in between.
        """
        lag: dict[str, int] = defaultdict(int)
        for tp in list(self.consumer.assignment()):
            if tp not in self.consumer.assignment():  # moved away while we awaited
                continue
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            with contextlib.suppress(KafkaError, TimeoutError):  # a partition moving away
                position = await asyncio.wait_for(self.consumer.position(tp), POSITION_TIMEOUT_S)
                lag[self.topics.model_of(tp.topic)] += max(0, highwater - position)
        return lag

    def refresh_lag_metrics(self, lag: dict[str, int]) -> None:
        """Set lag and backlog per model; remove the label sets of models gone."""
        models = set(lag) | {e.name for e in self.registry.entries()}
        for gone in self._lag_models - models:
            for gauge in (self.metrics.lag, self.metrics.backlog_seconds, self.metrics.throughput):
                with contextlib.suppress(KeyError):
                    gauge.remove(gone)
        self._lag_models = models
        assignment = self.consumer.assignment()
        for model in models:
            inflight = self.offsets.pending(
                {tp for tp in assignment if self.topics.model_of(tp.topic) == model}
            )
            self.metrics.lag.labels(model).set(lag.get(model, 0))
            self.metrics.set_backlog(model, lag.get(model, 0) + inflight)
        self.metrics.inflight.set(self.adapter.inflight)

    async def _poll_loop(self) -> None:
        """Roll in new version folders (`ModelRegistry.refresh`) as they appear; a model
        folder new to a worker serving every model gets its topics first."""
        s = self.settings
        known = set(self._served)
        while True:
            await asyncio.sleep(s.poll_interval_s)
            fresh = [name for name in self.registry.served_names() if name not in known]
            if fresh:
                try:
                    await kafka_io.ensure_topics(
                        s, self._model_topic_specs(fresh), s.replication_factor
                    )
                except (KafkaError, TfstreamError) as exc:  # broker away: the next turn tries again
                    log.warning("cannot create topics", extra={"models": fresh, "error": repr(exc)})
                    continue
                known.update(fresh)
            for entry in await asyncio.to_thread(self.registry.refresh_all):
                await self._announce(entry)

    # -- health -------------------------------------------------------------------------

    def _start_health(self) -> HealthServer | None:
        if not self.settings.metrics_port:
            return None
        server = HealthServer(
            self.settings.metrics_host,
            self.settings.metrics_port,
            self.metrics.registry,
            self._live,
            self._ready,
        )
        server.start()
        log.info("metrics and health", extra={"port": server.port})
        return server

    def _live(self) -> tuple[bool, dict[str, object]]:
        stalled_s = time.monotonic() - self._last_tick_s
        looping = stalled_s < LIVE_STALL_S or not self._joined
        detail: dict[str, object] = {"loop_stalled_s": round(stalled_s, 1)}
        if self.supervisor.failed:
            detail["failed_tasks"] = dict(self.supervisor.failed)
        return looping and self.supervisor.healthy, detail

    def _ready(self) -> tuple[bool, dict[str, object]]:
        models = {e.name: e.state.value for e in self.registry.entries()}
        ready = (
            self._joined
            and self.positioned
            and any(state == ModelState.READY.value for state in models.values())
        )
        versions = {e.name: e.version for e in self.registry.entries() if e.detector is not None}
        details: dict[str, object] = {
            "joined": self._joined,
            "models": models,
            "versions": versions,
        }
        if self.settings.shadow:
            details["shadow"] = self.settings.shadow
            details["positioned"] = self.positioned
        return ready, details
