"""How two answer streams differ, box by box: the comparison behind `tfstream-diff`.

Transport-free: it takes each side's answers per frame (from Kafka answer-log or
shadow topics, or from two models run in-process) and pairs them by frame: live
answers by the request's position (topic, partition, offset), which both logs
record, so that two clients reusing a correlation id never pair wrong frames.

Within a frame, boxes pair only with boxes of the same class name, by an optimal
assignment (SciPy's `linear_sum_assignment`): the most pairs at IoU >= `min_iou`,
then the highest IoU sum; greedy best-first pairing loses pairs when one box is
the best partner of two.

A gate has to see what a candidate fails to answer, not only how its answers
differ: a frame where one side errs (or has no answer) and the other answers
counts the answering side's boxes as unmatched, and the share of the frames the
baseline answered that the candidate answered too (`answered_share`) is a
figure of its own, gated with the agreement. Errors and coverage are counted
per side. A frame neither side answered alike (both failed with the same code)
is no disagreement.

A live frame one side has no answer to because it has not reached that
request's offset on the partition yet, or because it started after it (a
shadow starts at the live end), is pending: shown, not counted; otherwise a
shadow lagging by a batch, or one started an hour after the answer log,
would fail the gate. A frame inside the span of offsets it answered on the
partition, or on a partition it answered nothing of, counts as missing. A
comparison with no frame answered by both sides fails the gate.

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

import numpy as np
from scipy.optimize import linear_sum_assignment

from consumer.answer_log import LoggedAnswer, RequestPosition

DEFAULT_MIN_IOU = 0.5
OVERALL = "(all classes)"
SIDES = ("baseline", "candidate")


@dataclass(frozen=True)
class FrameAnswer:
    """One side's answer to one frame."""

    ident: str
    """What pairs it with the other side's answer: the request's position (live), the
    image's name (offline)."""
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
    correlation_id: str | None = None
    missing: bool = False
    """No answer at all on this side (the other side's frame, for the figures)."""

    @property
    def answered(self) -> bool:
        return not self.missing and self.error is None

    @property
    def requested_ms(self) -> int | None:
        return self.request.timestamp_ms if self.request is not None else None

    @staticmethod
    def from_logged(answer: LoggedAnswer) -> FrameAnswer:
        data = answer.reply.data or {}
        return FrameAnswer(
            ident=answer.request.ident,
            boxes=list(data.get("bounding-boxes") or []),
            error=answer.reply.error.code if answer.reply.error else None,
            latency_ms=answer.latency_ms,
            width=int(data.get("width") or 0),
            height=int(data.get("height") or 0),
            name=str(data.get("ImageName") or answer.correlation_id or answer.ident),
            request=answer.request,
            model_version=answer.model_version,
            correlation_id=answer.correlation_id,
        )

    def absent(self) -> FrameAnswer:
        """The other side's stand-in for this frame: no answer."""
        return FrameAnswer(
            self.ident,
            width=self.width,
            height=self.height,
            name=self.name,
            request=self.request,
            missing=True,
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
    """Pairs of same-class boxes at IoU >= `min_iou`, each box at most once: per
    class, the most pairs, and of those the highest IoU sum."""
    pairs: list[Pair] = []
    for name in {b["ObjectClassName"] for b in baseline}:
        rows = [i for i, b in enumerate(baseline) if b["ObjectClassName"] == name]
        cols = [j for j, c in enumerate(candidate) if c["ObjectClassName"] == name]
        if not cols:
            continue
        overlap = np.array([[iou(baseline[i], candidate[j]) for j in cols] for i in rows])
        eligible = overlap >= min_iou
        # Each pair is worth more than any IoU sum of fewer pairs: n + IoU, n > pairs.
        worth = np.where(eligible, len(rows) + len(cols) + overlap, 0.0)
        for r, c in zip(*linear_sum_assignment(worth, maximize=True), strict=True):
            if eligible[r, c]:
                pairs.append(Pair(rows[r], cols[c], float(overlap[r, c])))
    return sorted(pairs, key=lambda p: (p.baseline, p.candidate))


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
    pending: bool = False
    """Live: one side has not reached this request yet, or started after it; not in
    the figures."""

    @property
    def compared(self) -> bool:
        return self.baseline.answered and self.candidate.answered

    @property
    def paired(self) -> bool:
        """Answered on both sides (errors included)."""
        return not self.baseline.missing and not self.candidate.missing

    @property
    def one_sided(self) -> bool:
        """One side answered, the other erred or has no answer."""
        return self.baseline.answered != self.candidate.answered

    @property
    def only_baseline(self) -> int:
        """The baseline's boxes without a partner (all of them where the candidate
        erred or has no answer; none where the baseline itself did not answer)."""
        return len(self.baseline.boxes) - len(self.pairs) if self.baseline.answered else 0

    @property
    def only_candidate(self) -> int:
        return len(self.candidate.boxes) - len(self.pairs) if self.candidate.answered else 0

    @property
    def unmatched(self) -> int:
        return self.only_baseline + self.only_candidate

    @property
    def disagreement(self) -> float:
        """How much to look at this frame: an answer on one side only ranks first,
        then unpaired boxes, then how loosely the pairs overlap."""
        if self.one_sided:
            return 1000.0
        if not self.compared:
            b, c = self.baseline, self.candidate
            return 0.0 if (b.error, b.missing) == (c.error, c.missing) else 1000.0
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
class Coverage:
    """What one side did with the frames in the figures."""

    frames: int = 0
    answered: int = 0
    errors: int = 0
    missing: int = 0
    duplicate_ids: int = 0
    """Correlation ids this side saw on more than one request (clients reusing ids)."""
    redelivered: int = 0
    """Requests answered more than once (the last answer counts)."""

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _per_side() -> dict[str, Any]:
    return {side: Counter() for side in SIDES}


@dataclass
class DiffResult:
    baseline_name: str
    candidate_name: str
    min_iou: float
    frames: list[FrameDiff] = field(default_factory=list)
    """Every frame in the figures, and the pending ones (`FrameDiff.pending`)."""
    classes: dict[str, ClassStats] = field(default_factory=dict)
    overall: ClassStats = field(default_factory=ClassStats)
    errors: dict[str, Counter[str]] = field(default_factory=_per_side)
    coverage: dict[str, Coverage] = field(
        default_factory=lambda: {side: Coverage() for side in SIDES}
    )
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"baseline": [], "candidate": []}
    )
    versions: dict[str, list[int]] = field(
        default_factory=lambda: {"baseline": [], "candidate": []}
    )

    @property
    def counted(self) -> list[FrameDiff]:
        return [f for f in self.frames if not f.pending]

    @property
    def paired(self) -> int:
        return sum(1 for f in self.counted if f.paired)

    @property
    def compared(self) -> int:
        return sum(1 for f in self.counted if f.compared)

    @property
    def pending(self) -> int:
        return sum(1 for f in self.frames if f.pending)

    @property
    def only_baseline_frames(self) -> int:
        """Frames the baseline answered and the candidate has no answer to."""
        return sum(1 for f in self.counted if f.candidate.missing)

    @property
    def only_candidate_frames(self) -> int:
        return sum(1 for f in self.counted if f.baseline.missing)

    @property
    def agreement(self) -> float:
        return self.overall.agreement

    @property
    def answered_share(self) -> float:
        """Of the frames the baseline answered, the share the candidate answered too
        (1.0 when the baseline answered none)."""
        base = [f for f in self.counted if f.baseline.answered]
        return sum(1 for f in base if f.candidate.answered) / len(base) if base else 1.0

    def gate(self, min_agreement: float) -> list[str]:
        """Why the candidate fails `--min-agreement`, empty when it passes."""
        out = []
        if self.paired == 0:
            out.append("no frame was answered by both sides: nothing to compare")
        if self.agreement < min_agreement:
            out.append(f"agreement {self.agreement:.3f} is below --min-agreement {min_agreement:g}")
        if self.answered_share < min_agreement:
            out.append(
                f"the candidate answered {self.answered_share:.3f} of the frames the baseline "
                f"answered, below --min-agreement {min_agreement:g}"
            )
        return out

    def side_summary(self, side: str) -> tuple[str, str]:
        """A side's error codes and latency as the table and the report page show them."""
        codes = self.errors[side]
        errors = ", ".join(f"{code} {n}" for code, n in sorted(codes.items())) or "none"
        lat = self.latency(side)
        latency = "-" if lat["p50"] is None else f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
        return errors, latency

    def coverage_line(self, side: str) -> str:
        c = self.coverage[side]
        return (
            f"answered {c.answered} of {c.frames} frames, {c.errors} errors, "
            f"{c.missing} without an answer"
            + (f", {c.duplicate_ids} duplicate correlation ids" if c.duplicate_ids else "")
            + (f", {c.redelivered} answered twice" if c.redelivered else "")
        )

    def latency(self, side: str) -> dict[str, float | None]:
        values = self.latencies[side]
        return {
            "p50": _round(percentile(values, 50), 1),
            "p99": _round(percentile(values, 99), 1),
            "count": len(values),
        }

    def most_disagreeing(self, count: int) -> list[FrameDiff]:
        ranked = sorted(
            (f for f in self.counted if f.disagreement > 0),
            key=lambda f: (-f.disagreement, f.baseline.name),
        )
        return ranked[:count]

    def to_dict(self, frames: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {
            "baseline": self.baseline_name,
            "candidate": self.candidate_name,
            "min_iou": self.min_iou,
            "frames": {
                "paired": self.paired,
                "compared": self.compared,
                "only_baseline": self.only_baseline_frames,
                "only_candidate": self.only_candidate_frames,
            },
            "pending": self.pending,
            "coverage": {side: c.to_dict() for side, c in self.coverage.items()},
            "classes": {name: s.to_dict() for name, s in sorted(self.classes.items())},
            "overall": self.overall.to_dict(),
            "agreement": round(self.agreement, 4),
            "answered_share": round(self.answered_share, 4),
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
                    "baseline_missing": f.baseline.missing,
                    "candidate_missing": f.candidate.missing,
                }
                for f in self.most_disagreeing(frames)
            ]
        return out

    def to_json(self, frames: int = 0) -> str:
        return json.dumps(self.to_dict(frames), indent=2)


