"""ClientShards: small pools, each request on the least busy one."""

from __future__ import annotations

import asyncio

from tollgate_router.providers._http import ClientShards
from tollgate_router.testing import FakeProviderServer, Scenario


async def test_a_request_goes_to_a_shard_with_room_not_behind_a_busy_one(
    fake_server: FakeProviderServer,
) -> None:
    # two shards of one connection: a long stream holds the first
    fake_server.script = [Scenario(chunks=("a",) * 20, gap_s=0.1), Scenario()]
    shards = ClientShards(connect_timeout_s=5, max_connections=2, shard_size=1)
    url = fake_server.url + "/v1/chat/completions"
    body = {"model": "m", "messages": [], "stream": True}
    long_started = asyncio.Event()

    async def long_stream() -> None:
        async with shards.stream("POST", url, json=body) as response:
            long_started.set()
            await response.aread()

    try:
        long = asyncio.create_task(long_stream())
        await long_started.wait()
        assert shards.in_flight == 1
        for _ in range(3):  # round robin would put every other one behind the long stream
            async with asyncio.timeout(1.5):
                async with shards.stream("POST", url, json=body) as response:
                    await response.aread()
            assert not long.done()
        await long
        assert shards.in_flight == 0
    finally:
        await shards.aclose()
