"""Entrypoint: ``tollgate-analytics`` runs the Faust worker; ``tollgate-analytics query|report``
runs SQL over the dataset (see :mod:`tollgate_analytics.cli`)."""

from __future__ import annotations

import asyncio
import logging
import sys

from tollgate_analytics import cli
from tollgate_analytics.app import changelog_topic, create_app
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_core import runtime, telemetry
from tollgate_core.bus.admin import ensure_topics, partition_counts
from tollgate_core.errors import ConfigurationError, DependencyUnavailable
from tollgate_core.health import Health
from tollgate_core.runtime import start_with_retry
from tollgate_core.topics import TopicSpec


async def source_partitions(settings: AnalyticsSettings) -> int:
    """The partition count of the source topics, which the aggregates table and its changelog
    must share: read from the broker (``TOLLGATE_ANALYTICS_TOPIC_PARTITIONS``, when set, must
    agree). Missing topics are waited for; topics that disagree cannot be worked with."""
    names = (settings.logs_topic, settings.usage_topic)
    counts = await partition_counts(settings.kafka, names)
    missing = [name for name in names if name not in counts]
    if missing:
        raise DependencyUnavailable(f"waiting for topics {', '.join(missing)}")
    found = set(counts.values())
    if settings.topic_partitions is not None:
        found.add(settings.topic_partitions)
    if len(found) > 1:
        raise ConfigurationError(
            "the source topics and TOLLGATE_ANALYTICS_TOPIC_PARTITIONS disagree on the number "
            f"of partitions: {counts}, setting {settings.topic_partitions}"
        )
    return found.pop()


def wait_for_topics(settings: AnalyticsSettings) -> int | None:
    """Learn the source topics' partition count and create the aggregates table's changelog
    with as many, retrying with backoff while Kafka is unreachable instead of exiting, as
    every other service waits for its broker (:func:`tollgate_core.runtime.start_with_retry`).
    The partition count, or None when SIGTERM or SIGINT ended the wait."""
    partitions: int | None = None

    async def create() -> None:
        nonlocal partitions
        count = await source_partitions(settings)
        spec = TopicSpec(changelog_topic(settings), count, 2 * 86_400_000)
        await ensure_topics(settings.kafka, [spec])
        partitions = count

    async def wait(stop: asyncio.Event) -> None:
        await start_with_retry("kafka", create, Health(), stop)

    # Faust sets up logging only once it starts; until then the retries go to stderr
    retries = logging.getLogger(runtime.__name__)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s analytics: %(message)s"))
    retries.addHandler(handler)
    retries.setLevel(logging.INFO)
    try:
        runtime.run(wait)
    finally:
        retries.removeHandler(handler)
    return partitions


#: Faust's worker takes these level names only; the rest of Tollgate takes Python's
_FAUST_LEVELS = {"CRITICAL": "crit", "ERROR": "error", "WARNING": "warn", "WARN": "warn"}


def faust_log_level(level: str) -> str:
    """``TOLLGATE_LOG_LEVEL`` (a Python level name) as Faust's ``--loglevel`` wants it."""
    return _FAUST_LEVELS.get(level.upper(), "debug" if level.upper() == "DEBUG" else "info")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in cli.COMMANDS:
        raise SystemExit(cli.run(sys.argv[1:]))
    settings = AnalyticsSettings()
    tel = telemetry.configure_tracing(settings.telemetry, "analytics")
    partitions = wait_for_topics(settings)
    if partitions is None:
        tel.shutdown()
        return
    analytics = create_app(settings.model_copy(update={"topic_partitions": partitions}))
    try:
        if len(sys.argv) == 1:
            sys.argv += ["worker", "--loglevel", faust_log_level(settings.telemetry.log_level)]
        analytics.app.main()
    finally:
        tel.shutdown()
