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
  seeking back, so a partition's segments always hold a contiguous run of offsets; a gap is
  accepted only when the partition's log start (``log_start``) has moved past it, which
  proves the records were deleted (retention) before they were read;
* a row is checked against its table's schema when it is taken (``dataset.conform``), and
  one its columns cannot hold is handed to ``on_reject`` (dead-lettered), so writing a
  segment does not fail for its data; if encoding fails anyway, the segment is kept, the
  ``segments`` readiness check fails and the flush retries, as for a storage failure.
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

from prometheus_client import Counter, Gauge, Histogram

from tollgate_analytics import dataset
from tollgate_analytics.adapters.storage import ObjectStore
from tollgate_analytics.errors import RowNotRepresentable, StorageUnavailable
from tollgate_core.errors import DependencyUnavailable
from tollgate_core.health import Health
from tollgate_core.retry import Backoff

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
AWAITING = Gauge(
    "tollgate_analytics_partitions_awaiting_offsets",
    "Partitions whose stream skipped offsets the sink is still seeking back for",
)
DELETED = Counter(
    "tollgate_analytics_offsets_deleted_total",
    "Offsets skipped because the partition's log start had passed them (deleted unread)",
    ["topic"],
)

#: ``commit(topic, partition, next_offset)``: every record before ``next_offset`` is durable
Commit = Callable[[str, int, int], Awaitable[None]]
#: ``log_start(topic, partition)``: the partition's earliest offset still in Kafka; raises
#: DependencyUnavailable when it cannot be read
LogStart = Callable[[str, int], Awaitable[int]]
#: ``on_reject(error)``: the record's row cannot be stored; dead-letter the record
Reject = Callable[[RowNotRepresentable], Awaitable[object]]
T = TypeVar("T")
STORAGE_CHECK = "storage"
SEGMENTS_CHECK = "segments"
SEEK_WAIT_S = 5.0
#: a wait for missing offsets is logged again every this many seeks (a minute)
REPORT_EVERY_SEEKS = 12
LOG_START_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class SinkSettings:
    max_bytes: int = 64 * 1024 * 1024
    max_records: int = 100_000
    max_age_s: float = 10.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0


@dataclass
class _Wait:
    """Offsets missing from a partition's stream: seeking back to ``expected``."""

    expected: int
    since: float
    at: float  # the last seek
    seeks: int


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

    def append(self, offset: int, row: dataset.Row | None, size: int) -> None:
        """Record ``offset``, ``size`` bytes on the wire, with its row unless it has none."""
        self.last = offset
        self.records += 1
        self.size += size
        if row is not None:
            self.tables[row.table.name] = row.table
            self.rows.setdefault((row.table.name, row.hour), []).append(row.values)


