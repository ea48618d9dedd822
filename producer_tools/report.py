"""What a replay run measured: counts, throughput, latency percentiles, batch sizes.

One `Outcome` per request, whatever happened to it (an answer, an error answer,
a timeout, a failed send), so the counts always add up:
`answered + sum(errors) + timeouts == sent`. Latency percentiles are over the
successful answers only: an error answer (`deadline_exceeded` comes back at
once) says nothing about how fast detections are served.

The plot is drawn with Pillow, which tfstream already needs, rather than
matplotlib: two simple panels are not worth a plotting stack.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK = "ok"
TIMEOUT = "timeout"


@dataclass(frozen=True)
class Outcome:
    sent_s: float
    """When the request was handed to the client, seconds from the start of the run."""
    latency_ms: float
    """From handing it over to its answer (or to giving up on it)."""
    code: str
    """'ok', 'timeout', or the error code of the answer (or of the failed send)."""
    batch_size: int = 0
    """The answer's `timing.batch_size` (0 when there is none)."""
    worker: str = ""
    name: str = ""
    """The image (file or frame) name."""
    boxes: int = -1
    """Number of boxes in a successful answer (-1 otherwise)."""
    queue_ms: float = 0.0
    """The answer's `timing`: arrival at the worker to the start of its engine call..."""
    decode_ms: float = 0.0
    inference_ms: float = 0.0
    """...and that engine call. Latency minus queue and inference is time outside the worker."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    def clean(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 3)

    return {
        "p50": clean(percentile(latencies_ms, 50)),
        "p90": clean(percentile(latencies_ms, 90)),
        "p99": clean(percentile(latencies_ms, 99)),
        "max": clean(max(latencies_ms) if latencies_ms else math.nan),
        "mean": clean(sum(latencies_ms) / len(latencies_ms) if latencies_ms else math.nan),
    }


@dataclass
class RunReport:
    outcomes: list[Outcome]
    duration_s: float
    """From the first send to the last answer (or timeout)."""
    duplicates: int = 0
    """Answers dropped by the client: a second answer for one id, or one after its timeout."""
    settings: dict[str, Any] = field(default_factory=dict)
    schedule_lag_ms: list[float] = field(default_factory=list)
    """--rate only: how late each send was against its schedule (the concurrency limit or
    a busy client delays sends; a large lag means the rate was not really offered)."""

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def answered(self) -> int:
        return sum(1 for o in self.outcomes if o.code == OK)

    @property
    def timeouts(self) -> int:
        return sum(1 for o in self.outcomes if o.code == TIMEOUT)

    @property
    def errors(self) -> dict[str, int]:
        return dict(
            sorted(Counter(o.code for o in self.outcomes if o.code not in (OK, TIMEOUT)).items())
        )

    @property
    def latencies_ms(self) -> list[float]:
        return [o.latency_ms for o in self.outcomes if o.code == OK]

    @property
    def throughput(self) -> float:
        """Successful answers per second over the whole run."""
        return self.answered / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def batch_histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(o.batch_size for o in self.outcomes if o.code == OK).items()))

    def to_dict(self) -> dict[str, Any]:
        lag = self.schedule_lag_ms
        return {
            "settings": self.settings,
            "sent": self.sent,
            "answered": self.answered,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "duplicates": self.duplicates,
            "duration_s": round(self.duration_s, 3),
            "throughput": round(self.throughput, 3),
            "latency_ms": latency_summary(self.latencies_ms),
            "batch_sizes": {str(k): v for k, v in self.batch_histogram.items()},
            "workers": dict(sorted(Counter(o.worker for o in self.outcomes if o.worker).items())),
            "schedule_lag_ms": latency_summary(lag) if lag else None,
            "worker_timing_ms": self.worker_timing(),
            "requests": {
                "columns": ["sent_s", "latency_ms", "code", "batch_size", "name", "boxes"],
                "rows": [
                    [
                        round(o.sent_s, 4),
                        round(o.latency_ms, 3),
                        o.code,
                        o.batch_size,
                        o.name,
                        o.boxes,
                    ]
                    for o in self.outcomes
                ],
            },
        }

    def worker_timing(self) -> dict[str, float | None]:
        """p50 of the answers' own timing, and of the time spent outside the worker
        (latency - queue - inference: client, broker, fetch waits, reply delivery)."""
        ok = [o for o in self.outcomes if o.code == OK]

        def p50(values: list[float]) -> float | None:
            return round(percentile(values, 50), 3) if values else None

        return {
            "queue_p50": p50([o.queue_ms for o in ok]),
            "decode_p50": p50([o.decode_ms for o in ok]),
            "inference_p50": p50([o.inference_ms for o in ok]),
            "outside_worker_p50": p50([o.latency_ms - o.queue_ms - o.inference_ms for o in ok]),
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    def summary(self) -> str:
        """The human summary printed at the end of a run."""
        lat = latency_summary(self.latencies_ms)

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        lines = [
            f"sent {self.sent}, answered {self.answered}, errors {sum(self.errors.values())}, "
            f"timeouts {self.timeouts}, duplicates dropped {self.duplicates}",
            f"duration {self.duration_s:.2f} s, throughput {self.throughput:.2f} images/s",
            f"latency ms: p50 {ms(lat['p50'])}  p90 {ms(lat['p90'])}  p99 {ms(lat['p99'])}  "
            f"max {ms(lat['max'])}",
        ]
        timing = self.worker_timing()
        if timing["inference_p50"] is not None:
            lines.append(
                f"worker timing ms p50: queue {ms(timing['queue_p50'])}  decode "
                f"{ms(timing['decode_p50'])}  inference {ms(timing['inference_p50'])}  "
                f"outside the worker {ms(timing['outside_worker_p50'])}"
            )
        if self.errors:
            lines.append("errors: " + ", ".join(f"{code} {n}" for code, n in self.errors.items()))
        histogram = self.batch_histogram
        if histogram:
            total = sum(histogram.values())
            lines.append(
                "batch sizes: "
                + ", ".join(
                    f"{size}: {n} ({100 * n / total:.0f}%)" for size, n in histogram.items()
                )
            )
        if self.schedule_lag_ms:
            lag = latency_summary(self.schedule_lag_ms)
            lines.append(
                f"send lag behind schedule ms: p50 {ms(lag['p50'])}  p99 {ms(lag['p99'])}  "
                f"max {ms(lag['max'])}"
            )
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        """A PNG: latency over time (left; errors as red ticks) and its histogram (right)."""
        plot_latencies(self.outcomes, path, title=str(self.settings.get("title") or ""))


# -- a tiny chart renderer on Pillow --------------------------------------------------

_W, _H = 1200, 480
_MARGIN = (70, 40, 20, 50)  # left, top, right, bottom of each panel


def _nice_ticks(high: float, count: int = 5) -> list[float]:
    if high <= 0:
        return [0.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(high / step) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if value < 1000 else f"{value:.0f}"


def plot_latencies(outcomes: Sequence[Outcome], path: Path, title: str = "") -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (_W, _H), "white")
    draw = ImageDraw.Draw(image)
    ok = [o for o in outcomes if o.code == OK]
    failed = [o for o in outcomes if o.code != OK]
    top_ms = max([o.latency_ms for o in ok] or [1.0]) * 1.05
    end_s = max([o.sent_s for o in outcomes] or [1.0]) * 1.02 or 1.0
    half = _W // 2
    draw.text((10, 8), title or "latency", fill="black")

    # left: latency over time
    box = (_MARGIN[0], _MARGIN[1], half - _MARGIN[2], _H - _MARGIN[3])
    _axes(draw, box, end_s, top_ms, "time (s)", "latency (ms)")

    def at(t: float, ms: float) -> tuple[float, float]:
        return (
            box[0] + (box[2] - box[0]) * t / end_s,
            box[3] - (box[3] - box[1]) * min(ms, top_ms) / top_ms,
        )

    for o in ok:
        x, y = at(o.sent_s, o.latency_ms)
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(31, 119, 180))
    for o in failed:  # errors and timeouts: a red tick on the time axis
        x, _ = at(o.sent_s, 0)
        draw.line((x, box[3] - 8, x, box[3]), fill=(214, 39, 40), width=1)

    # right: histogram of the successful latencies
    box = (half + _MARGIN[0], _MARGIN[1], _W - _MARGIN[2], _H - _MARGIN[3])
    bins = 40
    counts = [0] * bins
    for o in ok:
        counts[min(bins - 1, int(bins * o.latency_ms / top_ms))] += 1
    top_count = max(counts or [1]) * 1.05 or 1
    _axes(draw, box, top_ms, top_count, "latency (ms)", "requests")
    width = (box[2] - box[0]) / bins
    for i, n in enumerate(counts):
        if n:
            x0 = box[0] + i * width
            draw.rectangle(
                (x0 + 1, box[3] - (box[3] - box[1]) * n / top_count, x0 + width - 1, box[3]),
                fill=(31, 119, 180),
            )
    lat = latency_summary([o.latency_ms for o in ok])
    for name, colour in (("p50", (44, 160, 44)), ("p99", (214, 39, 40))):
        value = lat[name]
        if value is not None:
            x = box[0] + (box[2] - box[0]) * value / top_ms
            draw.line((x, box[1], x, box[3]), fill=colour, width=2)
            text = f"{name} {value:.1f} ms"
            tx = x + 3 if x + 3 + 6 * len(text) < box[2] else x - 3 - 6 * len(text)
            draw.text((tx, box[1] + (2 if name == "p50" else 16)), text, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def _axes(
    draw: Any,
    box: tuple[float, float, float, float],
    x_max: float,
    y_max: float,
    x_name: str,
    y_name: str,
) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline="black")
    for tick in _nice_ticks(x_max):
        x = left + (right - left) * tick / x_max
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x - 8, bottom + 6), _label(tick), fill="black")
    for tick in _nice_ticks(y_max):
        y = bottom - (bottom - top) * tick / y_max
        draw.line((left - 4, y, left, y), fill="black")
        draw.line((left, y, right, y), fill=(230, 230, 230))
        draw.text((left - 8 - 6 * len(_label(tick)), y - 6), _label(tick), fill="black")
    draw.text(((left + right) / 2 - 30, bottom + 24), x_name, fill="black")
    draw.text((left - 65, top - 18), y_name, fill="black")
