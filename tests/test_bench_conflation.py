"""The conflation section (bench/sections/conflation.py) on a short window against the
suite's broker: its rows exist, show what docs/benchmarks.md claims, meet its target and
render on the page."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.page import markdown
from bench.results import Bench, evaluate
from bench.sections import TARGETS
from bench.sections.conflation import AGE_ANSWER_P50, AGE_END, AGE_SEEN_P50, SUPERSEDED, camera_rows

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Long enough that Kafka round trips on a loaded two-core machine stay small beside it.
BATCH_MS = 200.0


@pytest.mark.asyncio
async def test_with_conflation_the_newest_answer_stays_fresh_without_it_the_age_grows(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    repository = Path(__file__).resolve().parents[1] / "models"
    off, on = await camera_rows(kafka_bootstrap, repository, tmp_path, BATCH_MS, window_s=8)
    assert (off.id, on.id) == ("conflation.off", "conflation.on")
    assert off.extra[SUPERSEDED] == 0 and on.extra[SUPERSEDED] > 25
    # Conflation keeps the newest answered frame within about two engine calls...
    assert on.extra[AGE_ANSWER_P50] < 2 * BATCH_MS, on
    # ...while without it the backlog, and with it the age, keeps growing.
    assert off.extra[AGE_END] > 2000 and off.extra[AGE_END] > 1.5 * off.extra[AGE_SEEN_P50], off
    # The section's target (2 calls of 100 ms) is found by row id; at 200 ms calls it can miss.
    (outcome,) = [o for o in evaluate([off, on], TARGETS) if o.target.row_id == on.id]
    assert outcome.measured == on.extra[AGE_ANSWER_P50]
    page = markdown(Bench(8, 8, 0.1), [off, on], [outcome], {}, [], 60)
    assert "| `conflation.off` |" in page and "| `conflation.on` |" in page
