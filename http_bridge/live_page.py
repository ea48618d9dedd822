"""The HTML of /streams: plain HTML, CSS and a little JavaScript, no build step.

Kept in a Python string (not a package data file) so every install of the
bridge, editable or not, serves it.
"""

from __future__ import annotations

EMBEDDED_MESSAGE = (
    "The live page needs Kafka mode: this bridge runs embedded (no --bootstrap), so no "
    "camera streams through it. Start the bridge with --bootstrap host:port, or run "
    "`make demo`, which starts Kafka, two workers, this bridge and two cameras."
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem; background: #f4f4f4; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
#status { color: #555; margin-bottom: 1rem; }
#notice { background: #fff3cd; border: 1px solid #e0c060; padding: .8rem; max-width: 48rem; }
#cameras { display: flex; flex-wrap: wrap; gap: 1rem; }
.camera { background: #fff; border: 1px solid #ccc; padding: .5rem; margin: 0; width: 420px; }
.frame { position: relative; line-height: 0; }
.frame img { display: block; width: 100%; }
.box { position: absolute; border: 2px solid; box-sizing: border-box; }
.box.shadow { border-style: dashed; }
.box.shadow span { top: auto; bottom: -1.2rem; opacity: .85; }
.shadows { color: #555; }
.box span { position: absolute; left: -2px; top: -1.2rem; font-size: .75rem; line-height: 1.2rem;
            color: #fff; padding: 0 .25rem; white-space: nowrap; }
.geometry { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.geometry .zone { fill: rgba(255, 200, 0, .18); stroke: #c9a800; stroke-width: 2; }
.geometry .line { stroke: #ff00aa; stroke-width: 3; }
.counts { color: #333; }
.trail { position: absolute; width: 4px; height: 4px; margin: -2px; border-radius: 2px; }
figcaption { font-size: .85rem; margin-top: .4rem; }
.errors { color: #b00; }
"""

_SCRIPT = """
const cameras = document.getElementById('cameras');
const status = document.getElementById('status');
const palette = ['#d62728', '#2ca02c', '#1f77b4', '#c9a800', '#9467bd', '#8c564b', '#e377c2'];

function figureFor(v) {
  const id = v.model + '|' + v.camera;
  let fig = [...cameras.children].find(f => f.dataset.id === id);
  if (!fig) {
    fig = document.createElement('figure');
    fig.className = 'camera';
    fig.dataset.id = id;
    fig.dataset.camera = v.camera;
    fig.dataset.model = v.model;
    fig.innerHTML = '<div class="frame"><img alt=""><div class="boxes"></div></div>' +
                    '<figcaption></figcaption>';
    cameras.appendChild(fig);
    [...cameras.children].sort((a, b) => a.dataset.id.localeCompare(b.dataset.id))
      .forEach(f => cameras.appendChild(f));
  }
  return fig;
}

function show(v) {
  const fig = figureFor(v);
  if (v.image) {
    fig.querySelector('img').src = v.image;
    fig.querySelector('img').alt = 'camera ' + v.camera + ', ' + v.correlation_id;
    const layer = fig.querySelector('.boxes');
    const drawn = v.boxes.map(b => boxFor(v, b, null));
    trailsOf(fig, v).forEach(dot => drawn.push(dot));
    const geometry = geometryOf(v);
    if (geometry) drawn.push(geometry);
    (v.shadows || []).forEach(s => s.boxes.forEach(b => drawn.push(boxFor(v, b, s.name))));
    layer.replaceChildren(...drawn);
    fig.dataset.frame = v.correlation_id;
  }
  fig.dataset.answers = v.answers;
  const latency = v.latency_ms === null ? '-' : v.latency_ms.toFixed(0) + ' ms';
  const errors = v.errors ? ' <span class="errors">' + v.errors + ' errors (last: ' +
                 v.last_error + ')</span>' : ' 0 errors';
  fig.querySelector('figcaption').innerHTML =
    '<b></b> · ' + v.model + ' · ' + v.fps.toFixed(1) + ' frames/s · latency ' + latency +
    ' · ' + v.boxes.length + ' boxes ·' + errors + ' · <small></small>' +
    '<div class="shadows"></div><div class="source"></div><div class="counts"></div>';
  fig.querySelector('figcaption b').textContent = v.camera;
  const src = v.source;
  fig.dataset.state = src ? src.state : '';
  fig.querySelector('.source').textContent = src ? 'camera ' + src.state +
    (src.state !== 'connected' && src.last_error ? ' (last error: ' + src.last_error + ')' : '') +
    ' · in ' + src.fps_in.toFixed(1) + ' / out ' + src.fps_out.toFixed(1) + ' frames/s' : '';
  fig.querySelector('figcaption small').textContent = v.worker;
  fig.querySelector('.counts').textContent = countsText(v);
  fig.querySelector('.shadows').textContent = (v.shadows || []).map(s =>
    'shadow ' + s.name + ' (dashed): ' +
    (s.error ? 'error ' + s.error : s.boxes.length + ' boxes') + ', latency ' +
    (s.latency_ms === null ? '-' : s.latency_ms.toFixed(0) + ' ms')).join(' · ');
}

// A tracked camera's zones (filled) and counting lines, over the frame, in its pixels.
function geometryOf(v) {
  if (!v.width || !((v.lines || []).length || (v.zones || []).length)) return null;
  const ns = 'http://www.w3.org/2000/svg', svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'geometry');
  svg.setAttribute('viewBox', '0 0 ' + v.width + ' ' + v.height);
  svg.setAttribute('preserveAspectRatio', 'none');
  (v.zones || []).forEach(z => {
    const p = document.createElementNS(ns, 'polygon');
    p.setAttribute('points', z.polygon.map(xy => xy.join(',')).join(' '));
    p.setAttribute('class', 'zone');
    svg.appendChild(p);
  });
  (v.lines || []).forEach(l => {
    const p = document.createElementNS(ns, 'line');
    [['x1', l.start[0]], ['y1', l.start[1]], ['x2', l.end[0]], ['y2', l.end[1]]]
      .forEach(([k, n]) => p.setAttribute(k, n));
    p.setAttribute('class', 'line');
    svg.appendChild(p);
  });
  return svg;
}

function countsText(v) {
  return Object.keys(v.counts || {}).sort().map(target => target + ': ' +
    Object.keys(v.counts[target]).sort().map(k => k + ' ' + v.counts[target][k]).join(', '))
    .join(' · ');
}

// A tracked camera's boxes carry track_id: each track's last centres, as dots.
const TRAIL = 12;
function trailsOf(fig, v) {
  const trails = fig.trails || (fig.trails = new Map());
  const seen = new Set();
  v.boxes.filter(b => b.track_id !== undefined && b.track_id !== null).forEach(b => {
    const c = b.coordinates, points = trails.get(b.track_id) || [];
    points.push([(c.left + c.right) / 2 / v.width, (c.top + c.bottom) / 2 / v.height,
                 b.ObjectClassId || 1]);
    trails.set(b.track_id, points.slice(-TRAIL));
    seen.add(b.track_id);
  });
  [...trails.keys()].filter(id => !seen.has(id)).forEach(id => trails.delete(id));
  const dots = [];
  trails.forEach(points => points.forEach(([x, y, cls]) => {
    const dot = document.createElement('div');
    dot.className = 'trail';
    dot.style.left = (100 * x) + '%';
    dot.style.top = (100 * y) + '%';
    dot.style.background = palette[(cls - 1) % palette.length];
    dots.push(dot);
  }));
  return dots;
}

function boxFor(v, b, shadow) {
  const c = b.coordinates, box = document.createElement('div');
  const colour = palette[((b.ObjectClassId || 1) - 1) % palette.length];
  box.className = shadow === null ? 'box' : 'box shadow';
  if (shadow !== null) box.dataset.shadow = shadow;
  box.dataset.label = b.ObjectClassName;
  box.style.left = (100 * c.left / v.width) + '%';
  box.style.top = (100 * c.top / v.height) + '%';
  box.style.width = (100 * (c.right - c.left) / v.width) + '%';
  box.style.height = (100 * (c.bottom - c.top) / v.height) + '%';
  box.style.borderColor = colour;
  const label = document.createElement('span');
  label.style.background = colour;
  const track = b.track_id === undefined || b.track_id === null ? '' : '#' + b.track_id + ' ';
  if (track) box.dataset.track = b.track_id;
  label.textContent = (shadow === null ? '' : shadow + ': ') + track + b.ObjectClassName + ' ' +
                      Math.round(b.confidence) + '%';
  box.appendChild(label);
  return box;
}

const events = new EventSource('streams/events');
events.addEventListener('mode', e => {
  const m = JSON.parse(e.data);
  if (m.mode === 'embedded') {
    document.getElementById('notice').textContent = m.message;
    document.getElementById('notice').hidden = false;
    status.textContent = 'embedded mode';
    events.close();
  } else {
    status.textContent = 'Kafka mode, topic prefix ' + m.prefix +
      ': each camera key seen on the request and results topics; the boxes of a ' +
      'shadow model, where one runs, dashed.';
  }
});
events.addEventListener('camera', e => show(JSON.parse(e.data)));
events.addEventListener('problem', e => { status.textContent = JSON.parse(e.data).message; });
"""


def page(kafka: bool) -> str:
    notice = "" if kafka else EMBEDDED_MESSAGE
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>tfstream: live camera streams</title>
<style>{_STYLE}</style></head>
<body>
<h1>tfstream: live camera streams</h1>
<div id="status">connecting…</div>
<div id="notice"{"" if notice else " hidden"}>{notice}</div>
<div id="cameras"></div>
<script>{_SCRIPT}</script>
</body></html>
"""
