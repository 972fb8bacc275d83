"""Entrypoint: ``tollgate-analytics`` runs the Faust worker; ``tollgate-analytics query|report``
runs SQL over the dataset (see :mod:`tollgate_analytics.cli`)."""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time

from tollgate_analytics import cli
from tollgate_analytics.app import changelog_topic, create_app
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_core import telemetry
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.errors import DependencyUnavailable
from tollgate_core.topics import TopicSpec

logger = logging.getLogger("tollgate_analytics.main")


def wait_for_topics(settings: AnalyticsSettings, *, max_delay_s: float = 15.0) -> None:
    """Create the aggregates table's changelog (co-partitioned with the source topics),
    retrying with backoff while Kafka is unreachable instead of exiting: like every other
    service, the worker waits for its broker. SIGTERM ends the wait."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s analytics: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    spec = TopicSpec(changelog_topic(settings), settings.topic_partitions, 2 * 86_400_000)
    delay, attempt = 0.5, 0
    try:
        while True:
            attempt += 1
            try:
                asyncio.run(ensure_topics(settings.kafka, [spec]))
                return
            except DependencyUnavailable as exc:
                logger.warning(
                    "cannot start kafka (attempt %d): %s; retrying in %.1fs",
                    attempt,
                    exc.message,
                    delay,
                )
            time.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
            delay = min(delay * 2, max_delay_s)
    finally:
        logger.removeHandler(handler)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in cli.COMMANDS:
        raise SystemExit(cli.run(sys.argv[1:]))
    settings = AnalyticsSettings()
    tel = telemetry.configure_tracing(settings.telemetry, "analytics")
    wait_for_topics(settings)
    analytics = create_app(settings)
    try:
        if len(sys.argv) == 1:
            sys.argv += ["worker", "--loglevel", settings.telemetry.log_level.lower()]
        analytics.app.main()
    finally:
        tel.shutdown()
