"""What a native Kafka client would save the consumer (not part of `make bench`).

    python -m bench.native_kafka [--records 1500] [--runs 3] [--rounds 300]

Issue 31 asks, where Python cannot reach its targets, what would, with figures.
After the cuts in docs/profile.md most of the consumer's event loop is aiokafka's
Python fetch path and its copies, and a lone request's overhead is mostly the two
trips through the broker. Both are put here against librdkafka (confluent-kafka,
already a dev dependency for tests/protocol), on a broker of its own:

1. **Fetch.** A topic holding `--records` textured 1920x1080 camera frames
   (~450 KB, 32 distinct ones) is read from the start by a fresh process, with
   aiokafka as the worker builds it (`consumer.kafka_io.consumer`: its fetch sizes
   and `consumer.kafka_reader`) and with confluent-kafka at the same fetch sizes;
   each process touches every value's length, nothing more. Its CPU (every thread,
   `getrusage`) from subscribing to the last record, per record; the two clients
   alternate, `--runs` each, medians.
2. **Lone round trip.** An echo process per client reads a request topic and writes
   every value back to a reply topic (produce with acks=all, idempotent, no linger,
   as the worker's replies go); the benchmark sends one 40 KB value at a time and
   waits for it to come back, alternating the two clients round by round. The
   figure is what two trips through the broker cost each client; the echo
   processes' CPU per round is read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.cpu import process_cpu_s
from consumer import kafka_io

CLIENTS = ("aiokafka", "confluent")
MAX_MESSAGE = 16 * 1024 * 1024

_READ = """
import asyncio, resource, sys, time
bootstrap, topic, count, client = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

async def with_aiokafka():
    from consumer import kafka_io
    from consumer.settings import KafkaClientSettings
    settings = KafkaClientSettings(bootstrap=bootstrap)
    consumer = kafka_io.consumer(settings, "bench", auto_offset_reset="earliest",
                                 enable_auto_commit=False, group_id=None)
    start = cpu()
    await consumer.start()
    consumer.subscribe([topic])
    seen = size = 0
    while seen < count:
        batches = await consumer.getmany(timeout_ms=1000, max_records=64)
        for records in batches.values():
            for record in records:
                size += len(record.value)
                seen += 1
    used = cpu() - start
    await consumer.stop()
    return used, seen, size

def with_confluent():
    from confluent_kafka import Consumer
    from consumer import kafka_io
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "bench-" + str(time.time()),
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "max.partition.fetch.bytes": kafka_io.FETCH_PARTITION_BYTES,
        "fetch.max.bytes": kafka_io.FETCH_BYTES,
        "receive.message.max.bytes": kafka_io.FETCH_BYTES + 16 * 1024 * 1024,
    })
    start = cpu()
    consumer.subscribe([topic])
    seen = size = 0
    while seen < count:
        for message in consumer.consume(num_messages=64, timeout=1.0):
            if message.error():
                continue
            size += len(message.value())
            seen += 1
    used = cpu() - start
    consumer.close()
    return used, seen, size

t = time.perf_counter()
used, seen, size = asyncio.run(with_aiokafka()) if client == "aiokafka" else with_confluent()
print(1000 * used / seen, seen, size / seen / 1024, time.perf_counter() - t)
"""

_ECHO = """
import asyncio, sys
bootstrap, requests, replies, client = sys.argv[1:5]
from aiokafka import TopicPartition

async def with_aiokafka():
    from consumer import kafka_io
    from consumer.settings import KafkaClientSettings
    settings = KafkaClientSettings(bootstrap=bootstrap)
    consumer = kafka_io.consumer(settings, "echo", auto_offset_reset="earliest", group_id=None)
    producer = kafka_io.producer(settings, "echo")
    await consumer.start(); await producer.start()
    consumer.assign([TopicPartition(requests, 0)])
    print("ready", flush=True)
    async for records in kafka_io.follow(consumer, "requests"):
        for record in records:
            await producer.send(replies, record.value, key=record.key)

def with_confluent():
    from confluent_kafka import Consumer, Producer
    from confluent_kafka import TopicPartition as Partition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "echo",
                         "auto.offset.reset": "earliest", "socket.nagle.disable": True,
                         "fetch.wait.max.ms": 500, "fetch.min.bytes": 1})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all",
                         "enable.idempotence": True, "socket.nagle.disable": True})
    consumer.assign([Partition(requests, 0, 0)])
    print("ready", flush=True)
    while True:
        message = consumer.poll(1.0)
        if message is not None and not message.error():
            producer.produce(replies, message.value(), key=message.key())
        producer.poll(0)

