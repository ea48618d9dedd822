"""Log lines keep their extra fields in both formats: they often say what the
message is about (what a process waits for, and why)."""

from __future__ import annotations

import json
import logging
import sys

from engines.logs import JsonFormatter, TextFormatter


def record() -> logging.LogRecord:
    return logging.makeLogRecord(
        {
            "name": "consumer.startup",
            "levelname": "WARNING",
            "msg": "waiting for Kafka",
            "step": "a worker to create p.requests.cars",
            "waited_s": 1.5,
            "reason": "",
        }
    )


def test_a_text_line_ends_with_its_extras_quoted_where_they_have_spaces() -> None:
    line = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record())
    assert line == (
        'WARNING consumer.startup: waiting for Kafka step="a worker to create p.requests.cars" '
        'waited_s=1.5 reason=""'
    )


def test_a_json_line_has_its_extras_as_keys() -> None:
    body = json.loads(JsonFormatter().format(record()))
    assert body["msg"] == "waiting for Kafka" and body["waited_s"] == 1.5
    assert body["step"] == "a worker to create p.requests.cars"


def test_a_text_line_keeps_its_extras_before_a_traceback() -> None:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        failed = record()
        failed.exc_info = sys.exc_info()
        failed.msg, failed.reason = "boom", "line1\nline2"
    first, *rest = TextFormatter("%(message)s").format(failed).splitlines()
    assert (
        first
        == 'boom step="a worker to create p.requests.cars" waited_s=1.5 reason="line1\\nline2"'
    )
    assert rest[0] == "Traceback (most recent call last):" and "ZeroDivisionError" in rest[-1]
