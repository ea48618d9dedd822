"""The page `tfstream-diff --report DIR` writes: look at the disagreements, not read them.

DIR/index.html shows the summary table, then the frames where the two sides
disagree most, each with both box sets drawn over it as SVG: the baseline's
solid, the candidate's dashed. The frames are written beside the page
(DIR/frames/), so the folder can be archived or served as it is. A frame that
could not be read back (live, past the request topic's retention) is drawn on
an empty canvas of the image's size.

The baseline's colour follows the class; the candidate's dashes are dark and
drawn on top, so a box both found shows colour between dark dashes, and a box
only one side found stands alone, thicker, with its label.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from producer_tools.diff_match import OVERALL, DiffResult, FrameDiff, ltrb

PALETTE = ["#e6194b", "#3cb44b", "#0082c8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem; background: #f4f4f4; color: #222; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; }
table { border-collapse: collapse; background: #fff; }
td, th { border: 1px solid #ccc; padding: .2rem .5rem; text-align: right; }
td:first-child, th:first-child { text-align: left; }
tr.overall { font-weight: bold; }
.legend svg { vertical-align: middle; }
#frames { display: flex; flex-wrap: wrap; gap: 1rem; }
figure.frame { background: #fff; border: 1px solid #ccc; padding: .5rem; margin: 0; width: 420px; }
.picture { position: relative; line-height: 0; }
.picture img, .picture .blank { display: block; width: 100%; }
.picture svg { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
figcaption { font-size: .85rem; margin-top: .4rem; }
.error { color: #b00; }
"""


def _colour(name: str, classes: list[str]) -> str:
    return PALETTE[classes.index(name) % len(PALETTE)] if name in classes else "#555"