def _by_ident(answers: Iterable[FrameAnswer], coverage: Coverage) -> dict[str, FrameAnswer]:
    """The last answer per frame, counting redeliveries and reused correlation ids."""
    out: dict[str, FrameAnswer] = {}
    requests: dict[str, set[str]] = {}
    for answer in answers:
        if answer.ident in out:
            coverage.redelivered += 1
        out[answer.ident] = answer
        if answer.correlation_id is not None:
            requests.setdefault(answer.correlation_id, set()).add(answer.ident)
    coverage.duplicate_ids = sum(1 for idents in requests.values() if len(idents) > 1)
    return out


def _reached(answers: dict[str, FrameAnswer]) -> dict[tuple[str, int], tuple[int, int]]:
    """Live: the lowest and highest request offset answered, per partition."""
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for answer in answers.values():
        if (r := answer.request) is not None:
            low, high = out.get((r.topic, r.partition), (r.offset, r.offset))
            out[(r.topic, r.partition)] = (min(low, r.offset), max(high, r.offset))
    return out


def _not_reached(answer: FrameAnswer, reached: dict[tuple[str, int], tuple[int, int]]) -> bool:
    """Outside the span the other side answered on the request's partition (a partition
    it answered nothing of is not outside: its frames are missing)."""
    r = answer.request
    if r is None or (r.topic, r.partition) not in reached:
        return False
    low, high = reached[(r.topic, r.partition)]
    return not low <= r.offset <= high


