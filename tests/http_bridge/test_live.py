"""The live page's join of frames and answers (no broker), and the page in embedded mode.

The page in Kafka mode, in a real browser with real cameras, is tested by
tests/demo/test_demo.py.
"""

from __future__ import annotations

import json

import httpx
import pytest

from consumer.answer_log import AnswerSink, Role
from consumer.metrics import WorkerMetrics
from consumer.protocol import Reply, Topics, detection_data
from consumer.records import Record
from engines.errors import DeadlineExceeded
from http_bridge.app import create_app
from http_bridge.settings import BridgeSettings
from producer_tools.live import PENDING_PER_CAMERA, LiveStreams
from tests.consumer.fakes import MemoryOutbox
from tests.http_bridge.test_middleware import FakeBackend

BOX = {
    "ObjectClassName": "red rectangle",
    "ObjectClassId": 1,
    "confidence": 99.0,
    "coordinates": {"left": 1, "top": 2, "right": 30, "bottom": 40},
}


def frame(live: LiveStreams, camera: str, cid: str, image: bytes, at: int, **extra: str) -> bool:
    headers = [("correlation-id", cid.encode()), *((k, v.encode()) for k, v in extra.items())]
    return live.observe("tfstream.requests.m", camera.encode(), image, headers, at)


def answer(live: LiveStreams, camera: str, cid: str, at: int, error: bool = False) -> bool:
    reply = (
        Reply(cid, "m", error=DeadlineExceeded("late"), worker="w1")
        if error
        else Reply(cid, "m", data=detection_data([BOX], None, 64, 48), worker="w1")
    )
    return live.observe("tfstream.results.m", camera.encode(), reply.to_json(), [], at)


def test_an_answer_is_shown_with_its_own_frame_whatever_the_order() -> None:
    live = LiveStreams(BridgeSettings(bootstrap="unused:9092"))
    assert not frame(live, "cam-1", "a", b"jpeg-a", 1000)
    assert not frame(live, "cam-1", "b", b"jpeg-b", 1100)
    assert answer(live, "cam-1", "b", 1180)  # b answered before a
    view = live.cameras[("m", "cam-1")]
    assert (view.image, view.correlation_id, view.latency_ms) == (b"jpeg-b", "b", 80.0)
    assert view.boxes == [BOX] and (view.width, view.height) == (64, 48)
    assert answer(live, "cam-1", "a", 1300)
    assert (view.image, view.latency_ms, view.answers) == (b"jpeg-a", 300.0, 2)
    # The answer read before its frame waits for it.
    assert not answer(live, "cam-1", "c", 1500)
    assert frame(live, "cam-1", "c", b"jpeg-c", 1450)
    assert (view.image, view.latency_ms) == (b"jpeg-c", 50.0)


def test_duplicates_errors_and_request_reply_calls() -> None:
    live = LiveStreams(BridgeSettings(bootstrap="unused:9092"))
    frame(live, "cam-1", "a", b"jpeg-a", 1000)
    assert answer(live, "cam-1", "a", 1010)
    assert not answer(live, "cam-1", "a", 1020)  # a redelivery answered twice: shown once
    frame(live, "cam-1", "b", b"jpeg-b", 1100)
    assert answer(live, "cam-1", "b", 1110, error=True)
    view = live.cameras[("m", "cam-1")]
    assert (view.errors, view.last_error, view.image, view.answers) == (
        1,
        "deadline_exceeded",
        b"jpeg-a",
        2,
    )
    # A request/reply call (reply-to) is answered on its reply topic: not kept, not shown.
    assert not frame(live, "cam-2", "x", b"jpeg-x", 1000, **{"reply-to": "my.replies"})
    assert ("m", "cam-2") not in live.cameras
    # Other cameras and models stay apart; unrelated topics are ignored.
    assert not live.observe("tfstream.dlq", b"cam-1", b"x", [], 1)
    assert [v.camera for v in live.changed_since(0)] == ["cam-1"]
    assert live.changed_since(live.version) == []


def shadow_answer(live: LiveStreams, camera: str, cid: str, boxes: list, name: str = "v2") -> bool:
    sink = AnswerSink(Topics("tfstream"), MemoryOutbox(), WorkerMetrics(), Role.SHADOW, name)
    request = Record("tfstream.requests.m", 0, 1, camera.encode(), b"", (), timestamp_ms=1000)
    reply = Reply(cid, "m", data=detection_data(boxes, None, 64, 48), worker="shadow-w")
    logged = sink.entry(request, "m", reply, None)
    topic = f"tfstream.shadow.{name}.m"
    return live.observe(topic, camera.encode(), logged.to_json(), logged.headers(), 1500)


def test_a_shadow_s_answer_to_the_frame_on_show_is_shown_with_it() -> None:
    live = LiveStreams(BridgeSettings(bootstrap="unused:9092"))
    other = {**BOX, "ObjectClassName": "green disc"}
    # A shadow answer before its frame's serving answer waits for it.
    assert not shadow_answer(live, "cam-1", "a", [other])
    frame(live, "cam-1", "a", b"jpeg-a", 1000)
    assert answer(live, "cam-1", "a", 1010)
    view = live.cameras[("m", "cam-1")]
    shown = view.to_dict()["shadows"]
    assert [(s["name"], s["boxes"], s["worker"]) for s in shown] == [("v2", [other], "shadow-w")]
    assert shown[0]["latency_ms"] is not None and shown[0]["latency_ms"] >= 0
    # One after it updates the view; an answer to another frame does not.
    assert shadow_answer(live, "cam-1", "a", [BOX, other], name="v3")
    assert [s["name"] for s in view.to_dict()["shadows"]] == ["v2", "v3"]
    assert not shadow_answer(live, "cam-1", "zzz", [BOX])
    # The next frame shows only the shadows that answered it.
    frame(live, "cam-1", "b", b"jpeg-b", 1100)
    assert answer(live, "cam-1", "b", 1110)
    assert view.to_dict()["shadows"] == []
    # A shadow answering a camera nobody shows creates no camera.
    assert not shadow_answer(live, "cam-9", "q", [BOX])
    assert ("m", "cam-9") not in live.cameras


