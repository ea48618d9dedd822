"""The one retry-with-backoff loop (`startup.retrying`) and `until_ready` on it: the
waits double up to their cap, a refusal ends the retries at once, the deadline is
kept. The waits are recorded instead of slept (no broker, no real time)."""

from __future__ import annotations

import inspect
import logging
import time

import pytest
from aiokafka.errors import KafkaConnectionError

from consumer import startup
from consumer.settings import KafkaClientSettings
from engines.errors import NotAuthorized, ServiceUnavailable
from http_bridge import kafka_backend


class Attempts:
    """Fails with each of `failures` in turn, then answers 'done'."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(startup.asyncio, "sleep", sleep)
    return slept


@pytest.mark.asyncio
async def test_retrying_doubles_its_wait_up_to_the_cap_and_asks_before_each(
    waits: list[float],
) -> None:
    attempt = Attempts(*(ValueError(str(i)) for i in range(6)))
    told: list[tuple[str, float]] = []

    async def before_wait(exc: BaseException, delay_s: float) -> None:
        told.append((str(exc), delay_s))

    assert await startup.retrying(attempt, ValueError, before_wait, 0.5, 3.0) == "done"
    assert attempt.calls == 7
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert told == list(zip([str(i) for i in range(6)], waits, strict=True))


@pytest.mark.asyncio
async def test_retrying_stops_when_told_and_lets_other_errors_through(
    waits: list[float],
) -> None:
    async def give_up(exc: BaseException, delay_s: float) -> None:
        raise ServiceUnavailable("no more") from exc

    with pytest.raises(ServiceUnavailable, match="no more"):
        await startup.retrying(Attempts(ValueError()), ValueError, give_up)
    attempt = Attempts(KeyError("not retried"))
    with pytest.raises(KeyError):
        await startup.retrying(attempt, ValueError, give_up)
    assert attempt.calls == 1 and waits == []


@pytest.mark.asyncio
async def test_until_ready_waits_out_a_broker_away_and_refuses_at_once(
    waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    settings = KafkaClientSettings(bootstrap="127.0.0.1:1", start_timeout_s=60)
    caplog.set_level(logging.WARNING, logger="consumer.startup")
    away = [KafkaConnectionError("not listening") for _ in range(3)]
    assert await startup.until_ready("connecting", Attempts(*away), settings) == "done"
    assert waits == [0.25, 0.5, 1.0]
    assert [r.getMessage() for r in caplog.records] == ["waiting for Kafka"]  # once per cause
    refused = Attempts(NotAuthorized("refused the credentials"), *away)
    with pytest.raises(NotAuthorized):
        await startup.until_ready("connecting", refused, settings)
    assert refused.calls == 1
    with pytest.raises(ServiceUnavailable, match=r"not ready after 60s \(connecting\)"):
        await startup.until_ready("connecting", Attempts(*away), settings, time.monotonic())


def test_there_is_one_retry_loop() -> None:
    """`until_ready` and the bridge's connection retry through `retrying`, not a loop each."""
    for function in (startup.until_ready, kafka_backend.KafkaBackend._connect):
        source = inspect.getsource(function)
        assert "retrying(" in source and "while True" not in source, function.__qualname__
