"""API keys expire by default: a key created without an expiry is not valid for ever."""

from __future__ import annotations

from datetime import timedelta

from tollgate_auth.apikeys import DEFAULT_KEY_TTL_S, ApiKeys, InMemoryApiKeyStore
from tollgate_auth.settings import AuthSettings
from tollgate_core.contracts import utcnow


async def test_a_key_without_an_expiry_gets_the_default_lifetime() -> None:
    keys = ApiKeys(InMemoryApiKeyStore())
    _, record = await keys.create("alice")
    assert record.expires_at is not None
    lifetime = record.expires_at - utcnow()
    assert (
        timedelta(seconds=DEFAULT_KEY_TTL_S - 60) < lifetime <= timedelta(seconds=DEFAULT_KEY_TTL_S)
    )
    assert AuthSettings().api_key_default_ttl_s == DEFAULT_KEY_TTL_S


async def test_an_explicit_expiry_wins_and_no_default_means_never() -> None:
    soon = utcnow() + timedelta(hours=1)
    _, record = await ApiKeys(InMemoryApiKeyStore()).create("alice", expires_at=soon)
    assert record.expires_at == soon
    _, forever = await ApiKeys(InMemoryApiKeyStore(), default_ttl_s=None).create("alice")
    assert forever.expires_at is None
