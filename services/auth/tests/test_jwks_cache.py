"""The JWKS cache: one fetch per burst, refetch on an unknown kid at most every interval."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from tollgate_auth.tokens import JwksCache
from tollgate_core.errors import DependencyUnavailable


class CountingSource:
    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0

    async def fetch(self) -> Mapping[str, Any]:
        self.fetches += 1
        await asyncio.sleep(0.01)
        return self.jwks


async def test_a_burst_of_lookups_fetches_once_and_unknown_kids_are_rate_limited(
    forger: Any,
) -> None:
    source = CountingSource(forger.jwks())
    cache = JwksCache(source, ttl_s=3600, min_refresh_s=60)
    keys = await asyncio.gather(*(cache.key(forger.kid) for _ in range(20)))
    assert all(k is not None and k.key_id == forger.kid for k in keys)
    assert source.fetches == 1
    assert await cache.key("unknown") is None
    assert await cache.key("unknown") is None
    assert source.fetches == 1  # within min_refresh_s an unknown kid does not refetch


async def test_unusable_keys_are_skipped(forger: Any) -> None:
    good = forger.jwks()["keys"][0]
    source = CountingSource({"keys": [{"kid": "bad", "kty": "nope"}, "junk", good]})
    cache = JwksCache(source, ttl_s=3600, min_refresh_s=0)
    assert await cache.key(forger.kid) is not None
    assert await cache.key("bad") is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakySource:
    """Serves ``jwks`` until told to fail (an outage) or to serve an empty set."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.mode = "ok"
        self.fetches = 0

    async def fetch(self) -> Mapping[str, Any]:
        self.fetches += 1
        if self.mode == "down":
            raise DependencyUnavailable("JWKS unreachable")
        if self.mode == "empty":
            return {"keys": []}
        return self.jwks


async def test_an_outage_after_the_ttl_serves_the_stale_keys_with_bounded_backoff(
    forger: Any,
) -> None:
    clock, source = Clock(), FlakySource(forger.jwks())
    cache = JwksCache(source, ttl_s=60, min_refresh_s=10, max_backoff_s=120, clock=clock)
    assert await cache.key(forger.kid) is not None
    source.mode = "down"
    clock.now += 61  # past the TTL, the IdP is down
    for _ in range(50):
        assert await cache.key(forger.kid) is not None  # stale keys still verify
        await asyncio.sleep(0)
    await cache.settled()
    assert source.fetches == 2  # one attempt, not one per verification
    clock.now += 5
    assert await cache.key(forger.kid) is not None
    await cache.settled()
    assert source.fetches == 2  # still backing off
    for _ in range(20):  # the wait between attempts grows, but never past max_backoff_s
        clock.now += 121
        assert await cache.key(forger.kid) is not None
        await cache.settled()
    assert source.fetches == 22
    source.mode = "ok"
    clock.now += 121
    assert await cache.key(forger.kid) is not None
    await cache.settled()
    clock.now += 30  # fresh again: no refetch within the TTL
    assert await cache.key(forger.kid) is not None
    await cache.settled()
    assert source.fetches == 23


async def test_an_empty_key_set_never_replaces_the_cache(forger: Any) -> None:
    clock, source = Clock(), FlakySource(forger.jwks())
    cache = JwksCache(source, ttl_s=60, min_refresh_s=10, clock=clock)
    assert await cache.key(forger.kid) is not None
    source.mode = "empty"
    clock.now += 61
    assert await cache.key(forger.kid) is not None
    await cache.settled()
    clock.now += 1000
    assert await cache.key(forger.kid) is not None
    await cache.settled()
    assert await cache.key("rotated") is None  # unknown kid: refetched, still empty: unknown


async def test_no_keys_at_all_is_unavailable_without_a_fetch_per_verification(
    forger: Any,
) -> None:
    clock, source = Clock(), FlakySource(forger.jwks())
    source.mode = "down"
    cache = JwksCache(source, ttl_s=60, min_refresh_s=10, clock=clock)
    for _ in range(10):
        with pytest.raises(DependencyUnavailable):
            await cache.key(forger.kid)
    assert source.fetches == 1
    source.mode = "ok"
    clock.now += 10
    assert await cache.key(forger.kid) is not None


async def test_stale_keys_are_not_served_for_ever(forger: Any) -> None:
    clock, source = Clock(), FlakySource(forger.jwks())
    cache = JwksCache(source, ttl_s=60, min_refresh_s=10, max_stale_s=600, clock=clock)
    assert await cache.key(forger.kid) is not None
    source.mode = "down"
    clock.now += 60 + 601
    with pytest.raises(DependencyUnavailable):
        await cache.key(forger.kid)
