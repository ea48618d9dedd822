"""Structured logs for every tfstream process: one JSON object per line.

Shared by the consumer and the bridge (this module needs no TensorFlow).
Extra fields given as `log.info("...", extra={"model": m})` become keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """A line for people: the extra fields follow the message as key=value, since
    they often carry what the message is about (what a process waits for, why)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)  # a traceback, if any, follows on its own lines
        extras = " ".join(f"{key}={_text(value)}" for key, value in _extras(record).items())
        return f"{line} {extras}" if extras else line


def _text(value: object) -> str:
    """A value as one token: quoted (JSON) where it is empty or has spaces, quotes,
    '=' or line breaks."""
    text = str(value)
    plain = text and not any(c.isspace() or c in '"=' for c in text)
    return text if plain else json.dumps(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update(_extras(record))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """The services' logs: JSON lines, or (`fmt="text"`) timestamped text lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def configure_tool_logging() -> None:
    """The command-line tools': warnings and errors only, as short text lines (their
    results go to stdout). Like `logging.basicConfig`, it leaves a root logger that
    already has handlers alone (a tool's `main` called inside another program)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    # aiokafka logs an error per failed connection attempt; `consumer.startup` says
    # once what a tool waits for, and the tools report failed sends themselves.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
