"""`tfstream-consumer` (also `python -m consumer`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from consumer.settings import ConsumerSettings
from engines.errors import TfstreamError
from engines.logs import configure_logging
from engines.settings import parse_cli
from engines.tracing import configure_tracing

log = logging.getLogger("consumer")


async def serve(settings: ConsumerSettings) -> None:
    """Run a worker until SIGTERM or SIGINT, then shut it down cleanly."""
    from consumer.worker import Worker

    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    await worker.run()


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_cli(ConsumerSettings, argv, required=["bootstrap"])
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing(settings, "tfstream-consumer")
    try:
        asyncio.run(serve(settings))
    except TfstreamError as exc:  # refused, Kafka not ready in time, no model: one line
        log.error(
            "worker failed: [%s] %s",
            exc.code,
            exc.message,
            extra={"code": exc.code, "error": exc.message},
        )
        return 1
    except Exception as exc:
        log.exception("worker failed", extra={"error": repr(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
