"""pytest fixtures for Tollgate: a real Kafka (Tansu) and a real Postgres per test session,
with factories for unique topics, consumer groups and databases per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tollgate_core.settings import DatabaseSettings, KafkaSettings
from tollgate_dev.platform import EmbeddedPostgres, TansuBroker

TopicFactory = Callable[..., Awaitable[str]]
DatabaseFactory = Callable[[], Awaitable[DatabaseSettings]]


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with TansuBroker(log_path=log) as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_settings(kafka_broker: TansuBroker) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers, fetch_max_wait_ms=5)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique names for topics, groups and schemas in one test."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def topic_factory(
    kafka_settings: KafkaSettings, unique: Callable[[str], str]
) -> AsyncIterator[TopicFactory]:
    admin = AIOKafkaAdminClient(**kafka_settings.client_kwargs())
    await admin.start()

    async def create(name: str | None = None, partitions: int = 1) -> str:
        topic = name or unique("test-topic")
        await admin.create_topics([NewTopic(topic, partitions, 1)])
        return topic

    try:
        yield create
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def embedded_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    data = Path(tmp_path_factory.mktemp("pg")) / "data"
    with EmbeddedPostgres(data, database="tollgate_test", fresh=True) as postgres:
        yield postgres


@pytest.fixture
async def database_factory(
    embedded_postgres: EmbeddedPostgres, unique: Callable[[str], str]
) -> AsyncIterator[DatabaseFactory]:
    """Creates an empty database per call; dropped after the test."""
    admin_url = DatabaseSettings(database_url=SecretStr(embedded_postgres.url)).async_url
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    async def create() -> DatabaseSettings:
        name = unique("db").replace("-", "_")
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        url = embedded_postgres.url.replace(f"/{embedded_postgres.database}?", f"/{name}?")
        return DatabaseSettings(database_url=SecretStr(url))

    try:
        yield create
    finally:
        async with engine.connect() as conn:
            for name in created:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await engine.dispose()
