"""The Parquet sink: buffers records per topic partition into segments and writes each
segment as Parquet files, durably, before committing its offsets.

Exactly-once in effect, across crashes and restarts:

* a partition's offset is committed (through ``commit``) only after the segment ending there
  is durable: marker written, then every file, each atomically; nothing else commits;
* a segment's marker is written before its files and names its offset range, so when a
  restart re-reads a range whose files may be partly written, the sink closes the segment
  at the same last offset and rewrites the same file names with the same rows — a rewrite,
  not a duplicate; records inside a range whose first offset was already committed are
  skipped, as that segment was complete;
* while the storage fails (full disk, S3 unreachable) the flush retries with backoff, the
  stream stops, nothing is committed and the ``storage`` readiness check is failing;
* records a stream hands over twice are ignored, and records it skips are fetched again by
  seeking back, so a partition's segments always hold a contiguous run of offsets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from prometheus_client import Counter, Histogram

from tollgate_analytics import dataset
from tollgate_analytics.adapters.storage import ObjectStore
from tollgate_analytics.errors import StorageUnavailable
from tollgate_core.health import Health

logger = logging.getLogger(__name__)

FILES = Counter("tollgate_analytics_files_written_total", "Parquet files written", ["table"])
ROWS = Counter("tollgate_analytics_rows_written_total", "Rows written to Parquet", ["table"])
STORAGE_ERRORS = Counter(
    "tollgate_analytics_storage_errors_total", "Failed writes or listings of the dataset"
)
DUPLICATES = Counter(
    "tollgate_analytics_duplicate_deliveries_total",
    "Records the stream delivered again within one run, ignored",
)
SKIPPED = Counter(
    "tollgate_analytics_replayed_skipped_total",
    "Redelivered records already in a durable segment",
)
FLUSH_SECONDS = Histogram("tollgate_analytics_segment_flush_seconds", "Time to write a segment")

#: ``commit(topic, partition, next_offset)``: every record before ``next_offset`` is durable
Commit = Callable[[str, int, int], Awaitable[None]]
T = TypeVar("T")
STORAGE_CHECK = "storage"
MAX_SEEKS = 12
SEEK_WAIT_S = 5.0
_ACCEPT = -1


@dataclass(frozen=True, slots=True)
class SinkSettings:
    max_bytes: int = 64 * 1024 * 1024
    max_records: int = 100_000
    max_age_s: float = 10.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0


@dataclass
class _Segment:
    topic: str
    partition: int
    first: int
    opened_at: float
    pinned_last: int | None = None
    last: int = -1
    size: int = 0
    records: int = 0
    rows: dict[tuple[str, datetime], list[dict[str, object]]] = field(default_factory=dict)
    tables: dict[str, dataset.Table] = field(default_factory=dict)


class ParquetSink:
    def __init__(
        self,
        store: ObjectStore,
        settings: SinkSettings,
        health: Health,
        commit: Commit,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings
        self._health = health
        self._clock = clock
        self._commit = commit
        self._expected: dict[tuple[str, int], int] = {}
        self._seeks: dict[tuple[str, int], tuple[int, int, float]] = {}
        self._open: dict[tuple[str, int], _Segment] = {}
        self._markers: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        health.register(STORAGE_CHECK, "not checked yet")

    @property
    def store(self) -> ObjectStore:
        return self._store

    async def check(self) -> None:
        """Probe the storage once and report it on readiness."""
        try:
            await self._store.check()
        except StorageUnavailable as exc:
            self._health.fail(STORAGE_CHECK, exc.message)
            raise
        self._health.ok(STORAGE_CHECK)

    async def add(
        self,
        topic: str,
        partition: int,
        offset: int,
        row: dataset.Row | None,
        *,
        size: int,
        on_accept: Callable[[], object] | None = None,
    ) -> int | None:
        """Take record ``offset`` of ``topic``/``partition``; ``row`` None for a record that
        holds no row (dead-lettered); ``on_accept`` runs when the record is taken in offset
        order (the aggregates count it then). Returns an offset to seek the partition back to
        when the stream skipped records, else None.

        The stream must hand over each partition's records in offset order. A record already
        seen is ignored. When records are missing before ``offset``, the record is refused
        and the caller seeks back to the first missing one; a gap still there after a few
        seeks is a real one (records deleted by retention) and is accepted.
        """
        async with self._lock:
            key = (topic, partition)
            markers = await self._load_markers(topic, partition)
            expected = self._expected.get(key)
            if expected is None and markers:
                # first record since start or assignment: the stream must resume at or
                # before the end of the last durable segment
                expected = max(last for _, last in markers) + 1
                if offset <= expected:
                    expected = None
            if expected is not None and offset < expected:
                segment = self._open.get(key)
                if segment is not None and offset >= segment.first:
                    DUPLICATES.inc()
                    return None
                # the stream went back before the open segment (a seek to the committed
                # offset): drop the segment, its records come again
                self._open.pop(key, None)
            elif expected is not None and offset > expected:
                seek = self._seek_back(key, expected, offset)
                if seek is not _ACCEPT:
                    return seek
            self._seeks.pop(key, None)
            self._expected[key] = offset + 1
            if on_accept is not None:
                on_accept()  # in offset order, once per record (bar restarts)
            segment = self._open.get(key)
            if (
                segment is not None
                and segment.pinned_last is not None
                and offset > segment.pinned_last
            ):
                await self._flush(key)
                segment = None
            if segment is None:
                segment = await self._open_segment(topic, partition, offset)
                if segment is None:
                    SKIPPED.inc()
                    return None
            segment.last = offset
            segment.records += 1
            segment.size += size
            if row is not None:
                segment.tables[row.table.name] = row.table
                segment.rows.setdefault((row.table.name, row.hour), []).append(row.values)
            if segment.pinned_last is not None:
                if offset >= segment.pinned_last:
                    await self._flush(key)
            elif (
                segment.size >= self._settings.max_bytes
                or segment.records >= self._settings.max_records
            ):
                await self._flush(key)
            return None

    def _seek_back(self, key: tuple[str, int], expected: int, offset: int) -> int | None:
        """Ask for a seek back to ``expected`` (again after ``SEEK_WAIT_S``, at most
        ``MAX_SEEKS`` times); records that arrive meanwhile were buffered before the seek."""
        now = self._clock()
        previous = self._seeks.get(key)
        count, at = (
            (previous[1], previous[2]) if previous and previous[0] == expected else (0, None)
        )
        if count < MAX_SEEKS:
            if at is None or now - at >= SEEK_WAIT_S:
                self._seeks[key] = (expected, count + 1, now)
                logger.warning(
                    "%s/%d: got offset %d, expected %d; seeking back", *key, offset, expected
                )
                return expected
            return None
        logger.error("%s/%d: offsets %d..%d are gone; moving on", *key, expected, offset - 1)
        return _ACCEPT

    def due_seeks(self) -> list[tuple[str, int, int]]:
        """Seeks to repeat (called by a timer): a seek is repeated when the records it asked
        for have not come within ``SEEK_WAIT_S`` (the consumer may drop re-fetched records
        that are behind the position it had already buffered)."""
        now = self._clock()
        due = []
        for key, (expected, count, at) in list(self._seeks.items()):
            if count < MAX_SEEKS and now - at >= SEEK_WAIT_S:
                self._seeks[key] = (expected, count + 1, now)
                logger.warning("%s/%d: still waiting for offset %d; seeking again", *key, expected)
                due.append((key[0], key[1], expected))
        return due

    async def flush_due(self) -> None:
        """Roll the segments older than ``max_age_s`` (called by a timer)."""
        async with self._lock:
            now = self._clock()
            for key, segment in list(self._open.items()):
                if (
                    segment.pinned_last is None
                    and now - segment.opened_at >= self._settings.max_age_s
                ):
                    await self._flush(key)

    async def flush_all(self) -> None:
        """Roll every unpinned segment (on shutdown, in tests)."""
        async with self._lock:
            for key, segment in list(self._open.items()):
                if segment.pinned_last is None:
                    await self._flush(key)

    def discard(self, topic: str, partition: int) -> None:
        """Forget a revoked partition: its uncommitted records go to the next owner."""
        key = (topic, partition)
        self._open.pop(key, None)
        self._markers.pop(key, None)
        self._expected.pop(key, None)
        self._seeks.pop(key, None)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def open_records(self) -> int:
        return sum(s.records for s in self._open.values())

    # --- internals ------------------------------------------------------------------------

    async def _load_markers(self, topic: str, partition: int) -> list[tuple[int, int]]:
        key = (topic, partition)
        if key not in self._markers:
            prefix = dataset.marker_prefix(topic, partition)
            keys = await self._retrying(f"list {prefix}", lambda: self._store.list_keys(prefix))
            self._markers[key] = [dataset.parse_marker(k) for k in keys]
        return self._markers[key]

    async def _open_segment(self, topic: str, partition: int, offset: int) -> _Segment | None:
        key = (topic, partition)
        pinned: int | None = None
        for first, last in self._markers[key]:
            if first == offset:
                pinned = last
            elif first < offset <= last:
                return None  # inside a segment whose start was committed: it is durable
        segment = _Segment(topic, partition, offset, self._clock(), pinned_last=pinned)
        self._open[key] = segment
        return segment

    async def _flush(self, key: tuple[str, int]) -> None:
        segment = self._open.pop(key)
        started = time.perf_counter()
        marker = dataset.marker_key(segment.topic, segment.partition, segment.first, segment.last)
        name = dataset.file_name(segment.topic, segment.partition, segment.first, segment.last)
        files = {
            f"{dataset.partition_path(segment.tables[table], hour)}/{name}": (table, rows)
            for (table, hour), rows in segment.rows.items()
        }
        if segment.pinned_last is None:
            # also for a segment without rows (all dead-lettered): the markers tell a
            # restarted worker where the durable offsets end
            body = json.dumps({"files": sorted(files), "records": segment.records}).encode()
            await self._retrying(f"write {marker}", lambda: self._store.put(marker, body))
            self._markers.setdefault(key, []).append((segment.first, segment.last))
        if files:
            for path, (table, rows) in files.items():
                await self._write(path, dataset.to_parquet(segment.tables[table], rows))
                FILES.labels(table).inc()
                ROWS.labels(table).inc(len(rows))
            FLUSH_SECONDS.observe(time.perf_counter() - started)
            logger.info(
                "wrote %s/%d offsets %d-%d: %d file(s)",
                segment.topic,
                segment.partition,
                segment.first,
                segment.last,
                len(files),
            )
        await self._commit(segment.topic, segment.partition, segment.last + 1)

    async def _write(self, path: str, data: bytes) -> None:
        await self._retrying(f"write {path}", lambda: self._store.put(path, data))

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        delay = self._settings.retry_initial_s
        while True:
            try:
                result = await call()
            except StorageUnavailable as exc:
                STORAGE_ERRORS.inc()
                self._health.fail(STORAGE_CHECK, exc.message)
                logger.warning("cannot %s: %s; retrying in %.1fs", what, exc.message, delay)
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    delay = min(delay * 2, self._settings.retry_max_s)
                    continue
                raise
            self._health.ok(STORAGE_CHECK)
            return result
