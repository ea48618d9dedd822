"""The pages a person looks at during a rollout, in Chromium: tfstream-diff's report
(the frames where two models disagree, both box sets drawn) and the live page's
shadow boxes.

The report comes from a real offline diff of generated models (no Kafka): the
candidate's weights cannot see yellow discs, so every frame with a yellow disc
disagrees, and the missing boxes are the baseline's, solid and unpaired.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from http_bridge.live_page import page as live_page
from tests.support.models import REPO_ROOT, candidate_repository, serving_copy

pytestmark = [pytest.mark.slow]

FRAMES = """() => [...document.querySelectorAll('figure.frame')].map(f => {
  const img = f.querySelector('img');
  const rects = side => [...f.querySelectorAll('rect.' + side)].map(r => ({
    label: r.dataset.label, matched: r.dataset.matched,
    dashed: r.getAttribute('stroke-dasharray') !== null,
    box: r.getBoundingClientRect().toJSON()}));
  return {frame: f.dataset.frame, loaded: img !== null && img.naturalWidth > 0,
          picture: img ? img.getBoundingClientRect().toJSON() : null,
          baseline: rects('baseline'), candidate: rects('candidate'),
          caption: f.querySelector('figcaption').textContent};
})"""


def inside(box: dict[str, float], picture: dict[str, float]) -> bool:
    return (
        box["width"] > 3
        and box["left"] >= picture["left"] - 1
        and box["right"] <= picture["right"] + 1
        and box["top"] >= picture["top"] - 1
        and box["bottom"] <= picture["bottom"] + 1
    )


@pytest.fixture(scope="module")
def report(
    model_repository: Path,
    shapes_images: tuple[Path, dict[str, list[dict[str, Any]]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    source, truth = shapes_images
    root = tmp_path_factory.mktemp("diff_page")
    images = root / "images"
    images.mkdir()
    names = sorted(n for n in truth if n.endswith(".jpg"))[:16]
    for name in names:
        shutil.copy(source / name, images / name)
    result = subprocess.run(
        [
            sys.executable, "-m", "producer_tools.diff",
            "--images", str(images),
            "--baseline-repo", str(serving_copy(model_repository, root / "baseline")),
            "--candidate-repo", str(candidate_repository(root / "blind", "yellow disc")),
            "--report", str(root / "report"),
            "--report-frames", "6",
            "--device", "cpu",
            "--json",
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["classes"]["yellow disc"]["candidate"] == 0
    return root / "report" / "index.html", {n: truth[n] for n in names}


def test_the_report_page_shows_the_disagreeing_frames_with_both_box_sets(
    report: tuple[Path, dict[str, list[dict[str, Any]]]], chromium: str
) -> None:
    from playwright.sync_api import sync_playwright

    index, truth = report
    with_yellow = {n for n, objs in truth.items() if any(o["label"] == "yellow disc" for o in objs)}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(index.as_uri())
            page.wait_for_function(
                "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
            )
            frames = page.evaluate(FRAMES)
            page.screenshot(path=str(index.parent / "screenshot.png"), full_page=True)
            agreement = page.inner_text("#agreement")
        finally:
            browser.close()
    assert len(frames) == min(6, len(with_yellow))
    assert {f["frame"] for f in frames} <= with_yellow
    assert agreement.startswith("agreement 0.")
    for f in frames:
        assert f["loaded"], f
        # The baseline's yellow discs, solid and without a partner; everything else paired.
        missing = [r for r in f["baseline"] if r["matched"] == "no"]
        assert [r["label"] for r in missing] == ["yellow disc"], f
        assert not any(r["dashed"] for r in f["baseline"])
        assert f["candidate"] and all(r["dashed"] for r in f["candidate"])
        assert all(r["matched"] == "yes" for r in f["candidate"])
        assert len(f["baseline"]) == len(f["candidate"]) + 1
        # Drawn where the objects are, over the picture.
        assert all(inside(r["box"], f["picture"]) for r in f["baseline"] + f["candidate"])
        assert "only baseline 1, only candidate 0" in f["caption"]


def test_the_live_page_draws_a_shadow_s_boxes_dashed(chromium: str) -> None:
    """The live page's own script, given a camera view with a shadow's answer."""
    from playwright.sync_api import sync_playwright

    box = {
        "ObjectClassName": "red rectangle",
        "ObjectClassId": 1,
        "confidence": 99.0,
        "coordinates": {"left": 10, "top": 10, "right": 40, "bottom": 30},
    }
    view = {
        "camera": "cam-1", "model": "m", "version": 1,
        "image": "data:image/svg+xml;base64,"
        "PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciIHdpZHRoPSI2NCIgaGVpZ2h0PSI0OCIvPg==",
        "width": 64, "height": 48, "boxes": [box], "correlation_id": "a",
        "latency_ms": 12.0, "fps": 1.0, "answers": 1, "errors": 0, "last_error": None,
        "worker": "w1",
        "shadows": [{"name": "v2", "boxes": [box, {**box, "ObjectClassName": "green disc"}],
                     "error": None, "latency_ms": 345.0, "worker": "s1"}],
    }  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            # No bridge: its event stream cannot open here, the drawing code is the point.
            page.set_content(live_page(kafka=True))
            page.evaluate("(v) => show(v)", view)
            drawn = page.evaluate(
                """() => [...document.querySelectorAll('.box')].map(b => ({
                    shadow: b.dataset.shadow || null, label: b.dataset.label,
                    style: getComputedStyle(b).borderTopStyle}))"""
            )
            caption = page.inner_text("figcaption")
        finally:
            browser.close()
    assert {"shadow": None, "label": "red rectangle", "style": "solid"} in drawn
    shadow = [d for d in drawn if d["shadow"] == "v2"]
    assert sorted(d["label"] for d in shadow) == ["green disc", "red rectangle"]
    assert all(d["style"] == "dashed" for d in shadow)
    assert "shadow v2 (dashed): 2 boxes, latency 345 ms" in caption
