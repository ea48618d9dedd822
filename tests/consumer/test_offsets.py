from consumer.offsets import OffsetTracker


def test_commits_only_up_to_the_first_unfinished_offset() -> None:
    t = OffsetTracker()
    for offset in (10, 11, 12):
        t.track("p0", offset)
    assert t.commit_points() == {"p0": 10}
    t.finish("p0", 12)
    t.finish("p0", 11)
    assert t.commit_points() == {"p0": 10}  # 10 is still running
    t.finish("p0", 10)
    assert t.commit_points() == {"p0": 13}


def test_commit_points_only_report_progress() -> None:
    t = OffsetTracker()
    t.track("p0", 0)
    t.finish("p0", 0)
    points = t.commit_points()
    assert points == {"p0": 1}
    t.committed(points)
    assert t.commit_points() == {}
    t.track("p0", 1)
    assert t.commit_points() == {}
    t.finish("p0", 1)
    assert t.commit_points() == {"p0": 2}


def test_partitions_are_independent_and_forgettable() -> None:
    t = OffsetTracker()
    t.track("a", 5)
    t.track("b", 7)
    t.finish("b", 7)
    assert t.commit_points() == {"a": 5, "b": 8}
    assert t.pending() == 1 and t.pending(["b"]) == 0
    t.forget(["a"])
    t.finish("a", 5)  # a late answer for a revoked partition is ignored
    assert t.commit_points(["a", "b"]) == {"b": 8}
