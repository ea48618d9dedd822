"""The worker's liveness and readiness, as `/health/live` and `/health/ready` say them.

Live: the fetch loop keeps turning and no supervised task died (an orchestrator
restarts a worker that is not). Ready: joined to its group (a shadow: its
partitions placed), at least one model ready, and no problem found that stops
it doing its job completely (an answer log it cannot write, a request it had to
commit unanswered): each is named with its reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from consumer.health import Problems
from consumer.protocol import ModelState
from consumer.registry import ModelRegistry
from consumer.supervision import Supervisor

#: A fetch loop that has not turned for this long makes /health/live fail.
LIVE_STALL_S = 60.0


class WorkerProbes:
    def __init__(
        self,
        registry: ModelRegistry,
        supervisor: Supervisor,
        problems: Problems,
        shadow: str = "",
    ) -> None:
        self.registry = registry
        self.supervisor = supervisor
        self.problems = problems
        self.shadow = shadow
        self.joined = False
        self.positioned = not shadow
        """A shadow is ready once its first partitions are placed (`start_positions`)."""
        self.last_tick: Callable[[], float] = time.monotonic
        """When the fetch loop last turned (set once it runs)."""

    def live(self) -> tuple[bool, dict[str, object]]:
        stalled_s = time.monotonic() - self.last_tick()
        looping = stalled_s < LIVE_STALL_S or not self.joined
        detail: dict[str, object] = {"loop_stalled_s": round(stalled_s, 1)}
        if self.supervisor.failed:
            detail["failed_tasks"] = dict(self.supervisor.failed)
        return looping and self.supervisor.healthy, detail

    def ready(self) -> tuple[bool, dict[str, object]]:
        entries = self.registry.entries()
        models = {e.name: e.state.value for e in entries}
        ready = (
            self.joined
            and self.positioned
            and not self.problems
            and any(state == ModelState.READY.value for state in models.values())
        )
        details: dict[str, object] = {
            "joined": self.joined,
            "models": models,
            "versions": {e.name: e.version for e in entries if e.detector is not None},
        }
        if self.problems:
            details["problems"] = self.problems.snapshot()
        if self.shadow:
            details["shadow"] = self.shadow
            details["positioned"] = self.positioned
        return ready, details
