"""The Parquet sink against the in-memory store: commits only after durability, deterministic
segments on replay, storage failures that stop and report instead of losing, and streams that
repeat or skip records."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tollgate_analytics import dataset
from tollgate_analytics.adapters.storage import LocalStore, MemoryStore
from tollgate_analytics.errors import StorageUnavailable
from tollgate_analytics.sink import MAX_SEEKS, SEEK_WAIT_S, ParquetSink, SinkSettings
from tollgate_core.health import Health

TOPIC = "tollgate.logs"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, store: MemoryStore, make_request: Callable[..., Any], **settings: Any):
        self.health = Health()
        self.clock = Clock()
        self.commits: list[int] = []
        self.make_request = make_request
        self.sink = ParquetSink(
            store,
            SinkSettings(
                **{"max_records": 5, "retry_initial_s": 0.01, "retry_max_s": 0.1, **settings}
            ),
            self.health,
            self.commit,
            clock=self.clock,
        )

    async def commit(self, topic: str, partition: int, next_offset: int) -> None:
        assert (topic, partition) == (TOPIC, 0)
        self.commits.append(next_offset)

    async def feed(
        self, offsets: Any, *, when: Callable[[int], datetime] | None = None
    ) -> list[int | None]:
        seeks = []
        for offset in offsets:
            log, _ = self.make_request(offset, finished_at=when(offset) if when else None)
            seeks.append(
                await self.sink.add(TOPIC, 0, offset, dataset.log_row(log, 0, offset), size=100)
            )
        return seeks


def rows_in(store: MemoryStore) -> list[int]:
    offsets: list[int] = []
    for key, data in store.objects.items():
        if key.endswith(".parquet"):
            offsets += pq.read_table(io.BytesIO(data)).column("kafka_offset").to_pylist()
    return sorted(offsets)


async def test_offsets_are_committed_only_when_their_segment_is_written(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request, max_age_s=30)
    await h.feed(range(7))
    assert h.commits == [5]  # the first segment rolled at 5 records
    assert rows_in(store) == [0, 1, 2, 3, 4]
    h.clock.now = 31
    await h.sink.flush_due()  # the second rolls by age
    assert h.commits == [5, 7]
    assert rows_in(store) == list(range(7))
    assert sorted(k for k in store.objects if k.startswith("_segments")) == [
        dataset.marker_key(TOPIC, 0, 0, 4),
        dataset.marker_key(TOPIC, 0, 5, 6),
    ]
    assert h.health.ready


async def test_a_segment_spanning_two_hours_is_one_file_per_hour_with_the_same_range(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request)
    base = datetime(2026, 11, 22, 9, 59, 58, tzinfo=UTC)
    await h.feed(range(5), when=lambda o: base + timedelta(seconds=o))
    name = dataset.file_name(TOPIC, 0, 0, 4)
    assert sorted(k for k in store.objects if k.endswith(".parquet")) == [
        f"logs/year=2026/month=11/day=22/hour=09/{name}",
        f"logs/year=2026/month=11/day=22/hour=10/{name}",
    ]


async def test_a_replay_after_a_crash_mid_segment_rewrites_the_same_files(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request)
    await h.feed(range(5))
    crashed = dict(store.objects)
    await h.feed(range(5, 10))
    complete = dict(store.objects)
    # the crash: segment 5..9's marker was written, none of its files
    store.objects = crashed
    marker = dataset.marker_key(TOPIC, 0, 5, 9)
    store.objects[marker] = complete[marker]

    # a new worker re-reads from offset 0 (no commit reached Kafka), with a larger roll
    # size: the known segments still close where they closed before
    again = Harness(store, make_request, max_records=1000)
    await again.feed(range(12))
    assert again.commits == [5, 10]
    assert rows_in(store) == list(range(10))
    assert store.objects.keys() == complete.keys()


async def test_records_inside_a_committed_segment_are_skipped(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    await Harness(store, make_request).feed(range(10))
    # redelivery from inside segment 5..9: the segment was complete, or 5 was not committed
    again = Harness(store, make_request)
    await again.feed(range(7, 12))
    assert again.commits == []
    assert rows_in(store) == list(range(10))


async def test_repeated_records_are_ignored_and_skipped_ones_are_fetched_again(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request, max_records=3)
    assert await h.feed([0, 1, 1, 0, 2]) == [None] * 5
    # the stream jumps from 2 to 6: seek back to 3; what was buffered before the seek is
    # ignored, then 3.. arrive again
    assert await h.feed([6, 7]) == [3, None]
    assert await h.feed([3, 4, 5, 6, 7, 8]) == [None] * 6
    assert rows_in(store) == list(range(9))
    assert h.commits == [3, 6, 9]


async def test_a_gap_that_stays_after_several_seeks_is_accepted(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request, max_records=2)
    await h.feed([0, 1])
    for _ in range(MAX_SEEKS):
        assert await h.feed([9]) == [2]
        h.clock.now += SEEK_WAIT_S
    assert await h.feed([9, 10]) == [None, None]  # offsets 2..8 were deleted by retention
    assert rows_in(store) == [0, 1, 9, 10]


async def test_an_unwritable_store_stops_committing_and_reports_not_ready(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    store.fail = "No space left on device"
    h = Harness(store, make_request)
    task = asyncio.create_task(h.feed(range(10)))
    async with asyncio.timeout(10):
        while h.health.report()["storage"]["reason"] != "No space left on device":
            await asyncio.sleep(0.01)
    assert not h.health.ready
    await asyncio.sleep(0.1)
    assert h.commits == [] and not task.done()  # blocked, nothing committed
    store.fail = None
    await asyncio.wait_for(task, 10)
    assert h.commits == [5, 10]
    assert rows_in(store) == list(range(10))
    assert h.health.ready


async def test_the_local_store_translates_disk_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = LocalStore(blocker / "dataset")
    with pytest.raises(StorageUnavailable):
        await store.put("logs/x.parquet", b"data")
    with pytest.raises(StorageUnavailable):
        await store.check()
    good = LocalStore(tmp_path / "dataset")
    await good.put("logs/year=2026/x.parquet", b"data")
    await good.put("logs/year=2026/x.parquet", b"again")
    assert await good.list_keys("logs/") == ["logs/year=2026/x.parquet"]
    assert (tmp_path / "dataset/logs/year=2026/x.parquet").read_bytes() == b"again"


async def test_a_restart_that_resumes_past_the_durable_end_seeks_back(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    await Harness(store, make_request).feed(range(5))  # 0..4 durable, committed 5
    again = Harness(store, make_request)
    # the stream's first record after the start is 6: offset 5 was dropped on the way
    assert await again.feed([6]) == [5]
    assert await again.feed([5, 6, 7, 8, 9]) == [None] * 5
    assert rows_in(store) == list(range(10))
    assert again.commits == [10]


async def test_a_rewind_before_the_open_segment_starts_it_over(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request)
    await h.feed(range(7))  # 0..4 written, 5..6 open
    # a seek to the committed offset 3 (say after a rebalance) replays 3..
    await h.feed(range(3, 10))
    assert rows_in(store) == list(range(10))
    assert h.commits == [5, 10]


async def test_a_segment_of_dead_letters_only_leaves_a_marker(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request, max_records=2)
    for offset in (0, 1):
        await h.sink.add(TOPIC, 0, offset, None, size=10)
    assert h.commits == [2]
    assert list(store.objects) == [dataset.marker_key(TOPIC, 0, 0, 1)]


async def test_a_seek_whose_records_do_not_come_is_repeated(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request)
    await h.feed([0, 1])
    assert await h.feed([3]) == [2]
    assert h.sink.due_seeks() == []
    h.clock.now += SEEK_WAIT_S
    assert h.sink.due_seeks() == [(TOPIC, 0, 2)]
    await h.feed([2, 3, 4])
    assert h.sink.due_seeks() == []
    assert rows_in(store) == list(range(5))
