"""The journal and the prepared-response store against a real Postgres, migrated by the
service's own migrations; and a redelivery through the handler with the Postgres journal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from tollgate_core import db, topics
from tollgate_core.bus import InMemoryPublisher
from tollgate_core.contracts import ChatMessage, TextBlock, utcnow
from tollgate_core.errors import DependencyUnavailable, RequestError
from tollgate_core.settings import DatabaseSettings
from tollgate_dev.pytest_plugin import DatabaseFactory
from tollgate_router.adapters.postgres import PostgresJournal, PostgresPreparedStore
from tollgate_router.catalog import CatalogSource, local_catalog
from tollgate_router.handlers import GenerationHandler
from tollgate_router.journal import Claim
from tollgate_router.main import MIGRATIONS
from tollgate_router.prepared import PreparedResponse, prepared_key
from tollgate_router.providers.local import LocalProvider


@pytest.fixture
async def engine(database_factory: DatabaseFactory) -> AsyncIterator[AsyncEngine]:
    settings = await database_factory()
    await db.migrate(settings, MIGRATIONS)
    await db.migrate(settings, MIGRATIONS)  # a second run is a no-op
    engine = db.create_engine(settings, application_name="test")
    try:
        yield engine
    finally:
        await engine.dispose()


def convo(*texts: str) -> tuple[ChatMessage, ...]:
    roles = ("user", "assistant")
    return tuple(
        ChatMessage(role=roles[i % 2], content=[TextBlock(text=t)])  # type: ignore[arg-type]
        for i, t in enumerate(texts)
    )


def entry(
    messages: tuple[ChatMessage, ...],
    *,
    id: str,
    principal: str | None = None,
    model: str = "*",
    response: str = "answer",
    ttl: timedelta = timedelta(hours=1),
) -> PreparedResponse:
    now = utcnow()
    return PreparedResponse(
        id=id,
        key=prepared_key(("sys",), messages),
        model_scope=model,
        principal=principal,
        response=response,
        expires_at=now + ttl,
        created_at=now,
    )


async def test_the_journal_claims_once_and_reports_the_state_on_redelivery(
    engine: AsyncEngine,
) -> None:
    journal = PostgresJournal(engine)
    assert await journal.claim("r1", "alice") == Claim(None)
    await journal.streaming("r1")
    assert await journal.claim("r1", "alice") == Claim("streaming", 2, None)
    await journal.settling("r1", '{"x":1}')
    await journal.settled("r1")
    assert await journal.claim("r1", "alice") == Claim("settled", 3, '{"x":1}')


async def test_a_live_lease_of_another_attempt_is_reported_held_until_released(
    engine: AsyncEngine,
) -> None:
    journal = PostgresJournal(engine)
    assert await journal.claim("r-lease", "alice", owner="a", lease_s=30) == Claim(None)
    await journal.streaming("r-lease")
    # a second router while the first still works: held, and not counted as an attempt
    held = await journal.claim("r-lease", "alice", owner="b", lease_s=30)
    assert held == Claim("streaming", 1, None, held=True)
    await journal.release("r-lease", "b")  # not b's to release
    assert (await journal.claim("r-lease", "alice", owner="b", lease_s=30)).held
    await journal.renew("r-lease", "a", 30)
    await journal.release("r-lease", "a")
    taken = await journal.claim("r-lease", "alice", owner="b", lease_s=30)
    assert taken == Claim("streaming", 2, None)
    assert (await journal.claim("r-lease", "alice", owner="c", lease_s=30)).held  # b's now


async def test_an_expired_lease_passes_to_the_next_attempt(engine: AsyncEngine) -> None:
    journal = PostgresJournal(engine)
    await journal.claim("r-dead", "alice", owner="a", lease_s=0.01)
    await asyncio.sleep(0.05)
    assert await journal.claim("r-dead", "alice", owner="b", lease_s=30) == Claim("started", 2)


async def test_prepared_lookup_prefers_own_then_public_and_isolates_principals(
    engine: AsyncEngine,
) -> None:
    store = PostgresPreparedStore(engine)
    q = convo("what is my plan?")
    key = prepared_key(("sys",), q)
    now = utcnow()
    await store.add(entry(q, id="pub", response="public"))
    await store.add(entry(q, id="alice", principal="alice", response="alice's"))
    await store.add(entry(q, id="alice-m", principal="alice", model="m", response="alice on m"))
    hit = await store.lookup(key, model="m", principal="alice", now=now)
    assert hit is not None and hit.response == "alice on m"
    hit = await store.lookup(key, model="other", principal="alice", now=now)
    assert hit is not None and hit.response == "alice's"
    hit = await store.lookup(key, model="m", principal="bob", now=now)
    assert hit is not None and hit.response == "public"
    await store.remove("pub")
    assert await store.lookup(key, model="m", principal="bob", now=now) is None


async def test_prepared_keys_separate_conversations_and_system_prompts(engine: AsyncEngine) -> None:
    store = PostgresPreparedStore(engine)
    await store.add(entry(convo("and tomorrow?"), id="short"))
    now = utcnow()
    longer = prepared_key(("sys",), convo("open today?", "yes", "and tomorrow?"))
    assert await store.lookup(longer, model="m", principal="a", now=now) is None
    other_system = prepared_key(("other",), convo("and tomorrow?"))
    assert await store.lookup(other_system, model="m", principal="a", now=now) is None
    same = prepared_key(("sys",), convo("  and   tomorrow? "))
    assert await store.lookup(same, model="m", principal="a", now=now) is not None


async def test_expired_entries_are_not_served_and_are_purged(engine: AsyncEngine) -> None:
    store = PostgresPreparedStore(engine)
    q = convo("hours?")
    await store.add(entry(q, id="old", ttl=timedelta(seconds=-5)))
    key = prepared_key(("sys",), q)
    assert await store.lookup(key, model="m", principal="a", now=utcnow()) is None
    assert [e.id for e in await store.list()] == ["old"]
    assert await store.purge_expired(utcnow()) == 1
    assert await store.list() == []


async def test_adding_the_same_scope_again_replaces_it(engine: AsyncEngine) -> None:
    store = PostgresPreparedStore(engine)
    q = convo("hours?")
    await store.add(entry(q, id="one", principal="alice", response="v1"))
    await store.add(entry(q, id="two", principal="alice", response="v2"))
    await store.add(entry(q, id="three", response="public"))
    entries = await store.list(principal="alice")
    assert [(e.id, e.response) for e in entries] == [("two", "v2")]
    assert len(await store.list()) == 2


async def test_a_redelivered_admission_is_counted_once_with_the_postgres_journal(
    engine: AsyncEngine,
) -> None:
    from tollgate_core.bus import Delivered
    from tollgate_core.contracts import AdmissionV1, ChatRequestV1, ReplyTo

    local = LocalProvider(time_to_first_token_ms=0, tokens_per_second=10_000, output_tokens=3)
    request = ChatRequestV1(
        principal="alice", messages=convo("hi"), reply_to=ReplyTo(topic=topics.REPLIES, partition=0)
    )
    delivered = Delivered(
        event=AdmissionV1(request=request, reserved_input_tokens=1, reserved_output_tokens=3),
        topic=topics.ADMITTED,
        partition=0,
        offset=0,
        key="alice",
    )
    for _ in range(3):  # e.g. two restarts before the offset was committed
        publisher = InMemoryPublisher()
        handler = GenerationHandler(
            CatalogSource(
                local_catalog(
                    "tollgate-local", time_to_first_token_ms=0, tokens_per_second=1, output_tokens=1
                )
            ),
            {"local": local}.__getitem__,
            publisher,
            journal=PostgresJournal(engine),
        )
        await handler(delivered)
        if _ == 0:
            assert len(publisher.on(topics.USAGE)) == 1
        else:
            assert publisher.events == []


async def test_settling_gives_the_lease_back_and_release_after_it_is_free(
    engine: AsyncEngine,
) -> None:
    journal = PostgresJournal(engine)
    await journal.claim("r-done", "alice", owner="a", lease_s=30)
    await journal.settling("r-done", "{}")
    await journal.settled("r-done")
    # the lease went with the settled mark: another attempt is not held off, and sees it done
    assert await journal.claim("r-done", "alice", owner="b", lease_s=30) == Claim(
        "settled", 2, "{}"
    )
    await journal.release("r-done", "a")  # nothing left to give back; no error


async def test_the_settled_marks_of_requests_finishing_together_share_one_statement(
    engine: AsyncEngine,
) -> None:
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "state = 'settled'" in statement:
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    journal = PostgresJournal(engine, settled_batch_s=0.05)
    ids = [f"r-batch-{i}" for i in range(5)]
    for rid in ids:
        await journal.claim(rid, "alice", owner="a", lease_s=30)
        await journal.settling(rid, "{}")
    await asyncio.gather(*(journal.settled(rid) for rid in ids))
    # each caller returned only once its mark was written, lease given back with it
    assert len(statements) == 1
    for rid in ids:
        assert await journal.claim(rid, "alice", owner="b", lease_s=30) == Claim("settled", 2, "{}")
    await journal.settled(ids[0])  # a later mark is a batch of its own
    assert len(statements) == 2


async def test_claims_first_token_marks_and_settling_records_arriving_together_share_statements(
    engine: AsyncEngine,
) -> None:
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    journal = PostgresJournal(engine)
    ids = [f"r-group-{i}" for i in range(6)]
    claims = await asyncio.gather(*(journal.claim(r, "alice", owner="a") for r in ids))
    assert claims == [Claim(None)] * 6
    await asyncio.gather(*(journal.streaming(r) for r in ids[:4]))
    await asyncio.gather(*(journal.settling(r, f'{{"r":"{r}"}}') for r in ids[:2]))
    assert len(statements) == 3, statements
    again = await asyncio.gather(*(journal.claim(r, "alice", owner="a") for r in ids))
    assert again[:2] == [Claim("settling", 2, f'{{"r":"{r}"}}') for r in ids[:2]]
    assert again[2:] == [Claim("streaming", 2)] * 2 + [Claim("started", 2)] * 2
    assert len(statements) == 4


async def test_a_request_claimed_twice_in_one_batch_sees_its_first_claim(
    engine: AsyncEngine,
) -> None:
    journal = PostgresJournal(engine)
    first, second, third = await asyncio.gather(
        journal.claim("r-twice", "alice", owner="a"),
        journal.claim("r-twice", "alice", owner="b"),
        journal.claim("r-once", "alice", owner="b"),
    )
    # as one after the other: b finds a's live lease (held, not counted)
    assert (first, second, third) == (Claim(None), Claim("started", 1, held=True), Claim(None))


async def test_a_value_postgres_cannot_store_fails_its_own_claim_not_its_batch(
    engine: AsyncEngine,
) -> None:
    journal = PostgresJournal(engine)
    good, bad = await asyncio.gather(
        journal.claim("r-good", "alice", owner="a"),
        journal.claim("r-bad", "al\x00ice", owner="a"),
        return_exceptions=True,
    )
    assert good == Claim(None)
    assert isinstance(bad, RequestError), bad  # bad input, not an outage: not retried
    assert await journal.claim("r-good", "alice", owner="a") == Claim("started", 2)


async def test_a_failed_journal_batch_fails_every_request_in_it() -> None:
    nowhere = DatabaseSettings(database_url=SecretStr("postgresql://x@127.0.0.1:1/none"))
    engine = db.create_engine(nowhere, application_name="test")
    try:
        journal = PostgresJournal(engine)
        for batch in (
            [journal.claim("a", "alice"), journal.claim("b", "alice")],
            [journal.streaming("a"), journal.streaming("b")],
            [journal.settling("a", "{}"), journal.settling("b", "{}")],
        ):
            results = await asyncio.gather(*batch, return_exceptions=True)
            assert all(isinstance(r, DependencyUnavailable) for r in results), results
    finally:
        await engine.dispose()


async def test_a_failed_settled_batch_fails_every_request_in_it() -> None:
    nowhere = DatabaseSettings(database_url=SecretStr("postgresql://x@127.0.0.1:1/none"))
    engine = db.create_engine(nowhere, application_name="test")
    try:
        journal = PostgresJournal(engine, settled_batch_s=0.01)
        results = await asyncio.gather(
            journal.settled("a"), journal.settled("b"), return_exceptions=True
        )
        assert all(isinstance(r, DependencyUnavailable) for r in results), results
        # the next mark starts a new batch rather than waiting on the failed one
        with pytest.raises(DependencyUnavailable):
            await journal.settled("c")
    finally:
        await engine.dispose()


async def test_an_answer_added_through_another_router_is_served_after_the_key_refresh(
    engine: AsyncEngine,
) -> None:
    here = PostgresPreparedStore(engine, keys_ttl_s=0.2)
    elsewhere = PostgresPreparedStore(engine)
    q = convo("a question asked before its answer was prepared")
    key = prepared_key(("sys",), q)
    assert await here.lookup(key, model="m", principal="alice", now=utcnow()) is None
    await elsewhere.add(entry(q, id="later", response="prepared"))
    # at most keys_ttl_s later this router knows the key too
    await asyncio.sleep(0.3)
    hit = await here.lookup(key, model="m", principal="alice", now=utcnow())
    assert hit is not None and hit.response == "prepared"
    # removed here: not served here at once
    await here.remove("later")
    assert await here.lookup(key, model="m", principal="alice", now=utcnow()) is None


async def test_with_too_many_live_keys_every_lookup_asks_postgres(engine: AsyncEngine) -> None:
    store = PostgresPreparedStore(engine, max_cached_keys=1)
    other = PostgresPreparedStore(engine)
    first, second = convo("first question"), convo("second question")
    await other.add(entry(first, id="one"))
    await other.add(entry(second, id="two"))
    now = utcnow()
    assert await store.lookup(prepared_key(("sys",), first), model="m", principal="a", now=now)
    third = convo("third question")
    await other.add(entry(third, id="three"))  # not cached anywhere, found all the same
    hit = await store.lookup(prepared_key(("sys",), third), model="m", principal="a", now=now)
    assert hit is not None


async def test_with_every_connection_busy_a_caller_waits_then_gets_an_outage_not_a_new_connection(
    database_factory: DatabaseFactory,
) -> None:
    settings = (await database_factory()).model_copy(
        update={"database_pool_size": 1, "database_pool_timeout_s": 0.3}
    )
    await db.migrate(settings, MIGRATIONS)
    engine = db.create_engine(settings, application_name="test", pre_ping=False)
    journal = PostgresJournal(engine)
    try:
        async with engine.connect():  # the pool's only connection, held
            with pytest.raises(DependencyUnavailable, match="no free connection"):
                await journal.claim("r1", "alice")
            waiting = asyncio.create_task(journal.claim("r2", "alice"))
            await asyncio.sleep(0.05)
        assert await waiting == Claim(None)  # served as soon as the connection came back
        assert engine.pool.checkedout() == 0 and engine.pool.size() == 1
    finally:
        await engine.dispose()


def test_the_router_pool_is_20_unless_database_pool_size_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tollgate_router.settings import RouterSettings

    monkeypatch.delenv("DATABASE_POOL_SIZE", raising=False)
    assert RouterSettings().database.database_pool_size == 20
    monkeypatch.setenv("DATABASE_POOL_SIZE", "7")
    assert RouterSettings().database.database_pool_size == 7