def compare(
    baseline: Iterable[FrameAnswer],
    candidate: Iterable[FrameAnswer],
    baseline_name: str = "baseline",
    candidate_name: str = "candidate",
    min_iou: float = DEFAULT_MIN_IOU,
    *,
    live: bool = False,
) -> DiffResult:
    """Pair the two sides' answers by frame and add up how they differ. A frame
    answered twice on one side (a redelivery) counts once, with its last answer.
    `live`: a frame one side has not reached yet or started after is pending."""
    result = DiffResult(baseline_name, candidate_name, min_iou)
    base = _by_ident(baseline, result.coverage["baseline"])
    cand = _by_ident(candidate, result.coverage["candidate"])
    reached = {"baseline": _reached(base), "candidate": _reached(cand)}
    for ident in sorted(base.keys() | cand.keys()):
        b = base.get(ident) or cand[ident].absent()
        c = cand.get(ident) or b.absent()
        missing = "baseline" if b.missing else "candidate" if c.missing else None
        present = c if b.missing else b
        pending = live and missing is not None and _not_reached(present, reached[missing])
        pairs = match_boxes(b.boxes, c.boxes, min_iou) if b.answered and c.answered else []
        frame = FrameDiff(b, c, pairs, pending)
        result.frames.append(frame)
        if not pending:
            _add(result, frame)
    return result


def _add(result: DiffResult, frame: FrameDiff) -> None:
    for side, answer in (("baseline", frame.baseline), ("candidate", frame.candidate)):
        coverage = result.coverage[side]
        coverage.frames += 1
        coverage.answered += answer.answered
        coverage.missing += answer.missing
        if answer.error is not None:
            coverage.errors += 1
            result.errors[side][answer.error] += 1
        if answer.latency_ms is not None:
            result.latencies[side].append(answer.latency_ms)
        seen = result.versions[side]
        if answer.model_version is not None and answer.model_version not in seen:
            seen.append(answer.model_version)
        if not answer.answered:
            continue
        # The answering side's boxes count on every frame it answered: where the other
        # side erred or has no answer, they are all unmatched.
        for box in answer.boxes:
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
        f"frames: {result.paired} answered by both, {result.compared} compared "
        f"(no error on either side), {result.only_baseline_frames} only by baseline, "
        f"{result.only_candidate_frames} only by candidate"
        + (
            f", {result.pending} pending (one side not there yet or started later: not counted)"
            if result.pending
            else ""
        )
        + f"; boxes matched per class at IoU >= {result.min_iou:g}; a frame one side "
        "failed or missed counts the other side's boxes as unmatched",
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
    for side in SIDES:
        errors, latency = result.side_summary(side)
        if latency != "-":
            latency += f" ({result.latency(side)['count']} answers)"
        versions = ", ".join(str(v) for v in result.versions[side])
        lines.append(
            f"{side:<9}  {result.coverage_line(side)}; errors: {errors}; latency {latency}"
            + (f"; model version {versions}" if versions else "")
        )
    lines.append(f"agreement: {result.agreement:.3f} (matched / union of boxes)")
    lines.append(
        f"answered: {result.answered_share:.3f} (of the frames the baseline answered, "
        "the share the candidate answered too)"
    )
    return "\n".join(lines)
