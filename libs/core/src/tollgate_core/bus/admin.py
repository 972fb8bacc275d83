"""Create Tollgate's topics (idempotently); ``tollgate-topics`` on the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from tollgate_core.bus.security import verify_tls
from tollgate_core.errors import DependencyUnavailable
from tollgate_core.settings import KafkaSettings
from tollgate_core.topics import DEFAULT_TOPICS, TopicSpec

logger = logging.getLogger(__name__)
_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec] | None = None, *, replication: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. ``specs`` are
    created as named; by default Tollgate's own topics, with the configured prefix."""
    if specs is None:
        specs = [replace(s, name=settings.topic(s.name)) for s in DEFAULT_TOPICS]
    await verify_tls(settings)
    admin = AIOKafkaAdminClient(client_id="tollgate-admin", **settings.client_kwargs())
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise DependencyUnavailable(f"Kafka unreachable: {exc}") from exc
    try:
        existing = set(await admin.list_topics())
        wanted = [s for s in specs if s.name not in existing]
        if not wanted:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    s.name,
                    s.partitions,
                    replication,
                    topic_configs={"retention.ms": str(s.retention_ms)},
                )
                for s in wanted
            ]
        )
        created = []
        for topic, code, message in response.topic_errors:
            if code == 0:
                created.append(topic)
            elif code != _TOPIC_ALREADY_EXISTS:
                raise DependencyUnavailable(f"cannot create topic {topic}: {code} {message}")
        return created
    finally:
        await admin.close()


async def partition_counts(settings: KafkaSettings, names: Iterable[str]) -> dict[str, int]:
    """How many partitions each of ``names`` has on the broker; a topic that does not exist
    (yet) is left out — and is not created, as describing it by name could (a broker that
    creates topics on first use would give it its default partition count)."""
    admin = AIOKafkaAdminClient(client_id="tollgate-admin", **settings.client_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [name for name in names if name in existing]
        described = await admin.describe_topics(wanted) if wanted else []
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka unreachable: {exc}") from exc
    finally:
        await admin.close()
    return {
        str(topic["topic"]): len(topic["partitions"])
        for topic in described
        if topic["error_code"] == 0 and topic["partitions"]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Create Tollgate's Kafka topics if missing.")
    parser.add_argument("--replication", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    created = asyncio.run(ensure_topics(KafkaSettings(), replication=args.replication))
    logger.info("created topics: %s", ", ".join(created) if created else "none (all exist)")
