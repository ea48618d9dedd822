"""`tfstream-zones`: publish cameras' tracking, zones and lines to `<prefix>.zones`.

Every worker follows that compacted topic (key = camera) and applies a change
from the camera's next frame, without a restart (docs/tracking.md). The file is
the YAML (or JSON) of docs/tracking.md, "Camera configuration"; it is checked
whole before anything is written, so a broken file changes nothing.

    tfstream-zones --bootstrap localhost:9092 --file zones.yaml
    tfstream-zones --bootstrap localhost:9092 --remove dock-1
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from aiokafka.errors import KafkaError

from consumer import kafka_io
from consumer.access import explain
from consumer.protocol import Topics
from consumer.settings import KafkaClientSettings
from consumer.startup import until_ready
from consumer.tracking.config import CameraConfig, parse_cameras
from engines.errors import TfstreamError
from engines.logs import configure_tool_logging
from engines.settings import cli_config, parse_cli


class ZonesSettings(KafkaClientSettings):
    """tfstream-zones: publish cameras' tracking, zones and lines (a YAML or JSON file,
    docs/tracking.md) to <prefix>.zones, where every worker picks them up without a
    restart. Every option is also an environment variable TFSTREAM_<OPTION>."""

    model_config = cli_config("tfstream-zones")

    file: Path | None = None
    """The cameras file: `cameras:` and a list of cameras with their zones and lines."""
    remove: str = ""
    """Camera to remove (a tombstone): it follows its model's default again."""


async def publish(settings: ZonesSettings, cameras: list[CameraConfig]) -> int:
    """Write one record per camera (and a tombstone per removed one); returns how many.

    Raises:
        NotAuthorized: Kafka refused the credentials or the topic.
        ServiceUnavailable: the broker cannot be reached.
    """
    topic = Topics(settings.topic_prefix).zones
    records: list[tuple[bytes, bytes | None]] = [c.to_record() for c in cameras]
    if settings.remove:
        records.append((settings.remove.encode(), None))

    async def connect() -> object:
        try:
            await kafka_io.ensure_topics(settings, [kafka_io.TopicSpec(topic, 1, compacted=True)])
            return await kafka_io.started(kafka_io.producer(settings, "zones", 0))
        except (KafkaError, OSError) as exc:
            raise await explain(exc, settings) from exc

    producer = await until_ready("connecting", connect, settings)
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)  # type: ignore[attr-defined]
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await producer.stop()  # type: ignore[attr-defined]
    return len(records)


def main(argv: Sequence[str] | None = None) -> int:
    configure_tool_logging()
    settings = parse_cli(ZonesSettings, argv, required=["bootstrap"])
    try:
        if settings.file is None and not settings.remove:
            print("error: give --file or --remove", file=sys.stderr)
            return 2
        cameras = [] if settings.file is None else parse_cameras(settings.file.read_text())
        written = asyncio.run(publish(settings, cameras))
    except OSError as exc:
        print(f"error: cannot read {settings.file}: {exc}", file=sys.stderr)
        return 1
    except TfstreamError as exc:
        print(f"error: [{exc.code}] {exc.message}", file=sys.stderr)
        return 1
    for camera in cameras:
        print(
            f"{camera.camera}: tracking={str(camera.tracking).lower()} "
            f"lines={len(camera.lines)} zones={len(camera.zones)}"
        )
    if settings.remove:
        print(f"{settings.remove}: removed")
    print(f"{written} record(s) written to {Topics(settings.topic_prefix).zones}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
