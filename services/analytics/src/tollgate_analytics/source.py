"""The Kafka side of the job: the Faust app, its source topics, offsets and dead letters.

The source topics are declared without Faust acknowledgements (``acks=False``), so Faust never
commits their offsets by itself: :meth:`Source.commit` commits a partition's offset only when
the Parquet sink says the files holding every record before it are durable, and once the
aggregates' changelog writes for those records are stored too.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import faust
from faust.types import TP
from faust.types.tuples import FutureMessage, PendingMessage
from prometheus_client import Counter

from tollgate_analytics.credentials import broker_credentials
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_core.bus import Decoder
from tollgate_core.bus import headers as h
from tollgate_core.errors import ContractError, DependencyUnavailable

logger = logging.getLogger(__name__)

#: how long a commit waits for the aggregates' changelog writes before it is left to a later one
FLUSH_TIMEOUT_S = 10.0

DEAD_LETTERED = Counter(
    "tollgate_analytics_dead_lettered_total", "Malformed records", ["topic", "reason"]
)


class QuietWorker(faust.Worker):
    """Faust's worker without its terminal progress spinner. To feed the spinner at a log
    level of WARNING or above, Faust lowers the root logger to DEBUG, so every library's debug
    record (aiokafka logs each request it sends) would be built and then dropped."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)


def create_faust_app(settings: AnalyticsSettings, partitions: int) -> faust.App:
    """The Faust app; ``partitions``: of the source topics, and so of the table's changelog."""
    kafka = settings.kafka
    # Faust creates only the last level of its data directory
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(kafka),
        store="memory://",
        datadir=settings.state_dir,
        web_host=settings.host,
        web_port=settings.port,
        web_bind=settings.host,
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        Worker=QuietWorker,
    )


def changelog_topic(settings: AnalyticsSettings) -> str:
    return f"{settings.app_id}-aggregates-changelog"


class Source:
    """The source topics of ``app`` and what the job does to their offsets."""

    def __init__(self, app: faust.App, settings: AnalyticsSettings) -> None:
        self.app = app
        self._group = settings.app_id
        self.logs = self._raw_topic(settings.logs_topic, acks=False)
        self.usage = self._raw_topic(settings.usage_topic, acks=False)
        self._dead_letter = self._raw_topic(settings.dead_letter_topic, acks=True)

    def _raw_topic(self, name: str, *, acks: bool) -> Any:
        return self.app.topic(name, value_serializer="raw", key_serializer="raw", acks=acks)

    async def commit(self, topic: str, partition: int, next_offset: int) -> None:
        """Commit ``next_offset`` unless the partition was revoked meanwhile (its next owner
        reads again; the sink's markers de-duplicate). Faust's public ``commit`` commits only
        the offsets it acknowledged itself, which these topics never do, hence its
        ``_commit`` taking explicit offsets."""
        tp = TP(topic, partition)
        consumer = self.app.consumer
        if tp not in consumer.assignment():
            return
        try:
            if not await self._changes_stored():
                logger.warning(
                    "%s/%d@%d not committed yet: the aggregates' changelog writes are still"
                    " waiting to be sent",
                    topic,
                    partition,
                    next_offset,
                )
                return
            await consumer._commit({tp: next_offset})  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a later segment commits past it again
            logger.warning("cannot commit %s/%d@%d: %s", topic, partition, next_offset, exc)

    async def _changes_stored(self) -> bool:
        """Whether every changelog write handed to the producer before this call is stored
        in Kafka (False when that took longer than :data:`FLUSH_TIMEOUT_S`; the commit is
        then left to a later segment).

        A table write waits in Faust's producer buffer until Faust's own task hands it to the
        Kafka client, one after the other. The buffer's ``flush`` gives up as soon as 0.1 s
        pass without a message sent, and counts a message as sent once taken off the queue:
        on a busy machine the offset could be committed with writes still waiting, and a
        worker killed then lost them for good (its replacement reads on from the commit, so
        the aggregates missed records before it). So a marker goes through the buffer behind
        the writes; once the buffer's task reaches it, every write before it is in the Kafka
        client, whose flush then waits for their acknowledgements."""
        producer = self.app.producer
        reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        producer.buffer.put(FutureMessage(_marker(reached)))
        try:
            await asyncio.wait_for(asyncio.shield(reached), FLUSH_TIMEOUT_S)
        except TimeoutError:
            return False
        await producer.flush()
        return True

    async def log_start(self, topic: str, partition: int) -> int:
        """The partition's earliest offset still in Kafka (ListOffsets(earliest)); what the
        sink needs to tell records deleted by retention from records the stream skipped."""
        tp = TP(topic, partition)
        try:
            offsets = await self.app.consumer.earliest_offsets(tp)
            return int(offsets[tp])
        except Exception as exc:  # translated: the sink does not accept the gap, it waits
            raise DependencyUnavailable(
                f"cannot list offsets of {topic}/{partition}: {exc}"
            ) from exc

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        await self.app.consumer.seek(TP(topic, partition), offset)

    async def dead_letter(self, event: Any, exc: ContractError) -> None:
        """Set ``event`` aside on the dead-letter topic with the core consumer's headers."""
        message = event.message
        DEAD_LETTERED.labels(message.topic, type(exc).__name__).inc()
        logger.warning(
            "dead-lettering %s/%d@%d: %s",
            message.topic,
            message.partition,
            message.offset,
            exc.message,
        )
        headers = h.dead_letter_headers(
            list((event.headers or {}).items()),
            f"{type(exc).__name__}: {exc.message}",
            (message.topic, message.partition, message.offset),
            self._group,
        )
        await self._dead_letter.send(key=event.key, value=event.value, headers=headers)

    async def decode(self, event: Any, decoder: Decoder[Any]) -> Any:
        """``event``'s record, or None once it is dead-lettered as malformed."""
        headers = h.to_dict(list((event.headers or {}).items()))
        try:
            return decoder.decode(event.value, headers.get(h.SCHEMA))
        except ContractError as exc:
            await self.dead_letter(event, exc)
            return None


class _Reached:
    """A channel that only notes that the producer's buffer got to its message."""

    def __init__(self, reached: asyncio.Future[None]) -> None:
        self._reached = reached

    async def publish_message(self, fut: FutureMessage, wait: bool = False) -> FutureMessage:
        self._reached.set_result(None)  # once: the commit shields it from its own timeout
        return fut


def _marker(reached: asyncio.Future[None]) -> PendingMessage:
    """A message for the producer's buffer that sends nothing and resolves ``reached``."""
    return PendingMessage(
        channel=_Reached(reached),  # type: ignore[arg-type]
        key=None,
        value=None,
        partition=None,
        timestamp=None,
        headers=None,
        key_serializer=None,
        value_serializer=None,
        callback=None,
    )
