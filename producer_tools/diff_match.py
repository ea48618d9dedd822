"""How two answer streams differ, box by box: the comparison behind `tfstream-diff`.

Transport-free: it takes each side's answers per frame (from Kafka answer-log or
shadow topics, or from two models run in-process) and pairs them by frame.
Within a frame, boxes pair only with boxes of the same class name, greedily by
IoU (the best pair first) down to `min_iou`; each box pairs at most once. A frame
counts towards the box figures only when both sides answered it with boxes; an
error on either side is counted under that side's error codes instead, and the
frame ranks among the disagreeing ones when only one side failed.

Agreement is matched / union, where the union is matched + only in baseline +
only in candidate: 1.0 when every box of either side has its partner.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.answer_log import LoggedAnswer, RequestPosition

DEFAULT_MIN_IOU = 0.5
OVERALL = "(all classes)"


@dataclass(frozen=True)
class FrameAnswer:
    """One side's answer to one frame."""

    ident: str
    """What pairs it with the other side's answer (the correlation id)."""
    boxes: Sequence[dict[str, Any]] = ()
    error: str | None = None
    """The error code, for an answer that failed."""
    latency_ms: float | None = None
    width: int = 0
    height: int = 0
    name: str = ""
    """The image's name, when it had one (else the correlation id)."""
    request: RequestPosition | None = None
    """Where the request record was, to read the frame again (live answers)."""
    model_version: int | None = None

    @staticmethod
    def from_logged(answer: LoggedAnswer) -> FrameAnswer:
        data = answer.reply.data or {}
        return FrameAnswer(
            ident=answer.ident,
            boxes=list(data.get("bounding-boxes") or []),
            error=answer.reply.error.code if answer.reply.error else None,
            latency_ms=answer.latency_ms,
            width=int(data.get("width") or 0),
            height=int(data.get("height") or 0),
            name=str(data.get("ImageName") or answer.correlation_id or answer.ident),
            request=answer.request,
            model_version=answer.model_version,
        )


def ltrb(box: dict[str, Any]) -> tuple[float, float, float, float]:
    c = box["coordinates"]
    return float(c["left"]), float(c["top"]), float(c["right"]), float(c["bottom"])


def iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    al, at, ar, ab = ltrb(a)
    bl, bt, br, bb = ltrb(b)
    w = max(0.0, min(ar, br) - max(al, bl))
    h = max(0.0, min(ab, bb) - max(at, bt))
    inter = w * h
    union = (ar - al) * (ab - at) + (br - bl) * (bb - bt) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Pair:
    baseline: int
    """Index of the box in the baseline's list."""
    candidate: int
    iou: float


def match_boxes(
    baseline: Sequence[dict[str, Any]],
    candidate: Sequence[dict[str, Any]],
    min_iou: float = DEFAULT_MIN_IOU,
) -> list[Pair]:
    """Pairs of same-class boxes, best IoU first, each box at most once."""
    options = [
        Pair(i, j, score)
        for i, b in enumerate(baseline)
        for j, c in enumerate(candidate)
        if b["ObjectClassName"] == c["ObjectClassName"] and (score := iou(b, c)) >= min_iou
    ]
    options.sort(key=lambda p: (-p.iou, p.baseline, p.candidate))
    used_b: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for p in options:
        if p.baseline in used_b or p.candidate in used_c:
            continue
        used_b.add(p.baseline)
        used_c.add(p.candidate)
        pairs.append(p)
    return pairs


@dataclass
class ClassStats:
    baseline: int = 0
    candidate: int = 0
    matched: int = 0
    iou_sum: float = 0.0
    confidence_change_sum: float = 0.0
    """Sum over matches of candidate minus baseline confidence (percentage points)."""

    def shown(self) -> tuple[str, str]:
        """Mean IoU and mean confidence change as the table and the report page show
        them: '-' where nothing matched."""
        mean_iou = "-" if self.mean_iou is None else f"{self.mean_iou:.3f}"
        change = (
            "-" if self.mean_confidence_change is None else f"{self.mean_confidence_change:+.1f}"
        )
        return mean_iou, change

    @property
    def only_baseline(self) -> int:
        return self.baseline - self.matched

    @property
    def only_candidate(self) -> int:
        return self.candidate - self.matched

    @property
    def union(self) -> int:
        return self.matched + self.only_baseline + self.only_candidate

    @property
    def agreement(self) -> float:
        return self.matched / self.union if self.union else 1.0

    @property
    def mean_iou(self) -> float | None:
        return self.iou_sum / self.matched if self.matched else None

    @property
    def mean_confidence_change(self) -> float | None:
        return self.confidence_change_sum / self.matched if self.matched else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "matched": self.matched,
            "only_baseline": self.only_baseline,
            "only_candidate": self.only_candidate,
            "mean_iou": _round(self.mean_iou, 4),
            "mean_confidence_change": _round(self.mean_confidence_change, 3),
            "agreement": round(self.agreement, 4),
        }


