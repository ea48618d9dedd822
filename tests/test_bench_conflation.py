"""bench.conflation on a short window against the suite's broker: the rows it
reports exist and show what docs/benchmarks.md claims."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.conflation import markdown, rows

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Long enough that Kafka round trips on a loaded two-core machine stay small beside it.
BATCH_MS = 200.0


@pytest.mark.asyncio
async def test_with_conflation_the_newest_answer_stays_fresh_without_it_the_age_grows(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    off, on = await rows(kafka_bootstrap, tmp_path, BATCH_MS, window_s=8)
    assert (off.id, on.id) == ("conflation.off", "conflation.on")
    assert off.superseded_share == 0 and on.superseded_share > 0.25
    # Conflation keeps the newest answered frame within about two engine calls...
    assert on.age_answer_p50_ms < 2 * BATCH_MS, on
    # ...while without it the backlog, and with it the age, keeps growing.
    assert off.age_end_ms > 2000 and off.age_end_ms > 1.5 * off.age_seen_p50_ms, off
    table = markdown([off, on], BATCH_MS)
    assert "| `conflation.off` | no |" in table and "| `conflation.on` | latest |" in table
