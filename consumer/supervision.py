"""Background tasks that cannot die silently.

A loop that ends with an unexpected exception leaves its process half-dead: a
worker whose lag loop died still answers, but the backlog metric it reports,
the one an autoscaler reads, froze. As aiokafka does for its own fetcher and
coordinator tasks, every background task runs under a `Supervisor`: an
unexpected exception is logged once with its stack, counted in
`tfstream_task_failures_total{task}`, and turns liveness false, so the
orchestrator restarts the process instead of it running on half-dead.

A task whose work others wait on (a pipeline runner: the requests of its model
queue for it) may instead be restarted in place (`Restarts`): each death is
logged once with its stack and counted the same way, a callback answers what
the dead run held, and the task starts again. Past its restart intensity (as
Erlang/OTP supervisors count it: so many deaths within a period) it is failed
as above. "Dies" means any exception but the task's own cancellation and the
interpreter's exit: a `CancelledError` nobody asked for (raised from inside a
library, or an engine's thread) ends the task just as silently otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

#: What a task dies of, besides `Exception`s: anything but interpreter exit.
_EXITS = (KeyboardInterrupt, SystemExit)


@dataclass(frozen=True)
class Restarts:
    """How often a task may die and be started again: `limit` times within
    `period_s`; one death more and it is failed (liveness false)."""

    limit: int = 3
    period_s: float = 60.0


def _cancelled_on_purpose() -> bool:
    """The running task was asked to stop (`Task.cancel`), rather than handed a
    `CancelledError` from inside something it awaited."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


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
        task = asyncio.get_running_loop().create_task(self._until_failed(name, run), name=name)
        self._tasks.append(task)
        return task

    async def _until_failed(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        await self.guard(name, run)

    async def guard(
        self,
        name: str,
        run: Callable[[], Coroutine[Any, Any, None]],
        restarts: Restarts | None = None,
        crashed: Callable[[BaseException], None] | None = None,
    ) -> bool:
        """Run `run()` in the calling task, supervised; for tasks their owner starts
        and ends itself (the pipeline drains its runners before they stop), where
        `start` would have `stop` cancel them. Each death calls `crashed(exc)`
        first, then `run()` starts again while `restarts` allows. Returns True when
        `run()` returned, False when it was failed.
        """
        deaths: deque[float] = deque()
        while True:
            try:
                await run()
                return True
            except asyncio.CancelledError as exc:
                if _cancelled_on_purpose():
                    raise
                died: BaseException = exc
            except _EXITS:
                raise
            except BaseException as exc:
                died = exc
            if crashed is not None:
                try:
                    crashed(died)
                except Exception:  # the task is failed below all the same
                    log.exception("answering what a dead task held failed", extra={"task": name})
                    restarts = None
            now = time.monotonic()
            deaths.append(now)
            while restarts is not None and deaths[0] < now - restarts.period_s:
                deaths.popleft()
            if restarts is None or len(deaths) > restarts.limit:
                self.fail(name, died)
                return False
            self.restarted(name, died, len(deaths))

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

    def restarted(self, name: str, exc: BaseException, deaths: int) -> None:
        """Record that task `name` died of `exc` and was started again."""
        log.error(
            "background task failed; restarted",
            exc_info=exc,
            extra={"task": name, "error": repr(exc), "deaths_in_period": deaths},
        )
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
