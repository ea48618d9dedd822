"""Background tasks that cannot die silently.

A loop that ends with an unexpected exception leaves its process half-dead: a
worker whose lag loop died still answers, but the backlog metric it reports,
the one an autoscaler reads, froze. As aiokafka does for its own fetcher and
coordinator tasks, every background task runs under a `Supervisor`: an
unexpected exception is logged once with its stack, counted in
`tfstream_task_failures_total{task}`, and turns liveness false, so the
orchestrator restarts the process instead of it running on half-dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.failures = Counter(
            "tfstream_task_failures",
            "Background tasks ended by an unexpected exception",
            ["task"],
            registry=registry,
        )
        self.failed: dict[str, str] = {}
        """Task name -> the exception that ended it."""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def healthy(self) -> bool:
        return not self.failed

    def start(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """Run `run()` as a supervised task of the running loop."""
        task = asyncio.get_running_loop().create_task(self._guard(name, run), name=name)
        self._tasks.append(task)
        return task

    async def _guard(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(name, exc)

    def watch(self, name: str, task: asyncio.Task[None] | None) -> None:
        """Supervise a task started elsewhere (a client library's reader)."""
        if task is None:
            return

        def ended(done: asyncio.Task[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                self.fail(name, done.exception())  # type: ignore[arg-type]

        task.add_done_callback(ended)

    def fail(self, name: str, exc: BaseException) -> None:
        """Record that task `name` died of `exc` (also for tasks started elsewhere)."""
        log.error(
            "background task failed; liveness is now false",
            exc_info=exc,
            extra={"task": name, "error": repr(exc)},
        )
        self.failed[name] = repr(exc)
        self.failures.labels(name).inc()

    async def cancel(self, *names: str) -> None:
        """Cancel the tasks named and wait for them to end (a shutdown's first step)."""
        chosen = [task for task in self._tasks if task.get_name() in names]
        for task in chosen:
            task.cancel()
        for task in chosen:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = [task for task in self._tasks if task not in chosen]

    async def stop(self) -> None:
        """Cancel every task and wait for them to end."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
