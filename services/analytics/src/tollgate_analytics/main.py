"""Entrypoint: ``tollgate-analytics`` runs the Faust worker; ``tollgate-analytics query|report``
runs SQL over the dataset (see :mod:`tollgate_analytics.cli`)."""

from __future__ import annotations

import asyncio
import sys

from tollgate_analytics import cli
from tollgate_analytics.app import changelog_topic, create_app
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_core import telemetry
from tollgate_core.bus.admin import ensure_topics
from tollgate_core.topics import TopicSpec


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in cli.COMMANDS:
        raise SystemExit(cli.run(sys.argv[1:]))
    settings = AnalyticsSettings()
    tel = telemetry.configure_tracing(settings.telemetry, "analytics")
    # The aggregates table's changelog, co-partitioned with the source topics.
    asyncio.run(
        ensure_topics(
            settings.kafka,
            [TopicSpec(changelog_topic(settings), settings.topic_partitions, 2 * 86_400_000)],
        )
    )
    analytics = create_app(settings)
    try:
        if len(sys.argv) == 1:
            sys.argv += ["worker", "--loglevel", settings.telemetry.log_level.lower()]
        analytics.app.main()
    finally:
        tel.shutdown()
