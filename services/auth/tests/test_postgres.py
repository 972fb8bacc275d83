"""The ``auth`` schema against a real Postgres: migrations, key and policy stores, the CLI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.testclient import TestClient

from tollgate_auth import cli
from tollgate_auth.adapters.postgres import PostgresApiKeyStore, PostgresPolicyStore
from tollgate_auth.apikeys import ApiKeys, InMemoryApiKeyStore
from tollgate_auth.app import build, create_app
from tollgate_auth.domain import GroupPolicy
from tollgate_auth.errors import InvalidApiKey
from tollgate_auth.main import MIGRATIONS
from tollgate_auth.policy import InMemoryPolicyStore
from tollgate_auth.settings import AuthSettings
from tollgate_core import db
from tollgate_core.bus import InMemoryPublisher
from tollgate_core.contracts import utcnow
from tollgate_core.health import Health
from tollgate_core.settings import DatabaseSettings
from tollgate_dev.pytest_plugin import DatabaseFactory


@pytest.fixture
async def database(database_factory: DatabaseFactory) -> DatabaseSettings:
    settings = await database_factory()
    await db.migrate(settings, MIGRATIONS)
    await db.migrate(settings, MIGRATIONS)  # a second run is a no-op
    return settings


@pytest.fixture
async def engine(database: DatabaseSettings) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(database, application_name="test")
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_keys_are_stored_as_hashes_and_revocable(engine: AsyncEngine) -> None:
    keys = ApiKeys(PostgresApiKeyStore(engine))
    secret, record = await keys.create("alice", ("premium",), name="laptop")
    principal = await keys.verify(secret)
    assert (principal.sub, principal.groups, principal.credential) == (
        "alice",
        ("premium",),
        "api_key",
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT * FROM auth.api_keys"))).mappings().all()
    assert len(rows) == 1 and secret not in json.dumps([dict(r) for r in rows], default=str)
    assert [k.key_id for k in await keys.store.list("alice")] == [record.key_id]
    assert await keys.store.list("bob") == []
    assert await keys.store.revoke(record.key_id) is True
    assert await keys.store.revoke(record.key_id) is False
    with pytest.raises(InvalidApiKey, match="revoked"):
        await keys.verify(secret)


async def test_expired_keys_are_refused(engine: AsyncEngine) -> None:
    keys = ApiKeys(PostgresApiKeyStore(engine))
    secret, _ = await keys.create("alice", expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(InvalidApiKey, match="expired"):
        await keys.verify(secret)


async def test_policy_store_upserts_and_deletes(engine: AsyncEngine) -> None:
    store = PostgresPolicyStore(engine)
    await store.put("research", GroupPolicy(models=("m1",), tier="t", rank=2))
    await store.put("research", GroupPolicy(models=("m1", "m2"), tier="t2", rank=3))
    assert await store.all() == {"research": GroupPolicy(models=("m1", "m2"), tier="t2", rank=3)}
    assert await store.delete("research") is True
    assert await store.delete("research") is False


def test_cli_creates_lists_and_revokes(
    database: DatabaseSettings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run(*argv: str) -> tuple[int, dict[str, object]]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, json.loads(out or err)

    monkeypatch.setenv("DATABASE_URL", database.database_url.get_secret_value())
    code, created = run("create", "svc", "--groups", "premium,ops", "--expires-in", "3600")
    assert code == 0 and str(created["key"]).startswith("tg_")
    assert created["groups"] == ["premium", "ops"] and created["expires_at"]
    code, listed = run("list", "--principal", "svc")
    assert code == 0 and [k["id"] for k in listed["keys"]] == [created["id"]]  # type: ignore[union-attr]
    assert "key" not in listed["keys"][0]  # type: ignore[index]
    assert run("revoke", str(created["id"])) == (0, {"revoked": created["id"]})
    code, missing = run("revoke", str(created["id"]))
    assert code == 1 and missing["error"]["type"] == "not_found"  # type: ignore[index]


def test_the_dev_idp_is_off_by_default() -> None:
    settings = AuthSettings()
    assert settings.dev_idp is False
    components = build(
        settings,
        key_store=InMemoryApiKeyStore(),
        policy_store=InMemoryPolicyStore(),
        publisher=InMemoryPublisher(),
        http=httpx.AsyncClient(),
    )
    with TestClient(create_app(components, Health())) as client:
        assert client.post("/v1/dev/token", json={"sub": "x"}).status_code == 404
        assert client.get("/.well-known/jwks.json").status_code == 404
