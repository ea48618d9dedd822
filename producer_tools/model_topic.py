"""Waiting for a model's request topic: the tools start from nothing too.

A worker creates the request topics of its models when it starts. A camera
streamer or a replay started together with a brand-new cluster (`compose up`,
a new Kubernetes namespace) finds no topic yet, and waits for one as it waits
for the broker. Once workers have created request topics under the prefix, a
model that is not among them is a mistake (a typo, a model no worker serves)
and fails at once instead of after the start timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from consumer.protocol import Topics
from consumer.settings import KafkaClientSettings
from consumer.startup import until_ready
from engines.errors import ModelNotFound, ModelUnavailable


async def wait_for_model_topic(
    list_topics: Callable[[], Awaitable[Iterable[str]]],
    topics: Topics,
    model: str,
    settings: KafkaClientSettings,
    deadline_s: float | None = None,
) -> None:
    """Return once `model`'s request topic exists; `list_topics` reads the cluster's
    topic names afresh. `deadline_s`: see `until_ready`.

    Raises:
        ModelNotFound: workers created request topics under the prefix, not this one.
        ServiceUnavailable: no worker created any request topic by the deadline.
    """
    wanted = topics.requests(model)
    under_prefix = f"{topics.prefix}.requests."

    async def present() -> None:
        names = set(await list_topics())
        if wanted in names:
            return
        served = sorted(topics.model_of(n) for n in names if n.startswith(under_prefix))
        if served:
            raise ModelNotFound(
                f"topic {wanted} does not exist: the tfstream-consumers with topic prefix "
                f"'{topics.prefix}' serve {', '.join(served)}, not '{model}'"
            )
        raise ModelUnavailable(
            f"no tfstream-consumer has created a request topic under prefix '{topics.prefix}' yet"
        )

    await until_ready(f"a worker to create {wanted}", present, settings, deadline_s)
