"""What a benchmark run produces: measurements, rows keyed by id, targets on row ids.

A row's `id` is its stable name: targets find rows by id, so renaming a row's
display text changes the page and nothing else, and a target whose row is
missing says "not measured" instead of silently counting as missed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from bench.cpu import CpuUse


@dataclass
class Measurement:
    images_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int = 0
    note: str = ""
    cpu: CpuUse | None = None
    timing: dict[str, float | None] = field(default_factory=dict)
    """The answers' own timing p50s (replay rows): queue, decode, inference, outside the worker."""
    overhead_ms: float | None = None
    """Lone-request rows measured in pairs with the raw engine (`bench.lone`): the median
    of the per-pair differences, which the row reports instead of p50 minus a raw p50."""


@dataclass
class Row:
    id: str
    """Stable identifier, e.g. 'kafka-16'; targets refer to rows by it."""
    section: str
    name: str
    """Display text on the page."""
    m: Measurement
    kind: Literal["raw", "row", "scaling"] = "row"
    """'raw' (a reference measurement), 'row' (compared with the raw engine), 'scaling'."""
    vs_raw: float | None = None
    """Throughput over the section's raw batch-8 throughput (scaling rows: efficiency)."""
    overhead_ms: float | None = None
    """Single-request rows: p50 minus the section's raw batch-1 p50."""
    extra: dict[str, float] = field(default_factory=dict)
    """The section's own quantities, by column heading (e.g. 'age at answer p50 ms'): the
    page gives each section that has them a table of its own; targets can name them."""

    def value(self, name: str) -> float | None:
        """A quantity a target names: 'vs_raw', 'overhead_ms', 'cpu.<role>' (CPU ms per
        answered image of that role) or a key of `extra`; None when the row lacks it."""
        if name in ("vs_raw", "overhead_ms"):
            return getattr(self, name)
        if name.startswith("cpu."):
            cpu = self.m.cpu.per_image_ms if self.m.cpu is not None else {}
            return cpu.get(name.removeprefix("cpu."))
        return self.extra.get(name)

    def notes(self) -> str:
        parts = [self.m.note]
        t = self.m.timing
        if t.get("inference_p50") is not None:
            parts.append(
                f"worker p50: queue {t['queue_p50']:.1f}, inference {t['inference_p50']:.1f}, "
                f"outside the worker {t['outside_worker_p50']:.1f} ms"
            )
        if self.m.cpu is not None:
            parts.append(self.m.cpu.text())
        return "; ".join(p for p in parts if p)

    def show(self) -> Row:
        """Print the row as it is measured (a run takes many minutes)."""
        extra = []
        if self.vs_raw is not None:
            extra.append(f"x{self.vs_raw:.2f}")
        if self.overhead_ms is not None:
            extra.append(f"overhead {self.overhead_ms:+.1f} ms")
        extra += [f"{key} {value:.1f}" for key, value in self.extra.items()]
        m = self.m
        print(
            f"  {self.name:46s} {m.images_per_s:7.2f} images/s  p50 {m.p50_ms:7.1f} ms  "
            f"p99 {m.p99_ms:7.1f} ms  {', '.join(extra)}\n  {'':46s} {self.notes()}",
            flush=True,
        )
        return self


@dataclass(frozen=True)
class Target:
    name: str
    row_id: str
    value: str
    """What is compared: a name `Row.value` knows."""
    threshold: float
    at_least: bool
    unit: str = ""


@dataclass(frozen=True)
class Outcome:
    target: Target
    measured: float | None
    """None: the run has no row with the target's id (its section was not run)."""

    @property
    def met(self) -> bool:
        t, value = self.target, self.measured
        if value is None or math.isnan(value):
            return False
        return value >= t.threshold if t.at_least else value <= t.threshold

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "not measured"
        return "met" if self.met else "**missed**"


def evaluate(rows: list[Row], targets: list[Target]) -> list[Outcome]:
    by_id = {row.id: row for row in rows}
    outcomes = []
    for target in targets:
        row = by_id.get(target.row_id)
        found = row.value(target.value) if row is not None else None
        measured = None if row is None else (math.nan if found is None else float(found))
        outcomes.append(Outcome(target, measured))
    return outcomes


@dataclass
class Bench:
    """The settings and bookkeeping every section shares."""

    seconds: float
    raw_seconds: float
    noise: float
    retry_until: float = math.inf
    """Monotonic time after which noisy rows are no longer measured again (keeps the run short)."""
    references: dict[str, str] = field(default_factory=dict)
    """What each section compared with."""
    pids: dict[str, list[int]] = field(default_factory=dict)
    """The processes whose CPU use each row reports, by role."""

    async def quietest(
        self, run: Callable[[], Awaitable[Measurement]], attempts: int = 2
    ) -> Measurement:
        """Measure; again (up to `attempts` in all, while the retry budget lasts) while other
        tenants took more than `noise` of the CPU; keep the quietest measurement."""
        kept = await run()
        for _ in range(attempts - 1):
            if kept.cpu is None or kept.cpu.others <= self.noise:
                break
            if time.monotonic() > self.retry_until:
                print("  (noisy, but the time for measuring again is spent)", flush=True)
                break
            print(
                f"  (noisy: {100 * kept.cpu.others:.0f}% of the CPU not ours; measuring again)",
                flush=True,
            )
            again = await run()
            assert again.cpu is not None
            kept = again if again.cpu.others < kept.cpu.others else kept
        return kept

    def reference(
        self, before: Measurement, after: Measurement, value: Callable[[Measurement], float]
    ) -> float:
        """The mean of the two raw measurements, or the quieter one when only one was quiet."""

        def others(m: Measurement) -> float:
            return m.cpu.others if m.cpu is not None else 0.0

        quiet = [m for m in (before, after) if others(m) <= self.noise]
        if len(quiet) == 2:
            return (value(before) + value(after)) / 2
        return value(quiet[0] if quiet else min((before, after), key=others))
