"""The JWKS cache: one fetch per burst, refetch on an unknown kid at most every interval."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from tollgate_auth.tokens import JwksCache


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