@dataclass(frozen=True)
class FrameDiff:
    """Both sides' answers to one frame, and how they differ."""

    baseline: FrameAnswer
    candidate: FrameAnswer
    pairs: list[Pair]

    @property
    def compared(self) -> bool:
        return self.baseline.error is None and self.candidate.error is None

    @property
    def unmatched(self) -> int:
        if not self.compared:
            return 0
        return len(self.baseline.boxes) + len(self.candidate.boxes) - 2 * len(self.pairs)

    @property
    def disagreement(self) -> float:
        """How much to look at this frame: a failure on one side only ranks first,
        then unpaired boxes, then how loosely the pairs overlap."""
        if (self.baseline.error is None) != (self.candidate.error is None):
            return 1000.0
        if not self.compared:
            return 0.0 if self.baseline.error == self.candidate.error else 1000.0
        looseness = sum(1 - p.iou for p in self.pairs)
        return self.unmatched + looseness

    def matched_indices(self) -> tuple[set[int], set[int]]:
        return {p.baseline for p in self.pairs}, {p.candidate for p in self.pairs}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class DiffResult:
    baseline_name: str
    candidate_name: str
    min_iou: float
    frames: list[FrameDiff] = field(default_factory=list)
    only_baseline_frames: int = 0
    """Frames the baseline answered and the candidate has not (yet)."""
    only_candidate_frames: int = 0
    classes: dict[str, ClassStats] = field(default_factory=dict)
    overall: ClassStats = field(default_factory=ClassStats)
    errors: dict[str, Counter[str]] = field(
        default_factory=lambda: {"baseline": Counter(), "candidate": Counter()}
    )
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"baseline": [], "candidate": []}
    )
    versions: dict[str, list[int]] = field(
        default_factory=lambda: {"baseline": [], "candidate": []}
    )

    @property
    def compared(self) -> int:
        return sum(1 for f in self.frames if f.compared)

    @property
    def agreement(self) -> float:
        return self.overall.agreement

    def side_summary(self, side: str) -> tuple[str, str]:
        """A side's error codes and latency as the table and the report page show them."""
        codes = self.errors[side]
        errors = ", ".join(f"{code} {n}" for code, n in sorted(codes.items())) or "none"
        lat = self.latency(side)
        latency = "-" if lat["p50"] is None else f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
        return errors, latency

    def latency(self, side: str) -> dict[str, float | None]:
        values = self.latencies[side]
        return {
            "p50": _round(percentile(values, 50), 1),
            "p99": _round(percentile(values, 99), 1),
            "count": len(values),
        }

    def most_disagreeing(self, count: int) -> list[FrameDiff]:
        ranked = sorted(
            (f for f in self.frames if f.disagreement > 0),
            key=lambda f: (-f.disagreement, f.baseline.name),
        )
        return ranked[:count]

    def to_dict(self, frames: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {
            "baseline": self.baseline_name,
            "candidate": self.candidate_name,
            "min_iou": self.min_iou,
            "frames": {
                "paired": len(self.frames),
                "compared": self.compared,
                "only_baseline": self.only_baseline_frames,
                "only_candidate": self.only_candidate_frames,
            },
            "classes": {name: s.to_dict() for name, s in sorted(self.classes.items())},
            "overall": self.overall.to_dict(),
            "agreement": round(self.agreement, 4),
            "errors": {side: dict(sorted(c.items())) for side, c in self.errors.items()},
            "latency_ms": {side: self.latency(side) for side in ("baseline", "candidate")},
            "model_versions": self.versions,
        }
        if frames:
            out["most_disagreeing"] = [
                {
                    "frame": f.baseline.name,
                    "id": f.baseline.ident,
                    "disagreement": round(f.disagreement, 3),
                    "baseline_boxes": len(f.baseline.boxes),
                    "candidate_boxes": len(f.candidate.boxes),
                    "matched": len(f.pairs),
                    "baseline_error": f.baseline.error,
                    "candidate_error": f.candidate.error,
                }
                for f in self.most_disagreeing(frames)
            ]
        return out

    def to_json(self, frames: int = 0) -> str:
        return json.dumps(self.to_dict(frames), indent=2)


def compare(
    baseline: Iterable[FrameAnswer],
    candidate: Iterable[FrameAnswer],
    baseline_name: str = "baseline",
    candidate_name: str = "candidate",
    min_iou: float = DEFAULT_MIN_IOU,
) -> DiffResult:
    """Pair the two sides' answers by frame and add up how they differ. A frame
    answered twice on one side (a redelivery) counts once, with its last answer."""
    base = {a.ident: a for a in baseline}
    cand = {a.ident: a for a in candidate}
    result = DiffResult(baseline_name, candidate_name, min_iou)
    result.only_baseline_frames = len(base.keys() - cand.keys())
    result.only_candidate_frames = len(cand.keys() - base.keys())
    for ident in sorted(base.keys() & cand.keys()):
        b, c = base[ident], cand[ident]
        for side, answer in (("baseline", b), ("candidate", c)):
            if answer.error is not None:
                result.errors[side][answer.error] += 1
            if answer.latency_ms is not None:
                result.latencies[side].append(answer.latency_ms)
            seen = result.versions[side]
            if answer.model_version is not None and answer.model_version not in seen:
                seen.append(answer.model_version)
        pairs = (
            match_boxes(b.boxes, c.boxes, min_iou) if b.error is None and c.error is None else []
        )
        frame = FrameDiff(b, c, pairs)
        result.frames.append(frame)
        if frame.compared:
            _add(result, frame)
    return result


def _add(result: DiffResult, frame: FrameDiff) -> None:
    for side, boxes in (("baseline", frame.baseline.boxes), ("candidate", frame.candidate.boxes)):
        for box in boxes:
            for stats in (_class(result, box["ObjectClassName"]), result.overall):
                setattr(stats, side, getattr(stats, side) + 1)
    for pair in frame.pairs:
        b = frame.baseline.boxes[pair.baseline]
        c = frame.candidate.boxes[pair.candidate]
        change = float(c["confidence"]) - float(b["confidence"])
        for stats in (_class(result, b["ObjectClassName"]), result.overall):
            stats.matched += 1
            stats.iou_sum += pair.iou
            stats.confidence_change_sum += change


def _class(result: DiffResult, name: str) -> ClassStats:
    return result.classes.setdefault(name, ClassStats())


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def table(result: DiffResult) -> str:
    """The comparison as a terminal table."""
    lines = [
        f"baseline:  {result.baseline_name}",
        f"candidate: {result.candidate_name}",
        f"frames: {len(result.frames)} answered by both, {result.compared} compared "
        f"(no error on either side), {result.only_baseline_frames} only by baseline, "
        f"{result.only_candidate_frames} only by candidate; boxes matched per class "
        f"at IoU >= {result.min_iou:g}",
        "",
    ]
    header = (
        f"{'class':<22} {'baseline':>8} {'candidate':>9} {'matched':>7} {'only-base':>9} "
        f"{'only-cand':>9} {'mean IoU':>8} {'Δconf':>7} {'agree':>6}"
    )
    lines += [header, "-" * len(header)]
    rows = [*sorted(result.classes.items()), (OVERALL, result.overall)]
    for name, s in rows:
        mean_iou, change = s.shown()
        lines.append(
            f"{name[:22]:<22} {s.baseline:>8} {s.candidate:>9} {s.matched:>7} "
            f"{s.only_baseline:>9} {s.only_candidate:>9} {mean_iou:>8} {change:>7} "
            f"{s.agreement:>6.3f}"
        )
    lines.append("")
    for side in ("baseline", "candidate"):
        errors, latency = result.side_summary(side)
        if latency != "-":
            latency += f" ({result.latency(side)['count']} answers)"
        versions = ", ".join(str(v) for v in result.versions[side])
        lines.append(
            f"{side:<9}  errors: {errors}; latency {latency}"
            + (f"; model version {versions}" if versions else "")
        )
    lines.append(f"agreement: {result.agreement:.3f} (matched / union of boxes)")
    return "\n".join(lines)
