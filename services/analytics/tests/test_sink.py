"""The Parquet sink against the in-memory store: commits only after durability, deterministic
segments on replay, storage failures that stop and report instead of losing, streams that
repeat or skip records, gaps accepted only when the log start proves them deleted, and rows
their columns cannot hold."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

from tollgate_analytics import dataset
from tollgate_analytics.adapters.storage import LocalStore, MemoryStore
from tollgate_analytics.errors import RowNotRepresentable, StorageUnavailable
from tollgate_analytics.sink import (
    REPORT_EVERY_SEEKS,
    SEEK_WAIT_S,
    Hooks,
    ParquetSink,
    SinkSettings,
)
from tollgate_core.errors import DependencyUnavailable
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
        #: the partition's earliest offset in Kafka; None: it cannot be read
        self.log_start: int | None = 0
        self.sink = ParquetSink(
            store,
            SinkSettings(
                **{"max_records": 5, "retry_initial_s": 0.01, "retry_max_s": 0.1, **settings}
            ),
            self.health,
            self.commit,
            log_start=self.read_log_start,
            clock=self.clock,
        )

    async def commit(self, topic: str, partition: int, next_offset: int) -> None:
        assert (topic, partition) == (TOPIC, 0)
        self.commits.append(next_offset)

    async def read_log_start(self, topic: str, partition: int) -> int:
        assert (topic, partition) == (TOPIC, 0)
        if self.log_start is None:
            raise DependencyUnavailable("broker unreachable")
        return self.log_start

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


def awaiting() -> float | None:
    return REGISTRY.get_sample_value("tollgate_analytics_partitions_awaiting_offsets")


def deleted() -> float:
    value = REGISTRY.get_sample_value("tollgate_analytics_offsets_deleted_total", {"topic": TOPIC})
    return value or 0.0


async def test_a_gap_the_log_still_holds_is_never_accepted(
    make_request: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request, max_records=2)
    await h.feed([0, 1])
    h.log_start = 0  # nothing was deleted: offsets 2..8 must come
    assert await h.feed([9]) == [2]
    for _ in range(3 * REPORT_EVERY_SEEKS):
        # records that come meanwhile were buffered before the seek: refused
        assert await h.feed([9, 10]) == [None, None]
        assert await h.sink.due_seeks() == []  # not yet due
        h.clock.now += SEEK_WAIT_S
        assert await h.sink.due_seeks() == [(TOPIC, 0, 2)]
    assert awaiting() == 1
    assert h.commits == [2] and rows_in(store) == [0, 1]
    assert "offset 2 still missing" in caplog.text and "was not deleted" in caplog.text
    await h.feed(range(2, 11))
    assert awaiting() == 0
    assert await h.sink.due_seeks() == []
    assert rows_in(store) == list(range(10))  # 10 is in the open segment
    assert h.commits == [2, 4, 6, 8, 10]


async def test_a_gap_before_the_log_start_is_accepted_as_deleted(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request, max_records=2)
    await h.feed([0, 1])
    before = deleted()
    assert await h.feed([9]) == [2]
    h.log_start = 9  # retention deleted 2..8 before they were read
    h.clock.now += SEEK_WAIT_S
    assert await h.sink.due_seeks() == [(TOPIC, 0, 9)]
    assert await h.feed([9, 10]) == [None, None]
    assert rows_in(store) == [0, 1, 9, 10]
    assert h.commits == [2, 11]
    assert deleted() - before == 7
    assert awaiting() == 0


async def test_a_log_start_inside_the_gap_is_where_the_sink_resumes(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request, max_records=2)
    await h.feed([0, 1])
    before = deleted()
    assert await h.feed([9]) == [2]
    h.log_start = 5  # 2..4 are gone, 5..8 are still there
    h.clock.now += SEEK_WAIT_S
    assert await h.sink.due_seeks() == [(TOPIC, 0, 5)]
    assert await h.feed([9]) == [None]  # fetched before that seek
    assert await h.feed([5, 6, 7, 8, 9]) == [None] * 5
    assert rows_in(store) == [0, 1, 5, 6, 7, 8]  # 9 is in the open segment
    assert deleted() - before == 3


async def test_a_log_start_that_cannot_be_read_keeps_the_sink_waiting(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request, max_records=2)
    await h.feed([0, 1])
    h.log_start = None
    assert await h.feed([9]) == [2]
    for _ in range(2 * REPORT_EVERY_SEEKS):
        h.clock.now += SEEK_WAIT_S
        assert await h.sink.due_seeks() == [(TOPIC, 0, 2)]
        assert await h.feed([9]) == [None]
    assert rows_in(store) == [0, 1] and awaiting() == 1
    h.log_start = 9
    h.clock.now += SEEK_WAIT_S
    assert await h.sink.due_seeks() == [(TOPIC, 0, 9)]
    assert await h.feed([9]) == [None]
    assert awaiting() == 0


async def test_a_sink_without_a_log_start_never_accepts_a_gap(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    commits: list[int] = []

    async def commit(topic: str, partition: int, next_offset: int) -> None:
        commits.append(next_offset)

    sink = ParquetSink(store, SinkSettings(max_records=2), Health(), commit, clock=lambda: now)
    now = 0.0
    for offset in (0, 1):
        log, _ = make_request(offset)
        await sink.add(TOPIC, 0, offset, dataset.log_row(log, 0, offset), size=1)
    log, _ = make_request(9)
    assert await sink.add(TOPIC, 0, 9, dataset.log_row(log, 0, 9), size=1) == 2
    for _ in range(3 * REPORT_EVERY_SEEKS):
        now += SEEK_WAIT_S
        assert await sink.due_seeks() == [(TOPIC, 0, 2)]
    assert commits == [2]


async def test_a_cost_is_rounded_half_even_and_a_value_out_of_range_is_rejected(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request, max_records=6)
    accepted: list[int] = []
    rejected: list[tuple[int, str]] = []
    log, usage = make_request(0)
    records = [
        dataset.log_row(log.model_copy(update={"cost_usd": Decimal("0.000000085")}), 0, 0),
        dataset.log_row(log.model_copy(update={"cost_usd": Decimal("0.000000075")}), 0, 1),
        dataset.log_row(log.model_copy(update={"retries": 2**31}), 0, 2),
        dataset.usage_row(usage.model_copy(update={"cost_usd": Decimal("1.2345678949")}), 0, 3),
        dataset.usage_row(usage.model_copy(update={"cost_usd": Decimal("1E+10")}), 0, 4),
        dataset.log_row(log.model_copy(update={"time_to_first_token_ms": 2**63}), 0, 5),
    ]
    for offset, row in enumerate(records):

        async def reject(exc: RowNotRepresentable, offset: int = offset) -> None:
            rejected.append((offset, exc.message))

        assert (
            await h.sink.add(
                TOPIC,
                0,
                offset,
                row,
                size=100,
                hooks=Hooks(
                    on_accept=lambda offset=offset: accepted.append(offset), on_reject=reject
                ),
            )
            is None
        )
    assert h.commits == [6]  # the rejected records are committed with their segment
    assert accepted == [0, 1, 3]
    assert [o for o, _ in rejected] == [2, 4, 5]
    assert "retries = 2147483648" in rejected[0][1]
    assert "cost_usd = 1E+10" in rejected[1][1]
    costs: dict[int, Decimal] = {}
    for key, data in store.objects.items():
        if key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
            costs |= dict(
                zip(
                    table.column("kafka_offset").to_pylist(),
                    table.column("cost_usd").to_pylist(),
                    strict=True,
                )
            )
    # half-even: ...8|5 stays 8, ...7|5 goes to 8; 1.23456789|49 rounds down
    assert costs == {0: Decimal("0.00000008"), 1: Decimal("0.00000008"), 3: Decimal("1.23456789")}


async def test_a_segment_that_cannot_be_encoded_is_kept_and_retried(
    make_request: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request)
    broken = True
    encode = dataset.to_parquet

    def flaky(table: dataset.Table, rows: list[dict[str, Any]]) -> bytes:
        if broken:
            raise RuntimeError("encoder bug")
        return encode(table, rows)

    monkeypatch.setattr(dataset, "to_parquet", flaky)
    task = asyncio.create_task(h.feed(range(10)))
    async with asyncio.timeout(10):
        while "segments" not in h.health.report():
            await asyncio.sleep(0.01)
    assert "encoder bug" in str(h.health.report()["segments"]["reason"])
    assert not h.health.ready
    await asyncio.sleep(0.1)
    assert not task.done() and h.commits == []
    assert store.objects == {}  # not even the marker: nothing announces the segment
    broken = False
    await asyncio.wait_for(task, 10)
    assert h.commits == [5, 10]
    assert rows_in(store) == list(range(10))
    assert h.health.ready


async def test_a_segment_rolls_when_its_input_reaches_max_bytes(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    h = Harness(store, make_request, max_records=1000, max_bytes=250, max_age_s=30)
    await h.feed(range(7))  # 100 bytes each: 3 records reach 250
    assert h.commits == [3, 6]
    assert rows_in(store) == list(range(6))
    assert sorted(k for k in store.objects if k.startswith("_segments")) == [
        dataset.marker_key(TOPIC, 0, 0, 2),
        dataset.marker_key(TOPIC, 0, 3, 5),
    ]


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
    assert await h.sink.due_seeks() == []
    h.clock.now += SEEK_WAIT_S
    assert await h.sink.due_seeks() == [(TOPIC, 0, 2)]
    await h.feed([2, 3, 4])
    assert await h.sink.due_seeks() == []
    assert rows_in(store) == list(range(5))
