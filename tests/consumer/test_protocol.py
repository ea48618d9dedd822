import json

import pytest

from consumer import protocol as p
from engines.errors import ImageTooLarge, InvalidRequest


def hdrs(**values: str) -> list[tuple[str, bytes]]:
    return [(k.replace("_", "-"), v.encode()) for k, v in values.items()]


def test_topic_names() -> None:
    t = p.Topics("tfs")
    assert t.requests("shapes_tf2") == "tfs.requests.shapes_tf2"
    assert t.results("shapes_tf2") == "tfs.results.shapes_tf2"
    assert t.dlq == "tfs.dlq" and t.models == "tfs.models" and t.control == "tfs.control"
    assert t.model_of(t.requests("a.b-c")) == "a.b-c"


def test_unsafe_model_names_map_to_distinct_valid_topics() -> None:
    a, b = p.topic_suffix("my model/1"), p.topic_suffix("my model_1")
    assert a != b
    assert a.startswith("my_model_1-") and len(a) == len("my_model_1-") + 8
    assert all(c.isalnum() or c in "._-" for c in a)


def test_parse_request_reads_every_header() -> None:
    req = p.parse_request(
        "m",
        b"cam-1",
        b"IMG",
        hdrs(
            correlation_id="c1",
            reply_to="tfs.replies.x",
            deadline_ms="1700000000000",
            confidence="55.5",
            predictions="3",
            image_name="a.jpg",
            content_type="image/jpeg",
        ),
    )
    assert (req.correlation_id, req.reply_to, req.deadline_ms) == (
        "c1",
        "tfs.replies.x",
        1700000000000,
    )
    assert (req.confidence, req.predictions, req.image_name) == (55.5, 3, "a.jpg")
    assert req.key == b"cam-1" and req.image == b"IMG" and req.content_type == "image/jpeg"
    assert req.expired()  # 2023 is long gone


