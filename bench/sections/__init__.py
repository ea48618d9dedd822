"""The sections of the benchmark page, in page order.

A section is an async function that takes the run's `Context` and returns its
rows, each with a stable id; it starts and stops whatever processes it needs.
To add one, write a module here with such a function and list it in
`SECTIONS`; targets on its rows go to `TARGETS` (by row id).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.context import Context
from bench.results import Row, Target
from bench.sections import cameras, ceiling, conflation, feed, fixed, scaling, serving

Section = Callable[[Context], Awaitable[list[Row]]]

#: name (for --sections) -> section, in page order.
SECTIONS: dict[str, Section] = {
    "kafka": serving.kafka_path,
    "embedded": serving.embedded,
    "fixed": fixed.fixed_batch,
    "scaling": scaling.scaling,
    "ceiling": ceiling.ceiling,
    "feed": feed.feeding,
    "conflation": conflation.conflation,
    "cameras": cameras.cameras,
}

TARGETS: list[Target] = [
    *serving.TARGETS,
    *fixed.TARGETS,
    *scaling.TARGETS,
    *ceiling.TARGETS,
    *feed.TARGETS,
    *conflation.TARGETS,
    *cameras.TARGETS,
]
