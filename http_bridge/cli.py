"""`tfstream-bridge` (also `python -m http_bridge`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from engines.logs import configure_logging
from engines.settings import parse_cli
from engines.tracing import configure_tracing
from http_bridge.settings import BridgeSettings

log = logging.getLogger("http_bridge")


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_cli(BridgeSettings, argv)
    if bool(settings.https_certfile) != bool(settings.https_keyfile):
        print("error: --https-certfile and --https-keyfile go together", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing(settings, "tfstream-bridge")
    import uvicorn

    from http_bridge.app import create_app

    mode = (
        f"Kafka at {settings.bootstrap}"
        if not settings.embedded
        else f"embedded, models from {settings.repository}"
    )
    log.info(
        "tfstream-bridge on %s://%s:%d (%s); API docs at /docs",
        settings.scheme,
        settings.host,
        settings.port,
        mode,
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our logging set-up
        timeout_graceful_shutdown=max(5, int(settings.answer_timeout_s)),
        ssl_certfile=settings.https_certfile,
        ssl_keyfile=settings.https_keyfile,
    )
    server = uvicorn.Server(config)
    if hasattr(app.state.backend, "on_give_up"):  # Kafka mode: stop serving, then exit 1

        def stop_serving() -> None:
            server.should_exit = True

        app.state.backend.on_give_up = stop_serving
    server.run()
    gave_up = getattr(app.state.backend, "gave_up", None)
    if gave_up is not None:  # Kafka not ready within --start-timeout-s: one line, exit 1
        log.error("bridge failed: [%s] %s", gave_up.code, gave_up.message)
        return 1
    return 0 if server.started else 3  # 3: the application did not start, as uvicorn.run


if __name__ == "__main__":
    sys.exit(main())
