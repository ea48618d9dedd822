"""How well track IDs follow the movers of a scene: the one IDF1 of the tracking tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import motmetrics as mm
import numpy as np
from trackers import IoU

Truth = Sequence[tuple[int, tuple[float, float, float, float]]]
"""The movers in view in one frame: (mover id, true box left, top, right, bottom)."""


def idf1(truth: Sequence[Truth], answers: Sequence[Sequence[Mapping[str, Any]]]) -> float:
    """py-motmetrics' IDF1 of the answers' `track_id`s against the movers, frame by
    frame (a box matches a mover at IoU >= 0.5; boxes without an ID are left out)."""
    acc = mm.MOTAccumulator(auto_id=True)
    iou = IoU()
    for movers, boxes in zip(truth, answers, strict=True):
        tracked = [b for b in boxes if b.get("track_id") is not None]
        gt = np.array([box for _, box in movers], dtype=np.float64).reshape(-1, 4)
        hyps = np.array(
            [[b["coordinates"][k] for k in ("left", "top", "right", "bottom")] for b in tracked],
            dtype=np.float64,
        ).reshape(-1, 4)
        overlap = iou.compute(gt, hyps)
        distance = np.where(overlap >= 0.5, 1.0 - overlap, np.nan)
        acc.update([m for m, _ in movers], [b["track_id"] for b in tracked], distance)
    summary = mm.metrics.create().compute(acc, metrics=["idf1"], name="run")
    return float(summary["idf1"].iloc[0])
