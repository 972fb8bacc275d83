"""The Parquet sink against the in-memory store: acknowledgement only after durability,
deterministic segments on replay, storage failures that stop and report instead of losing."""

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
from tollgate_analytics.sink import ParquetSink, SinkSettings
from tollgate_core.health import Health

TOPIC = "tollgate.logs"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sink_with(store: MemoryStore, **settings: Any) -> tuple[ParquetSink, Health, Clock]:
    health = Health()
    clock = Clock()
    sink = ParquetSink(
        store,
        SinkSettings(**{"max_records": 5, "retry_initial_s": 0.01, **settings}),
        health,
        clock=clock,
    )
    return sink, health, clock


async def feed(
    sink: ParquetSink,
    make_request: Callable[..., Any],
    offsets: range,
    acked: list[int],
    *,
    partition: int = 0,
    when: Callable[[int], datetime] | None = None,
) -> None:
    for offset in offsets:
        log, _ = make_request(offset, finished_at=when(offset) if when else None)
        await sink.add(
            TOPIC,
            partition,
            offset,
            dataset.log_row(log, partition, offset),
            size=100,
            ack=lambda o=offset: acked.append(o),
        )


def rows_in(store: MemoryStore) -> list[int]:
    offsets: list[int] = []
    for key, data in store.objects.items():
        if key.endswith(".parquet"):
            offsets += pq.read_table(io.BytesIO(data)).column("kafka_offset").to_pylist()
    return sorted(offsets)


async def test_records_are_acknowledged_only_when_their_segment_is_written(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    sink, health, clock = sink_with(store, max_age_s=30)
    acked: list[int] = []
    await feed(sink, make_request, range(7), acked)
    assert acked == [0, 1, 2, 3, 4]  # the first segment rolled at 5 records
    assert rows_in(store) == [0, 1, 2, 3, 4]
    clock.now = 31
    await sink.flush_due()  # the second rolls by age
    assert acked == list(range(7))
    assert rows_in(store) == list(range(7))
    assert sorted(k for k in store.objects if k.startswith("_segments")) == [
        dataset.marker_key(TOPIC, 0, 0, 4),
        dataset.marker_key(TOPIC, 0, 5, 6),
    ]
    assert health.ready


async def test_a_segment_spanning_two_hours_is_one_file_per_hour_with_the_same_range(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    sink, _, _ = sink_with(store)
    base = datetime(2026, 11, 22, 9, 59, 58, tzinfo=UTC)
    await feed(sink, make_request, range(5), [], when=lambda o: base + timedelta(seconds=o))
    name = dataset.file_name(TOPIC, 0, 0, 4)
    assert sorted(k for k in store.objects if k.endswith(".parquet")) == [
        f"logs/year=2026/month=11/day=22/hour=09/{name}",
        f"logs/year=2026/month=11/day=22/hour=10/{name}",
    ]


async def test_a_replay_after_a_crash_mid_segment_rewrites_the_same_files(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    sink, _, _ = sink_with(store)
    await feed(sink, make_request, range(5), [])
    # the crash: the marker and one file of segment 5..9 were written, not the other
    crashed = {k: v for k, v in store.objects.items()}
    await feed(sink, make_request, range(5, 10), [])
    complete = dict(store.objects)
    store.objects = crashed
    store.objects[dataset.marker_key(TOPIC, 0, 5, 9)] = complete[dataset.marker_key(TOPIC, 0, 5, 9)]

    # a new worker gets redelivered everything from offset 0 (nothing was committed), with
    # a larger roll size: the known segments still close where they closed before
    restarted, _, _ = sink_with(store, max_records=1000)
    acked: list[int] = []
    await feed(restarted, make_request, range(12), acked)
    assert acked == list(range(10))
    assert rows_in(store) == list(range(10))
    assert store.objects.keys() == complete.keys()


async def test_records_inside_a_committed_segment_are_skipped(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    sink, _, _ = sink_with(store)
    await feed(sink, make_request, range(10), [])
    # redelivery starting inside segment 5..9 (offsets up to 6 were committed)
    restarted, _, _ = sink_with(store)
    acked: list[int] = []
    await feed(restarted, make_request, range(7, 12), acked)
    assert acked == [7, 8, 9]
    assert rows_in(store) == list(range(10))


async def test_an_unwritable_store_stops_acknowledging_and_reports_not_ready(
    make_request: Callable[..., Any],
) -> None:
    store = MemoryStore()
    store.fail = "No space left on device"
    sink, health, _ = sink_with(store)
    acked: list[int] = []
    task = asyncio.create_task(feed(sink, make_request, range(10), acked))
    async with asyncio.timeout(10):
        while health.report()["storage"]["reason"] != "No space left on device":
            await asyncio.sleep(0.01)
    assert health.report()["storage"] == {"ready": False, "reason": "No space left on device"}
    await asyncio.sleep(0.1)
    assert acked == [] and not task.done()  # blocked, nothing acknowledged
    store.fail = None
    await asyncio.wait_for(task, 10)
    assert acked == list(range(10))
    assert rows_in(store) == list(range(10))
    assert health.ready


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
