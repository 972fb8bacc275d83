"""Admission and settlement handlers: decisions become the right events; a dead Postgres
means fail closed (or open, when chosen) and recovery by itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from tollgate_core import db, topics
from tollgate_core.bus import Delivered, InMemoryPublisher
from tollgate_core.contracts import (
    AdmissionV1,
    ChatMessage,
    ChatRequestV1,
    EmbeddingAdmissionV1,
    EmbeddingRequestV1,
    ReplyErrorV1,
    ReplyTo,
    RequestLogV1,
    TextBlock,
    Usage,
    UsageRecordV1,
)
from tollgate_core.errors import DependencyUnavailable
from tollgate_core.health import Health
from tollgate_core.settings import DatabaseSettings
from tollgate_dev.platform import EmbeddedPostgres
from tollgate_meter.adapters.postgres import PostgresLedger, create_engine
from tollgate_meter.batching import AdmissionBatcher
from tollgate_meter.handlers import AdmissionHandler, SettlementHandler
from tollgate_meter.main import MIGRATIONS

from .conftest import TEST_TIERS
from .memory_ledger import MemoryLedger

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def request(principal: str = "alice", max_tokens: int = 600) -> Delivered[ChatRequestV1]:
    event = ChatRequestV1(
        principal=principal,
        max_tokens=max_tokens,
        conversation_id="conv",
        channel=f"/Outbound-Messages/{principal}",
        messages=(ChatMessage(role="user", content=(TextBlock(text="hello"),)),),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=7),
    )
    return Delivered(event=event, topic=topics.REQUESTS, partition=0, offset=0, key=principal)


TTL_S = 900


AnyLedger = PostgresLedger | MemoryLedger


@pytest.fixture(params=["postgres", "memory"])
def ledger(request: pytest.FixtureRequest) -> AnyLedger:
    """The handlers on each ledger: Postgres, and the one in memory (same decisions), which
    shows the handlers rely on the ledger's promises alone."""
    if request.param == "memory":
        return MemoryLedger(TEST_TIERS, bucket_seconds=600)
    postgres: PostgresLedger = request.getfixturevalue("postgres_ledger")
    return postgres


def handler(
    ledger: AnyLedger, publisher: InMemoryPublisher, health: Health, fail_open: bool = False
) -> AdmissionHandler:
    return AdmissionHandler(
        AdmissionBatcher(ledger, lambda: NOW),
        publisher,
        health,
        default_max_tokens=100,
        fail_open=fail_open,
        reservation_ttl_s=TTL_S,
    )


async def test_admitted_then_refused_with_a_clear_error(ledger: AnyLedger) -> None:
    publisher, health = InMemoryPublisher(), Health()
    admit = handler(ledger, publisher, health)
    first, second = request(), request()
    await admit(first)
    await admit(second)
    [admission] = publisher.on(topics.ADMITTED)
    assert isinstance(admission, AdmissionV1)
    assert admission.request_id == first.event.request_id
    assert admission.reserved_output_tokens == 600
    # the sweeper may release the reservation TTL after it was written, which is never
    # before the request was created: the router starts nothing it cannot finish by then
    assert admission.reservation_expires_at == first.event.created_at + timedelta(seconds=TTL_S)
    [refusal] = [p for p in publisher.events if p.topic == topics.REPLIES]
    assert refusal.partition == 7
    error = refusal.event
    assert isinstance(error, ReplyErrorV1)
    assert error.channel == "/Outbound-Messages/alice" and error.conversation_id == "conv"
    assert error.error.type == "token_limit_exceeded"
    assert error.error.details["window"] == "rolling-10m"
    assert error.error.details["limit"] == 1_000 and error.error.details["used"] == 600
    assert error.error.details["retry_after_s"] > 0
    [log] = publisher.on(topics.LOGS)
    assert isinstance(log, RequestLogV1)
    assert log.status == "rejected" and log.error_type == "token_limit_exceeded"


async def test_a_redelivered_request_republishes_its_decision(ledger: AnyLedger) -> None:
    publisher = InMemoryPublisher()
    admit = handler(ledger, publisher, Health())
    delivered = request()
    await admit(delivered)
    await admit(delivered)
    assert len(publisher.on(topics.ADMITTED)) == 2  # the router de-duplicates
    report = await ledger.report("alice", (), NOW)
    assert report.windows[0].reserved.output == 600  # reserved once


@pytest.fixture
def stoppable_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tmp_path / "pg", database="meter", fresh=True) as postgres:
        yield postgres


@pytest.fixture
async def stoppable_ledger(
    stoppable_postgres: EmbeddedPostgres,
) -> AsyncIterator[PostgresLedger]:
    """A ledger on the meter's own engine (no ping before each use) over a Postgres that
    tests stop and start."""
    settings = DatabaseSettings(database_url=SecretStr(stoppable_postgres.url))
    await db.migrate(settings, MIGRATIONS)
    engine = create_engine(settings, application_name="test")
    try:
        yield PostgresLedger(engine, TEST_TIERS, bucket_seconds=600)
    finally:
        await engine.dispose()


