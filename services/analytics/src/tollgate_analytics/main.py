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
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.health import Health
from tollgate_core.runtime import start_with_retry
from tollgate_core.topics import TopicSpec


def wait_for_topics(settings: AnalyticsSettings) -> bool:
    """Create the aggregates table's changelog (co-partitioned with the source topics),
    retrying with backoff while Kafka is unreachable instead of exiting, as every other
    service waits for its broker (:func:`tollgate_core.runtime.start_with_retry`). False when
    SIGTERM or SIGINT ended the wait."""
    spec = TopicSpec(changelog_topic(settings), settings.topic_partitions, 2 * 86_400_000)
    started = False

    async def create() -> None:
        await ensure_topics(settings.kafka, [spec])

    async def wait(stop: asyncio.Event) -> None:
        nonlocal started
        started = await start_with_retry("kafka", create, Health(), stop)

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
    return started


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
    if not wait_for_topics(settings):
        tel.shutdown()
        return
    analytics = create_app(settings)
    try:
        if len(sys.argv) == 1:
            sys.argv += ["worker", "--loglevel", faust_log_level(settings.telemetry.log_level)]
        analytics.app.main()
    finally:
        tel.shutdown()
