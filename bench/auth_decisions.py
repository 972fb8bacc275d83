"""How much an authorization decision costs, in-process on this machine (one core's worth):

- ``verify``: the auth service's decision for a dev-IdP RS256 token, called directly
  (signature check, policy, channel rule, audit record to an in-memory publisher);
- ``http``: the same through ``POST /v1/authorize`` over an ASGI transport (no sockets);
- ``edge-cached``: the edge's ``AuthServiceAuthorizer`` answering from its decision cache.

Run: ``.venv/bin/python bench/auth_decisions.py``; it prints medians of 5 rounds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx

from tollgate_auth.apikeys import InMemoryApiKeyStore
from tollgate_auth.app import build, create_app
from tollgate_auth.policy import InMemoryPolicyStore
from tollgate_auth.settings import AuthSettings
from tollgate_core.bus import InMemoryPublisher
from tollgate_core.health import Health
from tollgate_stream.appsync.channels import parse_channel
from tollgate_stream.identity import AuthServiceAuthorizer

ROUNDS = 5
CALLS = 500


async def per_second(call: Callable[[], Awaitable[object]]) -> float:
    rates = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(CALLS):
            await call()
        rates.append(CALLS / (time.perf_counter() - start))
    return statistics.median(rates)


async def main() -> None:
    publisher = InMemoryPublisher()
    components = build(
        AuthSettings(dev_idp=True),
        key_store=InMemoryApiKeyStore(),
        policy_store=InMemoryPolicyStore(),
        publisher=publisher,
        http=httpx.AsyncClient(),
    )
    assert components.dev_idp is not None
    token = components.dev_idp.issue("alice")["access_token"]
    headers = {"authorization": token}
    app = create_app(components, Health())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://auth")
    channel = parse_channel("/Inbound-Messages/alice", allow_wildcard=False)
    edge = AuthServiceAuthorizer(
        client, inbound_namespace="Inbound-Messages", outbound_namespace="Outbound-Messages"
    )

    async def verify() -> object:
        publisher.events.clear()
        return await components.authorizer.authorize(
            headers, operation="publish", channel=channel.path
        )

    async def http() -> object:
        publisher.events.clear()
        body = {"headers": headers, "operation": "publish", "channel": channel.path}
        return (await client.post("/v1/authorize", json=body)).raise_for_status()

    async def cached() -> object:
        return await edge.for_channel(channel, headers)

    results = {"verify": await per_second(verify), "http": await per_second(http)}
    results["edge-cached"] = await per_second(cached)
    for name, rate in results.items():
        print(f"{name:12s} {rate:10.0f} decisions/s  {1e6 / rate:8.1f} us each")
    print(f"cached/http ratio {results['edge-cached'] / results['http']:.0f}x")


if __name__ == "__main__":
    asyncio.run(main())