def _suffix(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data[:3] == b"GIF":
        return ".gif"
    if data[:2] == b"BM":
        return ".bmp"
    if data[:4] == b"RIFF":
        return ".webp"
    return ".jpg"


def _rects(
    boxes: Any, side: str, matched: set[int], classes: list[str], stroke: float, width: int
) -> list[str]:
    """Baseline: solid, in the class's colour. Candidate: dark dashes drawn over it,
    so a matched pair shows both (colour between the dashes) and an unpaired
    candidate box shows dashes alone. An unpaired box is drawn thicker and named."""
    out = []
    for i, box in enumerate(boxes):
        left, top, right, bottom = ltrb(box)
        name = str(box["ObjectClassName"])
        paired = i in matched
        line = (1.0 if side == "baseline" else 0.7) * stroke * (1 if paired else 2)
        if side == "baseline":
            colour, dash = _colour(name, classes), ""
        else:
            colour, dash = "#111", f' stroke-dasharray="{4 * stroke:g} {3 * stroke:g}"'
        label = f"{name} {float(box['confidence']):.0f}%"
        out.append(
            f'<rect class="{side}" data-label="{html.escape(name)}" '
            f'data-matched="{"yes" if paired else "no"}" x="{left:g}" y="{top:g}" '
            f'width="{right - left:g}" height="{bottom - top:g}" fill="none" '
            f'stroke="{colour}" stroke-width="{line:g}"{dash}>'
            f"<title>{side}: {html.escape(label)}</title></rect>"
        )
        if not paired:
            y = top - stroke if top > 8 * stroke else bottom + 6 * stroke
            # Written towards the middle of the picture, so it is never cut at an edge.
            x, anchor = (left, "start") if left < width / 2 else (right, "end")
            out.append(
                f'<text class="unpaired" x="{x:g}" y="{y:g}" text-anchor="{anchor}" '
                f'font-size="{6 * stroke:g}" '
                f'fill="{colour}" stroke="#fff" stroke-width="{stroke / 3:g}" '
                f'paint-order="stroke">{html.escape(name)}: only {side}</text>'
            )
    return out


def _frame(
    frame: FrameDiff, rank: int, picture: str | None, classes: list[str], result: DiffResult
) -> str:
    b, c = frame.baseline, frame.candidate
    width = b.width or c.width or 640
    height = b.height or c.height or 480
    stroke = max(1.5, min(width, height) / 150)
    matched_b, matched_c = frame.matched_indices()
    rects = _rects(b.boxes, "baseline", matched_b, classes, stroke, width)
    rects += _rects(c.boxes, "candidate", matched_c, classes, stroke, width)
    if picture is not None:
        image = f'<img src="{html.escape(picture)}" alt="{html.escape(b.name)}">'
    else:
        image = (
            f'<svg class="blank" viewBox="0 0 {width} {height}"><rect width="{width}" '
            f'height="{height}" fill="#ddd"/></svg>'
        )
    errors = []
    for side, answer in (("baseline", b), ("candidate", c)):
        if answer.error:
            errors.append(f'<span class="error">{side}: {html.escape(answer.error)}</span>')
        elif answer.missing:
            errors.append(f'<span class="error">{side}: no answer</span>')
    latency = " · ".join(
        f"{side} {answer.latency_ms:.0f} ms"
        for side, answer in (("baseline", b), ("candidate", c))
        if answer.latency_ms is not None
    )
    only_b, only_c = frame.only_baseline, frame.only_candidate
    caption = (
        f"<b>#{rank} {html.escape(b.name)}</b><br>"
        f"baseline {len(b.boxes)} boxes, candidate {len(c.boxes)}; matched {len(frame.pairs)}, "
        f"only baseline {only_b}, only candidate {only_c}"
        + ("<br>" + " · ".join(errors) if errors else "")
        + (f"<br><small>latency: {latency}</small>" if latency else "")
    )
    return (
        f'<figure class="frame" data-frame="{html.escape(b.ident)}" '
        f'data-only-baseline="{only_b}" data-only-candidate="{only_c}">'
        f'<div class="picture">{image}'
        f'<svg class="boxes" viewBox="0 0 {width} {height}" preserveAspectRatio="none">'
        f"{''.join(rects)}</svg></div><figcaption>{caption}</figcaption></figure>"
    )


def _summary(result: DiffResult) -> str:
    rows = []
    for name, s in [*sorted(result.classes.items()), (OVERALL, result.overall)]:
        mean_iou, change = s.shown()
        rows.append(
            f'<tr class="{"overall" if name == OVERALL else "class"}"><td>{html.escape(name)}</td>'
            f"<td>{s.baseline}</td><td>{s.candidate}</td><td>{s.matched}</td>"
            f"<td>{s.only_baseline}</td><td>{s.only_candidate}</td><td>{mean_iou}</td>"
            f"<td>{change}</td><td>{s.agreement:.3f}</td></tr>"
        )
    sides = []
    for side in ("baseline", "candidate"):
        errors, latency = result.side_summary(side)
        sides.append(
            f"<li>{side}: {html.escape(result.coverage_line(side))}; errors "
            f"{html.escape(errors)}; latency {latency}</li>"
        )
    return (
        "<table><tr><th>class</th><th>baseline</th><th>candidate</th><th>matched</th>"
        "<th>only baseline</th><th>only candidate</th><th>mean IoU</th><th>Δ confidence</th>"
        f"<th>agreement</th></tr>{''.join(rows)}</table><ul>{''.join(sides)}</ul>"
    )


def write_report(
    folder: Path, result: DiffResult, images: dict[str, bytes], frames: int = 12
) -> Path:
    """Write DIR/index.html and DIR/frames/*; returns the page's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "frames").mkdir(exist_ok=True)
    classes = sorted(result.classes)
    shown = result.most_disagreeing(frames)
    figures = []
    for rank, frame in enumerate(shown, 1):
        data = images.get(frame.baseline.ident)
        picture = None
        if data:
            picture = f"frames/{rank:03d}{_suffix(data)}"
            (folder / picture).write_bytes(data)
        figures.append(_frame(frame, rank, picture, classes, result))
    body = (
        "".join(figures)
        if figures
        else '<p id="none">No frame differs: both sides found the same boxes everywhere.</p>'
    )
    legend = (
        '<p class="legend">'
        '<svg width="40" height="12"><line x1="0" y1="6" x2="40" y2="6" stroke="#0082c8" '
        'stroke-width="3"/></svg> baseline (solid, colour of the class) &nbsp; '
        '<svg width="40" height="12"><line x1="0" y1="6" x2="40" y2="6" stroke="#111" '
        'stroke-width="2" stroke-dasharray="6 4"/></svg> candidate (dashed) &nbsp; '
        "a matched pair shows both; thicker and named: no partner on the other side</p>"
    )
    title = html.escape(f"{result.baseline_name} vs {result.candidate_name}")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>tfstream-diff: {title}</title>
<style>{_STYLE}</style></head>
<body>
<h1>tfstream-diff</h1>
<p>baseline <code>{html.escape(result.baseline_name)}</code> ·
candidate <code>{html.escape(result.candidate_name)}</code> ·
{result.paired} frames answered by both, {result.compared} compared ·
boxes matched per class at IoU ≥ {result.min_iou:g} ·
<b id="agreement">agreement {result.agreement:.3f}</b> ·
<b id="answered">the candidate answered {result.answered_share:.3f} of the frames the
baseline answered</b></p>
{_summary(result)}
<h2>The {len(shown)} frames where they disagree most</h2>
{legend}
<div id="frames">{body}</div>
</body></html>
"""
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