def test_frames_waiting_for_answers_are_bounded() -> None:
    live = LiveStreams(BridgeSettings(bootstrap="unused:9092"))
    for i in range(PENDING_PER_CAMERA + 10):
        frame(live, "cam-1", str(i), b"j", i)
    view = live.cameras[("m", "cam-1")]
    assert len(view.pending) == PENDING_PER_CAMERA
    assert "0" not in view.pending and str(PENDING_PER_CAMERA + 9) in view.pending


@pytest.mark.asyncio
async def test_embedded_mode_says_the_page_needs_kafka(tmp_path: object) -> None:
    app = create_app(BridgeSettings(repository=str(tmp_path)), FakeBackend())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        page = await client.get("/streams")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "The live page needs Kafka mode" in page.text
        events = await client.get("/streams/events")
    assert events.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in events.text.split("\n\n") if b.startswith("event: mode")]
    assert len(blocks) == 1
    data = json.loads(blocks[0].split("data: ", 1)[1])
    assert data["mode"] == "embedded" and "needs Kafka mode" in data["message"]
    schema = await httpx.AsyncClient(transport=transport, base_url="http://b").get("/openapi.json")
    assert "/streams" not in schema.json()["paths"]  # no endless stream for API fuzzers


def test_tracked_boxes_show_their_id_and_a_trail_of_their_track(tmp_path: object) -> None:
    """The page's own JavaScript (node, with a minimal DOM): a box with `track_id` is
    labelled `#id` and its track leaves its last centres as dots; a track gone from
    the frame loses its trail; an untracked box is labelled as before."""
    import shutil
    import subprocess
    from pathlib import Path

    from http_bridge.live_page import _SCRIPT

    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to run the live page's script")
    functions = _SCRIPT[_SCRIPT.index("const TRAIL") : _SCRIPT.index("const events = new")]
    script = Path(str(tmp_path)) / "page.js"
    script.write_text(
        "const document = {createElement: () => ({style: {}, dataset: {}, children: [],"
        " appendChild(c) { this.children.push(c); }})};\n"
        "const palette = ['#d62728', '#2ca02c'];\n"
        + functions
        + """
const box = (id, x) => ({ObjectClassName: 'red rectangle', ObjectClassId: 1, confidence: 97,
  coordinates: {left: x, top: 10, right: x + 20, bottom: 30}, track_id: id});
const v = boxes => ({width: 640, height: 480, boxes});
const fig = {};
const out = [];
out.push(trailsOf(fig, v([box(3, 0), box(4, 100)])).length);
out.push(trailsOf(fig, v([box(3, 10), box(4, 110)])).length);
out.push(trailsOf(fig, v([box(3, 20)])).length);
out.push(boxFor(v([]), box(3, 20), null).children[0].textContent);
out.push(boxFor(v([]), box(null, 20), null).children[0].textContent);
const plain = box(1, 0); delete plain.track_id;
out.push(boxFor(v([]), plain, null).children[0].textContent);
console.log(JSON.stringify(out));
"""
    )
    whole = Path(str(tmp_path)) / "whole.js"
    whole.write_text(_SCRIPT)
    checked = subprocess.run([node, "--check", str(whole)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr  # the whole script parses
    result = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        2, 4, 3, "#3 red rectangle 97%", "red rectangle 97%", "red rectangle 97%"
    ]  # fmt: skip


def test_a_tracked_camera_shows_its_zones_lines_and_counts_each_event_once() -> None:
    live = LiveStreams(BridgeSettings(bootstrap="unused:9092"))
    config = {
        "camera": "cam-1",
        "lines": [{"kind": "line", "name": "door", "start": [0, 20], "end": [64, 20]}],
        "zones": [{"kind": "zone", "name": "bay", "polygon": [[0, 0], [9, 0], [9, 9]]}],
    }
    assert not live.observe("tfstream.zones", b"cam-1", json.dumps(config).encode(), [], 1)
    assert not frame(live, "cam-1", "a", b"jpeg-a", 1000)
    assert answer(live, "cam-1", "a", 1100)
    view = live.cameras[("m", "cam-1")]
    shown = view.to_dict()
    assert shown["lines"] == [{"name": "door", "start": [0, 20], "end": [64, 20]}]
    assert shown["zones"] == [{"name": "bay", "polygon": [[0, 0], [9, 0], [9, 9]]}]
    event = {"id": "e1", "camera": "cam-1", "target": "door", "kind": "crossed_in"}
    assert live.observe("tfstream.events.m", b"cam-1", json.dumps(event).encode(), [], 1200)
    assert not live.observe("tfstream.events.m", b"cam-1", json.dumps(event).encode(), [], 1300)
    assert view.to_dict()["counts"] == {"door": {"crossed_in": 1}}
    assert live.observe("tfstream.zones", b"cam-1", None, [], 1400)  # removed
    assert view.to_dict()["lines"] == [] and view.to_dict()["zones"] == []
