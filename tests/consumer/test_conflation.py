"""Latest frame wins: the bookkeeping alone (the worker's behaviour is in
test_conflation_kafka.py against a real broker)."""

from __future__ import annotations

from consumer.conflation import LatestWins, conflation_key
from consumer.settings import WorkerSettings
from engines.errors import Superseded, TfstreamError


def test_only_keyed_requests_that_ask_or_whose_topic_is_conflated_take_part() -> None:
    assert conflation_key("t", b"cam", requested=True, whole_topic=False) == ("t", b"cam")
    assert conflation_key("t", b"cam", requested=False, whole_topic=True) == ("t", b"cam")
    assert conflation_key("t", b"cam", requested=False, whole_topic=False) is None
    assert conflation_key("t", None, requested=True, whole_topic=True) is None


def test_a_newer_arrival_supersedes_the_waiting_one_of_its_group_only() -> None:
    waiting: LatestWins[str] = LatestWins()
    a, b = ("t", b"a"), ("t", b"b")
    assert waiting.arrive(a, "a1") is None
    assert waiting.arrive(b, "b1") is None
    assert waiting.arrive(None, "plain") is None
    assert waiting.arrive(a, "a2") == "a1"
    assert waiting.arrive(a, "a3") == "a2"
    assert waiting.arrive(None, "plain2") is None  # no group: never supersedes
    assert waiting.arrive(("other-topic", b"a"), "x1") is None  # same key, other model
    assert len(waiting) == 3


def test_a_started_job_is_never_superseded() -> None:
    waiting: LatestWins[str] = LatestWins()
    g = ("t", b"cam")
    waiting.arrive(g, "f1")
    waiting.start(g, "f1")
    assert waiting.arrive(g, "f2") is None  # f1 runs anyway
    waiting.start(g, "f1")  # an old start does not drop the newer waiting frame
    assert waiting.arrive(g, "f3") == "f2"


def test_ten_frames_at_once_leave_the_newest() -> None:
    waiting: LatestWins[int] = LatestWins()
    superseded = [waiting.arrive(("t", b"cam"), i) for i in range(10)]
    assert superseded == [None, *range(9)]


def test_worker_setting_for_whole_models() -> None:
    assert not WorkerSettings().conflates("m")
    assert WorkerSettings(conflate_models="a, m").conflates("m")
    assert not WorkerSettings(conflate_models="a").conflates("m")
    assert WorkerSettings(conflate_models="all").conflates("m")


def test_superseded_is_a_stable_code_that_skips_the_dlq() -> None:
    error = TfstreamError.from_dict({"code": "superseded", "message": "newer frame"})
    assert isinstance(error, Superseded) and error.code == "superseded"
    assert not error.dead_letter and not error.retriable
