from __future__ import annotations

from aiokafka import TopicPartition

from tollgate_core.bus.consumer import OffsetTracker

TP = TopicPartition("t", 0)


def test_commit_point_never_passes_an_unfinished_record() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.begin(TP, offset)
    tracker.done(TP, 11)
    tracker.done(TP, 12)
    assert tracker.to_commit() == {TP: 10}
    tracker.done(TP, 10)
    assert tracker.to_commit() == {TP: 13}


def test_only_moved_points_are_reported() -> None:
    tracker = OffsetTracker()
    tracker.begin(TP, 0)
    tracker.done(TP, 0)
    points = tracker.to_commit()
    tracker.committed(points)
    assert tracker.to_commit() == {}
    tracker.begin(TP, 1)
    assert tracker.to_commit() == {}  # still 1: the new record is not finished
    tracker.done(TP, 1)
    assert tracker.to_commit() == {TP: 2}


def test_forgotten_partitions_are_not_committed() -> None:
    tracker = OffsetTracker()
    tracker.begin(TP, 5)
    tracker.forget([TP])
    tracker.done(TP, 5)
    assert tracker.to_commit() == {}
    assert tracker.in_flight == 0