async def test_postgres_down_fails_closed_then_recovers(
    stoppable_postgres: EmbeddedPostgres, stoppable_ledger: PostgresLedger
) -> None:
    publisher, health = InMemoryPublisher(), Health()
    health.register("postgres")
    admit = handler(stoppable_ledger, publisher, health)
    await admit(request(max_tokens=10))
    assert len(publisher.on(topics.ADMITTED)) == 1 and health.ready

    stoppable_postgres.stop()
    await admit(request(max_tokens=10))
    [refusal] = publisher.on(topics.REPLIES)
    assert isinstance(refusal, ReplyErrorV1)
    assert refusal.error.type == "service_unavailable" and refusal.error.retriable
    assert len(publisher.on(topics.ADMITTED)) == 1  # nothing slipped through
    assert not health.ready
    assert "Postgres unavailable" in health.report()["postgres"]["reason"]  # type: ignore[operator]

    stoppable_postgres.start()  # nothing else: no restart, no reconnect by hand
    await admit(request(max_tokens=10))
    assert len(publisher.on(topics.ADMITTED)) == 2 and health.ready
    assert len(publisher.on(topics.REPLIES)) == 1


async def test_a_request_read_again_during_an_outage_waits_instead_of_being_refused(
    stoppable_postgres: EmbeddedPostgres, stoppable_ledger: PostgresLedger
) -> None:
    """A meter that died after admitting a request reads it again; if Postgres is out then,
    refusing it would give a client that already has its answer a second, contradicting
    terminal reply. It is retried instead, and decided once Postgres is back."""
    publisher, health = InMemoryPublisher(), Health()
    admit = handler(stoppable_ledger, publisher, health)
    first = request(max_tokens=10)
    await admit(first)
    old = first.event.model_copy(
        update={"created_at": first.event.created_at - timedelta(seconds=30)}
    )
    again = Delivered(event=old, topic=topics.REQUESTS, partition=0, offset=0, key="alice")
    stoppable_postgres.stop()
    with pytest.raises(DependencyUnavailable):
        await admit(again)
    assert publisher.on(topics.REPLIES) == []  # no refusal
    stoppable_postgres.start()
    await admit(again)  # the earlier decision, published again; the router de-duplicates
    assert len(publisher.on(topics.ADMITTED)) == 2 and publisher.on(topics.REPLIES) == []


async def test_a_postgres_restart_between_requests_refuses_none(
    stoppable_postgres: EmbeddedPostgres, stoppable_ledger: PostgresLedger
) -> None:
    """Every pooled connection dies with the old server; the next requests must not be
    refused for it, and the readiness check must not flap."""
    publisher, health = InMemoryPublisher(), Health()
    health.register("postgres")
    admit = handler(stoppable_ledger, publisher, health)

    async def burst(principal: str) -> None:  # several connections in use, then pooled
        await asyncio.gather(*(admit(request(principal, max_tokens=10)) for _ in range(4)))

    await burst("alice")
    stoppable_postgres.stop()
    stoppable_postgres.start()
    await burst("bob")
    assert publisher.on(topics.REPLIES) == []
    assert len(publisher.on(topics.ADMITTED)) == 8 and health.ready

    stoppable_postgres.stop()
    stoppable_postgres.start()
    await db.ping(stoppable_ledger._engine)  # the sweeper's readiness check, likewise


async def test_while_postgres_stays_down_the_retry_fails_as_unavailable(
    stoppable_postgres: EmbeddedPostgres, stoppable_ledger: PostgresLedger
) -> None:
    await handler(stoppable_ledger, InMemoryPublisher(), Health())(request())
    stoppable_postgres.stop()
    with pytest.raises(DependencyUnavailable):
        await db.ping(stoppable_ledger._engine)
    with pytest.raises(DependencyUnavailable):
        await stoppable_ledger.get("anything")


async def test_fail_open_admits_while_postgres_is_down(tmp_path: Path) -> None:
    settings = DatabaseSettings(database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"))
    engine = db.create_engine(settings, application_name="test")
    publisher = InMemoryPublisher()
    try:
        await handler(
            PostgresLedger(engine, TEST_TIERS, bucket_seconds=600),
            publisher,
            Health(),
            fail_open=True,
        )(request())
    finally:
        await engine.dispose()
    assert len(publisher.on(topics.ADMITTED)) == 1 and publisher.on(topics.REPLIES) == []
    [unmetered] = publisher.on(topics.ADMITTED)
    assert isinstance(unmetered, AdmissionV1)
    assert unmetered.reservation_expires_at is None  # nothing was reserved, nothing expires


async def test_an_embeddings_request_reserves_its_input_only_and_settles_to_the_reported(
    ledger: AnyLedger,
) -> None:
    publisher = InMemoryPublisher()
    admit = handler(ledger, publisher, Health())
    event = EmbeddingRequestV1(
        principal="ivan",
        model="titan",
        inputs=("twelve chars", "x" * 31, (1, 2, 3, 4)),
        reply_to=ReplyTo(topic=topics.REPLIES, partition=3),
    )
    await admit(Delivered(event=event, topic=topics.REQUESTS, partition=0, offset=0, key="ivan"))
    [admission] = publisher.on(topics.ADMITTED)
    # ceil(12 / 3) + ceil(31 / 3) + a 4-token array; an embedding has no output
    assert isinstance(admission, EmbeddingAdmissionV1) and admission.request == event
    assert (admission.reserved_input_tokens, admission.reserved_output_tokens) == (4 + 11 + 4, 0)
    [window, *_] = (await ledger.report("ivan", (), NOW)).windows
    assert (window.reserved.input, window.reserved.output) == (19, 0)
    usage = UsageRecordV1(
        request_id=event.request_id,
        principal="ivan",
        model="titan",
        provider="bedrock",
        usage=Usage(input_tokens=9),
    )
    settle = SettlementHandler(ledger, lambda: NOW)
    await settle(Delivered(event=usage, topic=topics.USAGE, partition=0, offset=0, key="ivan"))
    [window, *_] = (await ledger.report("ivan", (), NOW)).windows
    assert (window.used.input, window.used.output) == (9, 0)
    assert (window.reserved.input, window.reserved.output) == (0, 0)
