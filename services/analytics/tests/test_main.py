"""The worker's command line as the entrypoint builds it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from tollgate_analytics.main import faust_log_level, source_partitions
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_analytics.source import QuietWorker, create_faust_app
from tollgate_core.errors import ConfigurationError, DependencyUnavailable
from tollgate_core.settings import KafkaSettings
from tollgate_dev.pytest_plugin import TopicFactory


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("WARNING", "warn"),
        ("warning", "warn"),
        ("INFO", "info"),
        ("DEBUG", "debug"),
        ("ERROR", "error"),
        ("CRITICAL", "crit"),
    ],
)
def test_python_level_names_become_faust_level_names(level: str, expected: str) -> None:
    assert faust_log_level(level) == expected


async def test_the_source_topics_partition_count_is_read_from_the_broker(
    kafka_settings: KafkaSettings, topic_factory: TopicFactory
) -> None:
    """The dev runner makes 2 partitions a topic, a cluster 12: the worker takes what the
    broker has, so its changelog is co-partitioned with the topics whatever they are."""
    logs, usage = await topic_factory(partitions=3), await topic_factory(partitions=3)
    settings = AnalyticsSettings(kafka=kafka_settings, logs_topic=logs, usage_topic=usage)
    assert await source_partitions(settings) == 3
    agreeing = settings.model_copy(update={"topic_partitions": 3})
    assert await source_partitions(agreeing) == 3


async def test_a_partition_setting_the_topics_contradict_stops_the_worker(
    kafka_settings: KafkaSettings, topic_factory: TopicFactory
) -> None:
    logs, usage = await topic_factory(partitions=2), await topic_factory(partitions=2)
    settings = AnalyticsSettings(
        kafka=kafka_settings, logs_topic=logs, usage_topic=usage, topic_partitions=12
    )
    with pytest.raises(ConfigurationError, match="disagree"):
        await source_partitions(settings)
    uneven = settings.model_copy(
        update={"usage_topic": await topic_factory(partitions=4), "topic_partitions": None}
    )
    with pytest.raises(ConfigurationError, match="disagree"):
        await source_partitions(uneven)


async def test_missing_source_topics_are_waited_for(
    kafka_settings: KafkaSettings, unique: Callable[[str], str]
) -> None:
    settings = AnalyticsSettings(
        kafka=kafka_settings, logs_topic=unique("absent"), usage_topic=unique("absent")
    )
    with pytest.raises(DependencyUnavailable, match="waiting for topics"):
        await source_partitions(settings)


def test_at_warning_the_worker_leaves_the_libraries_debug_records_unbuilt(tmp_path: Path) -> None:
    """Faust's worker would lower the root logger to DEBUG for its terminal spinner at
    WARNING and above; the job's worker has no spinner, so the level stays as asked."""
    app = create_faust_app(AnalyticsSettings(state_dir=str(tmp_path)), partitions=1)
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        # without taking over sys.stdout/stderr: that would outlive the test and, restored
        # whenever the collector reaches the worker, swap another test's captured streams
        worker = app.conf.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
        assert isinstance(worker, QuietWorker)
        worker._setup_logging()
        assert root.level == logging.WARNING
        assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