class ParquetSink:
    def __init__(
        self,
        store: ObjectStore,
        settings: SinkSettings,
        health: Health,
        commit: Commit,
        *,
        log_start: LogStart | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``log_start`` None: no gap is ever accepted (the sink seeks back until the
        missing records come)."""
        self._store = store
        self._settings = settings
        self._health = health
        self._clock = clock
        self._commit = commit
        self._log_start = log_start
        self._expected: dict[tuple[str, int], int] = {}
        self._waits: dict[tuple[str, int], _Wait] = {}
        self._encode_failing = False
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
        on_reject: Reject | None = None,
    ) -> int | None:
        """Take record ``offset`` of ``topic``/``partition``; ``row`` None for a record that
        holds no row (dead-lettered); ``on_accept`` runs when the record is taken in offset
        order (the aggregates count it then); ``on_reject`` runs instead, once the record is
        in a segment, when a value of ``row`` does not fit its column (the record is then
        kept without a row). Returns an offset to seek the partition back to when the stream
        skipped records, else None.

        The stream must hand over each partition's records in offset order. A record already
        seen is ignored. When records are missing before ``offset``, the record is refused
        and the caller seeks back to the first missing one (``due_seeks`` repeats the seek
        until they come); the gap is accepted only once the partition's log start is past
        it (the records were deleted before they were read).
        """
        rejected: RowNotRepresentable | None = None
        if row is not None:
            try:
                row = dataset.conform(row)
            except RowNotRepresentable as exc:
                row, rejected = None, exc
        async with self._lock:
            key = (topic, partition)
            take, answer = await self._in_order(key, offset)
            if not take:
                return answer
            if on_accept is not None and rejected is None:
                on_accept()  # in offset order, once per record (bar restarts)
            segment = await self._segment_for(key, offset)
            if segment is None:
                SKIPPED.inc()
                return None
            if rejected is not None:
                if on_reject is not None:
                    await on_reject(rejected)
                else:
                    logger.warning("%s/%d@%d: %s", topic, partition, offset, rejected.message)
            segment.append(offset, row, size)
            if self._full(segment, offset):
                await self._flush(key)
            return None

    async def _in_order(self, key: tuple[str, int], offset: int) -> tuple[bool, int | None]:
        """Whether record ``offset`` is to be taken (the next one of its partition, which
        then expects the one after it), and otherwise what :meth:`add` answers: None for a
        duplicate, or the offset to seek back to when records before it are missing."""
        markers = await self._load_markers(*key)
        expected = self._expected.get(key)
        if expected is None and markers:
            # first record since start or assignment: the stream must resume at or before
            # the end of the last durable segment
            expected = max(last for _, last in markers) + 1
            if offset <= expected:
                expected = None
        if expected is not None and offset < expected:
            segment = self._open.get(key)
            if segment is not None and offset >= segment.first:
                DUPLICATES.inc()
                return False, None
            # the stream went back before the open segment (a seek to the committed offset):
            # drop the segment, its records come again
            self._open.pop(key, None)
        elif expected is not None and offset > expected:
            return False, self._seek_back(key, expected, offset)
        self._end_wait(key)
        self._expected[key] = offset + 1
        return True, None

    async def _segment_for(self, key: tuple[str, int], offset: int) -> _Segment | None:
        """The open segment record ``offset`` goes into (a pinned one it is past is written
        first), or None when the record is already in a durable segment."""
        segment = self._open.get(key)
        if segment is not None and segment.pinned_last is not None and offset > segment.pinned_last:
            await self._flush(key)
            segment = None
        if segment is None:
            segment = await self._open_segment(*key, offset)
        return segment

    def _full(self, segment: _Segment, offset: int) -> bool:
        """Whether ``segment`` is to be written now: it reached its pinned end (the one a
        previous run wrote it with), or its size or record limit."""
        if segment.pinned_last is not None:
            return offset >= segment.pinned_last
        return (
            segment.size >= self._settings.max_bytes
            or segment.records >= self._settings.max_records
        )

    def _seek_back(self, key: tuple[str, int], expected: int, offset: int) -> int | None:
        """Records ``expected``.. are missing (``offset`` came instead): the offset to seek
        back to, or None when that seek was asked for already (records that arrive after it
        were buffered before it; ``due_seeks`` repeats it)."""
        wait = self._waits.get(key)
        if wait is not None and wait.expected == expected:
            return None
        now = self._clock()
        self._waits[key] = _Wait(expected, since=now, at=now, seeks=1)
        AWAITING.set(len(self._waits))
        logger.warning("%s/%d: got offset %d, expected %d; seeking back", *key, offset, expected)
        return expected

    async def due_seeks(self) -> list[tuple[str, int, int]]:
        """Seeks to repeat (called by a timer): a seek is repeated when the records it asked
        for have not come within ``SEEK_WAIT_S`` (the consumer may drop re-fetched records
        that are behind the position it had already buffered).

        Before repeating one, the partition's log start is read (outside the lock: a
        ListOffsets round trip must not stall the streams). Only a log start past the
        missing offsets proves them deleted (retention removed them before they were read):
        then the wait moves on to the log start. Otherwise the sink keeps waiting, however
        long, and nothing is committed past the gap."""
        now = self._clock()
        due = [(key, wait) for key, wait in self._waits.items() if now - wait.at >= SEEK_WAIT_S]
        starts = await asyncio.gather(*(self._read_log_start(key) for key, _ in due))
        seeks = []
        async with self._lock:
            for (key, wait), start in zip(due, starts, strict=True):
                if self._waits.get(key) is wait:  # not resolved nor replaced meanwhile
                    seeks.append((key[0], key[1], self._seek_again(key, wait, start)))
        return seeks

    def _seek_again(self, key: tuple[str, int], wait: _Wait, start: int | None) -> int:
        now = self._clock()
        if start is not None and start > wait.expected:
            logger.error(
                "%s/%d: offsets %d..%d were deleted before they were read"
                " (the partition starts at %d); moving on",
                *key,
                wait.expected,
                start - 1,
                start,
            )
            DELETED.labels(key[0]).inc(start - wait.expected)
            self._expected[key] = start
            self._waits[key] = _Wait(start, since=now, at=now, seeks=1)
            return start
        wait.seeks += 1
        wait.at = now
        if wait.seeks % REPORT_EVERY_SEEKS == 0:
            logger.error(
                "%s/%d: offset %d still missing after %.0fs and %d seeks; %s:"
                " waiting, nothing is committed past it",
                *key,
                wait.expected,
                now - wait.since,
                wait.seeks,
                "the partition's log start cannot be read, so it is not known to be deleted"
                if start is None
                else f"the partition starts at {start}, so it was not deleted",
            )
        else:
            logger.info("%s/%d: still waiting for offset %d; seeking again", *key, wait.expected)
        return wait.expected

    async def _read_log_start(self, key: tuple[str, int]) -> int | None:
        if self._log_start is None:
            return None
        try:
            return await asyncio.wait_for(self._log_start(*key), LOG_START_TIMEOUT_S)
        except (DependencyUnavailable, TimeoutError) as exc:
            logger.warning("%s/%d: cannot read the log start: %s", *key, exc)
            return None

    def _end_wait(self, key: tuple[str, int]) -> None:
        if self._waits.pop(key, None) is not None:
            AWAITING.set(len(self._waits))

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
        self._end_wait(key)

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
        """Write the open segment of ``key``; it stays open until every file is durable."""
        segment = self._open[key]
        started = time.perf_counter()
        marker = dataset.marker_key(segment.topic, segment.partition, segment.first, segment.last)
        name = dataset.file_name(segment.topic, segment.partition, segment.first, segment.last)
        files = {
            f"{dataset.partition_path(segment.tables[table], hour)}/{name}": (table, rows)
            for (table, hour), rows in segment.rows.items()
        }
        # encoded before the marker: a segment whose files cannot be made is not announced
        encoded = await self._encode(segment, files)
        if segment.pinned_last is None:
            # also for a segment without rows (all dead-lettered): the markers tell a
            # restarted worker where the durable offsets end
            body = json.dumps({"files": sorted(files), "records": segment.records}).encode()
            await self._retrying(f"write {marker}", lambda: self._store.put(marker, body))
            known = self._markers.get(key)  # None if the partition was revoked meanwhile
            if known is not None:
                known.append((segment.first, segment.last))
        for path, data in encoded.items():
            table, rows = files[path]
            await self._write(path, data)
            FILES.labels(table).inc()
            ROWS.labels(table).inc(len(rows))
        if self._open.get(key) is segment:
            del self._open[key]
        if files:
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

    async def _encode(
        self, segment: _Segment, files: dict[str, tuple[str, list[dict[str, object]]]]
    ) -> dict[str, bytes]:
        """The segment's Parquet files. The rows were conformed when added, so this does not
        fail for their values; if it fails anyway (a bug), the segment is kept, readiness
        reports it and the encoding is retried with backoff: no offset is committed past
        a segment that is not written."""
        backoff = self._backoff()
        while True:
            try:
                # in a thread: a 64 MiB segment takes seconds to encode, and the event loop
                # must keep heartbeating the group and answering /readyz meanwhile (the
                # sink's lock keeps the segment's rows still until the flush ends)
                encoded = await asyncio.to_thread(
                    lambda: {
                        path: dataset.to_parquet(segment.tables[table], rows)
                        for path, (table, rows) in files.items()
                    }
                )
            except Exception as exc:  # anything but losing the segment
                reason = (
                    f"cannot encode {segment.topic}/{segment.partition} offsets"
                    f" {segment.first}-{segment.last}: {type(exc).__name__}: {exc}"
                )
                self._encode_failing = True
                self._health.fail(SEGMENTS_CHECK, reason)
                logger.exception("%s; retrying in %.1fs", reason, backoff.delay)
                if await backoff.wait(self._stopping):
                    continue
                raise
            if self._encode_failing:
                self._encode_failing = False
                self._health.ok(SEGMENTS_CHECK)
            return encoded

    async def _write(self, path: str, data: bytes) -> None:
        await self._retrying(f"write {path}", lambda: self._store.put(path, data))

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        backoff = self._backoff()
        while True:
            try:
                result = await call()
            except StorageUnavailable as exc:
                STORAGE_ERRORS.inc()
                self._health.fail(STORAGE_CHECK, exc.message)
                logger.warning("cannot %s: %s; retrying in %.1fs", what, exc.message, backoff.delay)
                if await backoff.wait(self._stopping):
                    continue
                raise
            self._health.ok(STORAGE_CHECK)
            return result

    def _backoff(self) -> Backoff:
        return Backoff(self._settings.retry_initial_s, self._settings.retry_max_s)
