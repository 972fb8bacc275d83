"""The edge serves HTTPS and WSS when given a certificate and key."""

from __future__ import annotations

import json
import ssl

import httpx
import openai
import pytest
import websockets

from tests.appsync_client import chat_event, dev_token, header_subprotocol
from tests.edges import Edge
from tollgate_dev.stack import Stack

pytestmark = pytest.mark.e2e


async def test_https_publish_and_wss_subscription_stream_an_answer(
    tls_edge: Edge, stack: Stack
) -> None:
    token = await dev_token(stack.url("auth"), "tina")
    assert tls_edge.url.startswith("https://")
    assert tls_edge.certificate is not None
    context = tls_edge.certificate.ssl_context()
    host = tls_edge.url.split("://", 1)[1]
    async with websockets.connect(
        f"wss://{host}/event/realtime",
        subprotocols=[
            "aws-appsync-event-ws",
            header_subprotocol({"host": host, "Authorization": token}),
        ],  # type: ignore[list-item]
        ssl=context,
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(
            json.dumps({"type": "subscribe", "id": "s", "channel": "/Outbound-Messages/tina"})
        )
        assert json.loads(await ws.recv()) == {"type": "subscribe_success", "id": "s"}
        async with httpx.AsyncClient(verify=context, headers={"Authorization": token}) as client:
            response = await client.post(
                f"{tls_edge.url}/event",
                json={"channel": "/Inbound-Messages/tina", "events": [chat_event("over TLS")]},
            )
        assert response.status_code == 200 and response.json()["failed"] == []
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "data" and "metadata" in json.loads(message["event"]):
                break


async def test_openai_sdk_over_https(tls_edge: Edge, stack: Stack) -> None:
    token = await dev_token(stack.url("auth"), "tina")
    assert tls_edge.certificate is not None
    http_client = openai.DefaultAsyncHttpxClient(verify=tls_edge.certificate.ssl_context())
    async with openai.AsyncOpenAI(
        api_key=token, base_url=f"{tls_edge.url}/v1", http_client=http_client, max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model="tollgate-local", messages=[{"role": "user", "content": "secure hello"}]
        )
    assert completion.choices[0].message.content


async def test_plain_http_is_refused_on_the_tls_port(tls_edge: Edge) -> None:
    plain = tls_edge.url.replace("https://", "http://")
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(f"{plain}/healthz")
    untrusted = ssl.create_default_context()
    async with httpx.AsyncClient(verify=untrusted) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{tls_edge.url}/healthz")