asyncio.run(with_aiokafka()) if client == "aiokafka" else with_confluent()
"""


def _child(code: str, *args: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        text=True,
        **popen,  # type: ignore[call-overload]
    )


def create_topics(bootstrap: str, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(n, 1, 1, config={"max.message.bytes": str(MAX_MESSAGE)}) for n in names]
    )
    for future in futures.values():
        future.result(30)


def fill(bootstrap: str, topic: str, records: int) -> float:
    """`records` camera frames into `topic`; their mean size in KB."""
    from confluent_kafka import Producer

    from bench.raw_engine import textured_jpegs

    frames = textured_jpegs(32, 1920, 1080)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": MAX_MESSAGE}
    )
    for i in range(records):
        while True:
            try:
                producer.produce(topic, frames[i % len(frames)])
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)
    return sum(map(len, frames)) / len(frames) / 1024


def fetch_cost(bootstrap: str, records: int, runs: int) -> dict[str, list[float]]:
    topic = f"frames-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [topic])
    kb = fill(bootstrap, topic, records)
    print(f"fetch: {records} records of {kb:.0f} KB in {topic}", flush=True)
    out: dict[str, list[float]] = {c: [] for c in CLIENTS}
    for run in range(runs):
        for client in CLIENTS if run % 2 == 0 else CLIENTS[::-1]:
            proc = _child(_READ, bootstrap, topic, str(records), client, stdout=subprocess.PIPE)
            stdout, _ = proc.communicate(timeout=600)
            ms, seen, _, wall = stdout.split()
            out[client].append(float(ms))
            print(f"  {client:9s} {float(ms):.3f} CPU ms/record ({seen} in {float(wall):.1f} s)")
    return out


async def round_trips(bootstrap: str, rounds: int) -> dict[str, dict[str, float]]:
    from aiokafka import TopicPartition
    from confluent_kafka import Consumer, Producer
    from confluent_kafka import TopicPartition as Partition

    from consumer.settings import KafkaClientSettings

    tag = uuid.uuid4().hex[:8]
    topics = {c: (f"req-{c}-{tag}", f"rep-{c}-{tag}") for c in CLIENTS}
    create_topics(bootstrap, [t for pair in topics.values() for t in pair])
    echoes = {c: _child(_ECHO, bootstrap, *topics[c], c, stdout=subprocess.PIPE) for c in CLIENTS}
    try:
        for echo in echoes.values():
            assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        settings = KafkaClientSettings(bootstrap=bootstrap)
        a_producer = await kafka_io.started(kafka_io.producer(settings, "bench"))
        a_consumer = kafka_io.consumer(
            settings, "bench", auto_offset_reset="earliest", group_id=None
        )
        await kafka_io.started(a_consumer)
        # Fresh topics, read from their start: nothing sent is missed while a reader starts.
        a_consumer.assign([TopicPartition(topics["aiokafka"][1], 0)])
        c_producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 0,
                "acks": "all",
                "enable.idempotence": True,
                "socket.nagle.disable": True,
            }
        )
        c_consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{tag}",
                "auto.offset.reset": "earliest",
                "socket.nagle.disable": True,
                "fetch.wait.max.ms": 500,
                "fetch.min.bytes": 1,
            }
        )
        c_consumer.assign([Partition(topics["confluent"][1], 0, 0)])
        payload = os.urandom(40 * 1024)

        async def via_aiokafka(value: bytes) -> float:
            started = time.perf_counter()
            await a_producer.send(topics["aiokafka"][0], value)
            while time.perf_counter() - started < 30:
                got = await a_consumer.getmany(timeout_ms=2000)
                if any(r.value == value for rs in got.values() for r in rs):
                    return time.perf_counter() - started
            raise TimeoutError("no echo through aiokafka in 30 s")

        def via_confluent(value: bytes) -> float:
            started = time.perf_counter()
            c_producer.produce(topics["confluent"][0], value)
            c_producer.poll(0)
            while time.perf_counter() - started < 30:
                message = c_consumer.poll(2.0)
                if message is not None and not message.error() and message.value() == value:
                    return time.perf_counter() - started
            raise TimeoutError("no echo through confluent-kafka in 30 s")

        for _ in range(20):  # both paths warm: partitions assigned, connections open
            await via_aiokafka(payload[:-8] + os.urandom(8))
            via_confluent(payload[:-8] + os.urandom(8))
        times: dict[str, list[float]] = {c: [] for c in CLIENTS}
        cpu_before = {c: process_cpu_s(echoes[c].pid) for c in CLIENTS}
        for i in range(rounds):
            value = payload[:-8] + i.to_bytes(8, "big")
            times["aiokafka"].append(await via_aiokafka(value))
            times["confluent"].append(via_confluent(value))
        cpu_after = {c: process_cpu_s(echoes[c].pid) for c in CLIENTS}
        c_consumer.close()
        await a_consumer.stop()
        await a_producer.stop()
        return {
            c: {
                "p50": 1000 * statistics.median(times[c]),
                "p90": 1000 * statistics.quantiles(times[c], n=10)[-1],
                "echo_cpu": 1000 * (cpu_after[c] - cpu_before[c]) / rounds,
            }
            for c in CLIENTS
        }
    finally:
        for echo in echoes.values():
            echo.kill()
            echo.wait()


def main(argv: list[str] | None = None) -> int:
    from deploy.local.kafka import LocalKafkaCluster

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1500, help="frames in the fetch topic")
    parser.add_argument("--runs", type=int, default=3, help="reads of it by each client")
    parser.add_argument("--rounds", type=int, default=300, help="lone round trips per client")
    args = parser.parse_args(argv)
    os.environ.setdefault("TFSTREAM_KAFKA_JVM_OPTS", "-XX:TieredStopAtLevel=4 -Xmx1g")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tfstream-native-"))
    cluster = LocalKafkaCluster(brokers=1, workdir=work / "kafka")
    cluster.start(timeout_s=120)
    try:
        fetched = fetch_cost(cluster.bootstrap, args.records, args.runs)
        for client, values in fetched.items():
            print(
                f"fetch, {client}: {statistics.median(values):.3f} CPU ms per 1080p record "
                f"(runs {', '.join(f'{v:.3f}' for v in values)})"
            )
        trips = asyncio.run(round_trips(cluster.bootstrap, args.rounds))
        for client, figures in trips.items():
            print(
                f"lone round trip, {client} both ends: p50 {figures['p50']:.2f} ms, "
                f"p90 {figures['p90']:.2f} ms; echo process CPU {figures['echo_cpu']:.2f} ms/round"
            )
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)  # the broker's data: ~0.7 GB of frames
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