def test_request_headers_round_trip() -> None:
    req = p.Request(
        model="m", correlation_id="c", image=b"x", reply_to="r", confidence=40.0, predictions=2
    )
    again = p.parse_request("m", None, b"x", req.headers())
    assert (again.correlation_id, again.reply_to, again.confidence, again.predictions) == (
        "c",
        "r",
        40.0,
        2,
    )


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "'correlation-id' header is required"),
        ({"correlation_id": "  "}, "'correlation-id' header is required"),
        ({"correlation_id": "c", "confidence": "high"}, "'confidence' is not a valid number"),
        ({"correlation_id": "c", "confidence": "150"}, "percentage"),
        ({"correlation_id": "c", "confidence": "nan"}, "not a valid number"),
        ({"correlation_id": "c", "confidence": "inf"}, "not a valid number"),
        ({"correlation_id": "c", "confidence": "+5"}, "not a valid number"),
        ({"correlation_id": "c", "confidence": "1_0"}, "not a valid number"),
        ({"correlation_id": "c", "confidence": "0x10"}, "not a valid number"),
        ({"correlation_id": "c", "predictions": "\u0663"}, "not a valid integer"),  # Arabic 3
        ({"correlation_id": "c", "predictions": "1_000"}, "not a valid integer"),
        ({"correlation_id": "c", "predictions": "5e1"}, "not a valid integer"),
        ({"correlation_id": "c", "predictions": "-1"}, ">= 0"),
        ({"correlation_id": "c", "predictions": "2.5"}, "not a valid integer"),
        ({"correlation_id": "c", "deadline_ms": "soon"}, "'deadline-ms' is not a valid int"),
        ({"correlation_id": "c", "reply_to": "bad topic!"}, "not a valid topic"),
    ],
)
def test_malformed_headers_are_invalid_requests(headers: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        p.parse_request("m", None, b"x", hdrs(**headers))
    assert fragment in info.value.message


def test_non_utf8_header() -> None:
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        p.parse_request("m", None, b"x", [("correlation-id", b"\xff\xfe")])


def test_reply_address_without_reply_to_is_the_results_topic() -> None:
    t = p.Topics()
    assert p.reply_address(t, "m", hdrs(correlation_id="c")) == ("tfstream.results.m", "c")
    assert p.reply_address(t, "m", hdrs(reply_to="r")) == ("r", None)
    assert p.reply_address(t, "m", [("reply-to", b"\xff")]) == ("tfstream.results.m", None)


def test_reply_json_has_every_protocol_field() -> None:
    data = p.detection_data([{"ObjectClassName": "x"}], "a.jpg", 640, 480)
    ok = p.Reply(
        "c1", "m", data=data, timing=p.Timing(1.0, 2.0, 3.0, 4), worker="w", model_version=3
    )
    body = json.loads(ok.to_json())
    assert body == {
        "protocol": 1,
        "correlation_id": "c1",
        "model": "m",
        "success": True,
        "data": {
            "bounding-boxes": [{"ObjectClassName": "x"}],
            "ImageName": "a.jpg",
            "width": 640,
            "height": 480,
        },
        "error": None,
        "timing": {"queue_ms": 1.0, "decode_ms": 2.0, "inference_ms": 3.0, "batch_size": 4},
        "worker": "w",
        "model_version": 3,
    }
    assert dict(ok.headers()) == {
        "correlation-id": b"c1",
        "content-type": b"application/json",
        "model-version": b"3",
    }
    assert p.Reply.from_json(ok.to_json()).model_version == 3
    failed = p.Reply("c2", "m", error=ImageTooLarge("too big"))
    again = p.Reply.from_json(failed.to_json())
    assert (
        not again.success
        and isinstance(again.error, ImageTooLarge)
        and again.error.message == "too big"
    )
    assert dict(failed.headers())["error-code"] == b"image_too_large"


def test_announcement_and_control_round_trip() -> None:
    facts = p.ModelFacts("m", "h", p.ModelState.READY, labels=["a"])
    a = p.Announcement(facts, worker="w")
    again = p.Announcement.from_json(a.to_json())
    assert again == a and again.alive()
    assert not p.Announcement(facts, worker="w", updated_ms=0).alive()
    assert not again.forgotten() and p.Announcement(facts, worker="w", updated_ms=0).forgotten()
    # The wire keeps its flat JSON, in the order readers in other languages saw so far
    # (a key added goes last).
    assert list(json.loads(a.to_json())) == [
        *("model", "worker", "state", "hash", "engine", "config", "labels", "label_hashes"),
        *("device", "error", "updated_ms", "ttl_ms", "version", "fingerprint", "versions"),
        *("forget_ms", "protocol"),
    ]
    old = json.loads(a.to_json())
    del old["forget_ms"]  # a worker of an older version
    assert p.Announcement.from_json(json.dumps(old).encode()).forget_ms == 3_600_000
    c = p.Control(p.ControlCommand.LOAD, "m", force=True, correlation_id="x", reply_to="r")
    assert p.Control.from_json(c.to_json()) == c
    with pytest.raises(InvalidRequest):
        p.Control.from_json(b'{"command": "explode"}')


@pytest.mark.parametrize(
    ("headers", "confidence", "predictions"),
    [
        ({"confidence": " 50\t", "predictions": "\r\n3 "}, 50.0, 3),  # whitespace around
        ({"confidence": "5e1", "predictions": "007"}, 50.0, 7),
        ({"confidence": "1.5E+1", "predictions": "0"}, 15.0, 0),
        ({"confidence": "", "predictions": "  "}, None, None),  # empty: as if absent
    ],
)
def test_number_syntax(
    headers: dict[str, str], confidence: float | None, predictions: int | None
) -> None:
    request = p.parse_request("m", None, b"x", hdrs(correlation_id=" c\t", **headers))
    assert (request.correlation_id, request.confidence, request.predictions) == (
        "c",
        confidence,
        predictions,
    )


def test_a_repeated_header_counts_once_with_its_last_value() -> None:
    headers = [("correlation-id", b"a"), ("confidence", b"99"), ("confidence", b"10")]
    assert p.parse_request("m", None, b"x", headers).confidence == 10.0


def test_dlq_reason_is_cut_at_a_character_boundary() -> None:
    from engines.errors import InvalidImage

    message = "é" * 2500  # 5000 bytes of 2-byte characters; the limit falls inside one
    reason = dict(p.dlq_headers([], InvalidImage(message), "t", 0, 1, "w"))[p.DLQ_REASON]
    assert len(reason) == p.DLQ_REASON_MAX_BYTES  # 4000 is even: 2000 whole characters
    assert p.truncate_utf8("a" + message, 4000) == ("a" + "é" * 1999).encode()  # 3999 bytes
    assert p.truncate_utf8("€€", 5) == "€".encode()  # 3-byte characters, never half of one


def test_conflate_header() -> None:
    req = p.Request(model="m", correlation_id="c", image=b"x", conflate=True)
    assert ("conflate", b"latest") in req.headers()
    assert p.parse_request("m", b"cam", b"x", req.headers()).conflate
    assert not p.parse_request("m", b"cam", b"x", hdrs(correlation_id="c")).conflate
    with pytest.raises(InvalidRequest, match="'conflate' must be 'latest'"):
        p.parse_request("m", b"cam", b"x", hdrs(correlation_id="c", conflate="oldest"))


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_trace_context_round_trips_through_headers() -> None:
    from opentelemetry import trace

    context = p.trace_context([("correlation-id", b"c"), ("traceparent", TRACEPARENT.encode())])
    span_context = trace.get_current_span(context).get_span_context()
    assert span_context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span_context.is_remote
    out = p.with_trace([("correlation-id", b"c"), ("traceparent", b"stale")], context)
    assert out == [("correlation-id", b"c"), ("traceparent", TRACEPARENT.encode())]


def test_bad_or_missing_trace_headers_change_nothing() -> None:
    from opentelemetry import trace

    for headers in ([], [("traceparent", b"garbage")], [("traceparent", b"\xff")]):
        context = p.trace_context(headers)
        assert not trace.get_current_span(context).get_span_context().is_valid
        assert p.with_trace([("a", b"1")], context) == [("a", b"1")]
