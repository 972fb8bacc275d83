"""ClientShards: small pools, each request on the least busy one."""

from __future__ import annotations

import asyncio

import httpx
import pytest

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


class _ClosesReusedConnections:
    """An HTTP server that answers the first request of each connection and closes the
    connection on the next one without a byte, as a server whose keep-alive ran out does to a
    connection reused at that moment (or, with ``always``, closes on every request)."""

    def __init__(self, *, always: bool = False) -> None:
        self.always = always
        self.requests = 0
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                await reader.readexactly(length)
                self.requests += 1
                if answered or self.always:
                    return  # closed under the client
                answered = True
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_pooled_connection_closed_by_the_server_is_replaced_not_failed() -> None:
    server = _ClosesReusedConnections()
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/v1/chat/completions"
    shards = ClientShards(connect_timeout_s=5, max_connections=1, shard_size=1)
    try:
        for _ in range(2):
            async with shards.stream("POST", url, json={"stream": True}) as response:
                assert await response.aread() == b"ok"
        # the second request went out on the pooled connection, met its close, and was sent
        # once more on a new one
        assert (server.requests, server.connections) == (3, 2)
        assert shards.in_flight == 0
    finally:
        await shards.aclose()
        listener.close()


async def test_a_server_that_closes_every_connection_still_fails_the_request() -> None:
    server = _ClosesReusedConnections(always=True)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/v1/chat/completions"
    shards = ClientShards(connect_timeout_s=5, max_connections=1, shard_size=1)
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            async with shards.stream("POST", url, json={"stream": True}):
                pass
        assert server.requests == 2  # sent once more, not forever
        assert shards.in_flight == 0
    finally:
        await shards.aclose()
        listener.close()
