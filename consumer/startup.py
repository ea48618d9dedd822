"""Start with the cluster: retry what a broker not there yet refuses, for a while.

`docker compose up` or a new Kubernetes cluster starts workers and brokers at
the same moment, and a brand-new broker spends its first seconds not
listening, then without a group coordinator (`__consumer_offsets` is created by
the first group that asks), without partition leaders, with topics being
created. Each is retriable: `until_ready` tries the start-up step again with
backoff until `start_timeout_s`, saying once per change what it waits for.
A refusal (credentials, ACLs, a certificate the CA does not vouch for) cannot
be waited out and is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaConnectionError, KafkaError

from consumer.access import explain
from consumer.settings import KafkaClientSettings
from engines.errors import ServiceUnavailable, TfstreamError

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 0.25
MAX_DELAY_S = 5.0


async def typed(exc: BaseException, settings: KafkaClientSettings) -> TfstreamError:
    """The typed error of a start-up failure (see `access.explain`)."""
    if isinstance(exc, TfstreamError):
        return exc
    return await explain(exc, settings)


def waitable(exc: BaseException, error: TfstreamError) -> bool:
    """Whether waiting may cure `exc`: the broker's own `retriable` flag where it
    gives one, else our typed error's (a refusal is not; a broker away is)."""
    broker_refusal = (
        isinstance(exc, KafkaError)
        and not isinstance(exc, KafkaConnectionError)
        and getattr(exc, "errno", None) is not None
        and not exc.retriable
    )
    return not broker_refusal and error.retriable


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    before_wait: Callable[[BaseException, float], Awaitable[None]],
    first_delay_s: float = FIRST_DELAY_S,
    max_delay_s: float = MAX_DELAY_S,
) -> T:
    """`attempt()` until it succeeds, with exponential backoff between tries: the one
    retry loop of the project (`until_ready`, the bridge's connection).

    A failure of a type in `retry_on` goes to `before_wait(exc, delay_s)`, which
    decides: it returns to wait `delay_s` and try again (doubled each time, up to
    `max_delay_s`), or raises to stop. Any other exception propagates at once.
    """
    delay_s = first_delay_s
    while True:
        try:
            return await attempt()
        except retry_on as exc:
            await before_wait(exc, delay_s)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, max_delay_s)


async def until_ready(
    step: str,
    attempt: Callable[[], Awaitable[T]],
    settings: KafkaClientSettings,
    deadline_s: float | None = None,
) -> T:
    """`attempt()` until it succeeds, the failure is not retriable, or the time is up.

    `deadline_s` (a `time.monotonic()` instant) lets several steps share one
    `start_timeout_s`; default: `start_timeout_s` from now.

    Raises:
        NotAuthorized, ServiceUnavailable...: the typed error of a refusal, or of the
            last failure once `start_timeout_s` passed (the message says how long
            it waited and for what).
    """
    began = time.monotonic()
    deadline = deadline_s if deadline_s is not None else began + settings.start_timeout_s
    waiting_for = ""

    async def before_wait(exc: BaseException, delay_s: float) -> None:
        nonlocal waiting_for
        error = await typed(exc, settings)
        if not waitable(exc, error):
            raise error from exc
        cause = exc.__cause__ if isinstance(exc, TfstreamError) and exc.__cause__ else exc
        reason = type(cause).__name__
        now = time.monotonic()
        if now + delay_s > deadline:
            raise ServiceUnavailable(
                f"Kafka at {settings.bootstrap} not ready after "
                f"{settings.start_timeout_s:g}s ({step}): {error.message}"
            ) from exc
        if reason != waiting_for:  # once per change, not once per attempt
            waiting_for = reason
            log.warning(
                "waiting for Kafka",
                extra={"step": step, "reason": error.message, "waited_s": round(now - began, 1)},
            )

    return await retrying(attempt, (KafkaError, OSError, TimeoutError, TfstreamError), before_wait)
