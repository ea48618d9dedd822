"""Where the CPU went during a benchmark row, from /proc (Linux only).

On a two-core machine the broker, the load generator, the worker's Kafka I/O
and the engine all share the cores the raw engine had to itself, so a row's
ratio to the raw engine is mostly a CPU budget: this says, per answered image,
how many CPU milliseconds each of our processes spent, and how busy the whole
machine was (what is not ours is other tenants: noise).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int, tid: int | None = None) -> list[str]:
    """The fields of /proc/<pid>/stat (of one thread: task/<tid>/stat) after the command
    name, which may hold spaces and parentheses; [] if it is gone."""
    path = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return path.read_text().rsplit(")", 1)[1].split()
    return []


def process_cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (all its threads) so far, or of its thread
    `tid` (the main thread: tid == pid); 0 if it is gone."""
    with contextlib.suppress(IndexError, ValueError):
        fields = _stat(pid, tid)
        return (int(fields[11]) + int(fields[12])) / _TICK
    return 0.0


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (fresh memory touched); 0 if it is gone."""
    with contextlib.suppress(IndexError, ValueError):
        return int(_stat(pid)[7])
    return 0


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
        busy = user + nice + system + irq + softirq + steal
        return busy / _TICK, (busy + idle + iowait) / _TICK
    return 0.0, 0.0


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    processes: dict[str, float]
    busy_s: float
    total_s: float


def snapshot(pids: dict[str, list[int]]) -> CpuSnapshot:
    busy, total = machine_cpu_s()
    return CpuSnapshot(
        time.monotonic(),
        {role: sum(process_cpu_s(p) for p in group) for role, group in pids.items()},
        busy,
        total,
    )


@dataclass(frozen=True)
class CpuUse:
    per_image_ms: dict[str, float]
    """CPU ms per answered image, by process role."""
    machine_busy: float
    """Share of all cores busy during the row (0..1)."""
    others: float
    """Share of all cores used by processes that are not ours (other tenants)."""

    def text(self) -> str:
        roles = ", ".join(f"{role} {ms:.1f}" for role, ms in self.per_image_ms.items())
        return (
            f"CPU ms/image: {roles}; machine {100 * self.machine_busy:.0f}% busy, "
            f"{100 * self.others:.0f}% not ours"
        )


def usage(before: CpuSnapshot, after: CpuSnapshot, images: int) -> CpuUse:
    per_image = {
        role: 1000 * (after.processes[role] - before.processes[role]) / max(1, images)
        for role in after.processes
    }
    total = max(1e-9, after.total_s - before.total_s)
    busy = (after.busy_s - before.busy_s) / total
    ours = sum(after.processes[r] - before.processes[r] for r in after.processes) / total
    return CpuUse(per_image, busy, max(0.0, busy - ours))
