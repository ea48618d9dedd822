"""Waiting for a model's request topic: the tools start from nothing too.

A worker creates the request topics of its models when it starts. A camera
streamer or a replay started together with a brand-new cluster (`compose up`,
a new Kubernetes namespace) finds no topic yet, and waits for one as it waits
for the broker. Workers come up one by one, each creating only its own
models' topics, so a topic missing while others exist is waited for too: the
log line names the models that are served (a typo shows there at once), and
the tool ends with `model_not_found` at `--start-timeout-s`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from consumer.access import check_access
from consumer.protocol import Topics
from consumer.settings import KafkaClientSettings
from consumer.startup import until_ready
from engines.errors import ModelNotFound, ModelUnavailable, ServiceUnavailable


async def wait_for_model_topic(
    list_topics: Callable[[], Awaitable[Iterable[str]]],
    topics: Topics,
    model: str,
    settings: KafkaClientSettings,
    deadline_s: float | None = None,
) -> None:
    """Return once `model`'s request topic exists and this principal may write to it;
    `list_topics` reads the cluster's topic names afresh. `deadline_s`: see
    `until_ready`.

    Write is checked on every attempt: a principal without Describe on the topic
    is refused at once (it would never see the topic appear), and Write itself
    can only be checked once the topic exists.

    Raises:
        NotAuthorized: Kafka refused the credentials, Describe or Write on the topic.
        ModelNotFound: no worker created the topic by the deadline.
        ServiceUnavailable: the broker could not be reached by the deadline.
    """
    wanted = topics.requests(model)

    async def present() -> None:
        await check_access(settings, {wanted: ["Write"]})
        names = set(await list_topics())
        if wanted in names:
            return
        served = sorted(topics.model_of(n) for n in names if topics.is_request_topic(n))
        if served:
            raise ModelUnavailable(
                f"topic {wanted} does not exist: the tfstream-consumers with topic prefix "
                f"'{topics.prefix}' serve {', '.join(served)}, not '{model}' (yet)"
            )
        raise ModelUnavailable(
            f"no tfstream-consumer has created a request topic under prefix '{topics.prefix}' yet"
        )

    try:
        await until_ready(f"a worker to create {wanted}", present, settings, deadline_s)
    except ServiceUnavailable as exc:
        if isinstance(exc.__cause__, ModelUnavailable):  # the broker answered: no topic
            raise ModelNotFound(
                f"no worker created {wanted} within {settings.start_timeout_s:g}s: "
                f"{exc.__cause__.message}"
            ) from None
        raise
