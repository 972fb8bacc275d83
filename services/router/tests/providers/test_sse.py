from __future__ import annotations

import httpx
import pytest

from tollgate_router.providers._http import SSEEvent, iter_sse


async def parse(chunks: list[bytes]) -> list[SSEEvent]:
    async def stream(request: httpx.Request) -> httpx.Response:
        async def body():  # type: ignore[no-untyped-def]
            for c in chunks:
                yield c

        return httpx.Response(200, content=body())

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(stream)) as client,
        client.stream("GET", "http://sse.test/") as response,
    ):
        return [e async for e in iter_sse(response)]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"event: a\ndata: 1\n\n: comment\ndata: 2\ndata: 3\n\n"],
        [b"event: a\r\ndata: 1\r\n\r\n", b"data: 2\r\ndata: 3\r", b"\n\r\n"],
        [b"ev", b"ent: a\nda", b"ta: 1\n", b"\n", b"data: 2\ndata: 3"],
    ],
)
async def test_events_survive_any_split_and_line_ending(chunks: list[bytes]) -> None:
    assert await parse(chunks) == [SSEEvent("a", "1"), SSEEvent("message", "2\n3")]
