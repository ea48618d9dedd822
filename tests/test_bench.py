"""The benchmark's bookkeeping, without running a benchmark: targets find rows by id."""

from __future__ import annotations

import math

from bench.page import markdown
from bench.results import Bench, Measurement, Row, Target, evaluate
from bench.sections import SECTIONS, TARGETS, scaling, serving


def row(
    row_id: str, name: str, vs_raw: float | None = None, overhead_ms: float | None = None
) -> Row:
    return Row(
        row_id, "1. a section", name, Measurement(10.0, 5.0, 9.0, 100), "row", vs_raw, overhead_ms
    )


def test_targets_find_their_rows_by_id_whatever_the_display_text() -> None:
    targets = [
        Target("throughput", "a", "vs_raw", 0.9, True),
        Target("overhead", "b", "overhead_ms", 3.0, False, " ms"),
        Target("too slow", "c", "vs_raw", 0.9, True),
    ]
    rows = [
        row("a", "renamed for the page", vs_raw=0.95),
        row("b", "also renamed", overhead_ms=4.5),
        row("c", "no ratio"),
    ]
    outcomes = evaluate(rows, targets)
    assert [(o.measured, o.verdict) for o in outcomes[:2]] == [(0.95, "met"), (4.5, "**missed**")]
    assert math.isnan(outcomes[2].measured or 0.0) and outcomes[2].verdict == "**missed**"


def test_a_target_whose_row_was_not_run_says_so() -> None:
    (outcome,) = evaluate([row("a", "x", vs_raw=2.0)], [Target("t", "gone", "vs_raw", 1.0, True)])
    assert outcome.measured is None and not outcome.met and outcome.verdict == "not measured"
    page = markdown(Bench(1, 1, 0.1), [row("a", "x", vs_raw=2.0)], [outcome], {}, [], 60)
    assert "| t | - | >= 1 | not measured |" in page


def test_every_target_names_a_row_id_its_section_produces() -> None:
    produced = {
        serving.KAFKA_16,
        serving.KAFKA_1,
        serving.HTTP_KAFKA_16,
        serving.HTTP_KAFKA_1,
        serving.EMBEDDED_16,
        serving.EMBEDDED_1,
        *(scaling.row_id(n) for n in scaling.COUNTS),
    }
    assert {t.row_id for t in TARGETS} <= produced
    assert list(SECTIONS) == ["kafka", "embedded", "scaling"]
